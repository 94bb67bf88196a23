"""CIFAR-style residual networks (He et al. 2016, "Deep Residual Learning", Sec. 4.2).

Depth 6n+2 with basic blocks (ResNet-20/32/56/110) or 9n+2 with bottleneck blocks (ResNet-164,
He et al. 2016b "Identity Mappings"); three stages with strides 1, 2, 2; batch norm. The blocks are
public so that RevNet, dynamic downsampling and FFNet can reuse them.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]


def _norm(batch_norm: bool, train: bool) -> Callable[[str], Callable[[jax.Array], jax.Array]]:
  """name -> batch norm (momentum 0.9), or the identity when `batch_norm` is False."""
  if not batch_norm:
    return lambda name: (lambda x: x)
  return lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (He et al. 2016, Fig. 2 left).

  The shortcut is a 1x1 strided conv + BN when shape changes (option B). `batch_norm=False`
  drops every BN and gives the convolutions biases instead (the unnormalised network of Bjorck et
  al. 2018).
  """
  features: int
  strides: int = 1
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = _norm(self.batch_norm, train)
    bias = not self.batch_norm
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding="SAME",
                use_bias=bias, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=bias, name="conv2")(y)
    y = norm("bn2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=bias,
                  name="proj")(x)
      x = norm("proj_bn")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1x1 (features) - 3x3 (features) - 1x1 (4 * features) bottleneck with shortcut."""
  features: int
  strides: int = 1
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    out = self.features * self.expansion
    y = nn.relu(norm("bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding="SAME",
                use_bias=False, name="conv2")(y)
    y = nn.relu(norm("bn2")(y))
    y = norm("bn3")(nn.Conv(out, (1, 1), use_bias=False, name="conv3")(y))
    if x.shape[-1] != out or self.strides != 1:
      x = norm("proj_bn")(nn.Conv(out, (1, 1), (self.strides, self.strides), use_bias=False,
                                  name="proj")(x))
    return nn.relu(x + y)


def resnet_stage_sizes(depth: int, bottleneck: bool) -> int:
  """Blocks per stage for a CIFAR ResNet of `depth` layers: (depth-2)/6 basic or /9 bottleneck."""
  per_block = 9 if bottleneck else 6
  if depth < per_block + 2 or (depth - 2) % per_block:
    raise ValueError(
        f"depth must be {per_block}n+2 for {'bottleneck' if bottleneck else 'basic'} blocks "
        f"(e.g. {'164' if bottleneck else '20, 32, 56, 110'}), got {depth}.")
  return (depth - 2) // per_block


class ResNet(nn.Module):
  """CIFAR-style ResNet: conv3x3 stem, three stages (strides 1, 2, 2), global pool, linear.

  Attributes:
    num_classes: number of logits.
    depth: 6n+2 (basic) or 9n+2 (bottleneck).
    widths: channels of the stem and of the three stages (16, 16, 32, 64 in He et al.).
    bottleneck: use bottleneck blocks (ResNet-164).
    batch_norm: False removes every batch norm (basic blocks only; Bjorck et al. 2018).
  """
  num_classes: int = 10
  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)
  bottleneck: bool = False
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, height, width, channels). Returns: (batch, num_classes) float32 logits."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    if len(self.widths) != 4:
      raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {self.widths}.")
    blocks = resnet_stage_sizes(self.depth, self.bottleneck)
    if self.bottleneck and not self.batch_norm:
      raise ValueError("batch_norm=False is implemented for basic blocks only (bottleneck=False).")
    extra = {} if self.batch_norm else {"batch_norm": False}
    block_cls = BottleneckBlock if self.bottleneck else BasicBlock
    x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=not self.batch_norm,
                name="stem")(x)
    x = nn.relu(_norm(self.batch_norm, train)("stem_bn")(x))
    for stage, features in enumerate(self.widths[1:]):
      for i in range(blocks):
        strides = 2 if (stage > 0 and i == 0) else 1
        x = block_cls(features, strides, name=f"stage{stage + 1}_block{i + 1}", **extra)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
