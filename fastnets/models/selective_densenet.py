"""A small DenseNet-BC whose bottleneck 1x1 convs can be selective convolutional units
(Jeong & Shin, ICML 2019), the paper's main host architecture."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn.selective import SelectiveConv

__all__ = ["SelectiveDenseNet"]


class _BNReLUConv(nn.Module):
  features: int
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
    k = self.kernel_size
    return nn.Conv(self.features, (k, k), padding="SAME", use_bias=False, name="conv")(y)


class SelectiveDenseNet(nn.Module):
  """Stem conv, dense blocks of (bottleneck 1x1, BN-ReLU-conv3x3 with `growth` outputs, concat)
  separated by 2x2 average-pool transitions, global average pool, classifier.

  Attributes:
    num_classes: logits.
    layers: dense layers per block.
    growth: channels each dense layer adds.
    bottleneck: output channels of the 1x1 bottleneck (4 x growth in DenseNet-BC).
    stem: the stem conv's channels.
    stem_stride: the stem conv's stride (2 halves the resolution every block works at).
    selective: bottlenecks are `SelectiveConv` units (named `block{b}_layer{l}_unit`) instead
      of BN-ReLU-conv.
  """
  num_classes: int = 10
  layers: Sequence[int] = (3, 3)
  growth: int = 8
  bottleneck: int = 32
  stem: int = 16
  stem_stride: int = 1
  selective: bool = True

  def unit_names(self) -> list[str]:
    """Module names of the bottleneck units, in order."""
    return [f"block{b}_layer{i}_unit" for b, n in enumerate(self.layers) for i in range(n)]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (N, H, W, C) float. Returns (N, num_classes) float32 logits."""
    x = nn.Conv(self.stem, (3, 3), strides=self.stem_stride, padding="SAME", use_bias=False,
                name="stem")(x)
    for b, n in enumerate(self.layers):
      if b:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      for i in range(n):
        unit = SelectiveConv if self.selective else _BNReLUConv
        y = unit(self.bottleneck, name=f"block{b}_layer{i}_unit")(x, train)
        y = _BNReLUConv(self.growth, 3, name=f"block{b}_layer{i}_conv")(y, train)
        x = jnp.concatenate([x, y], axis=-1)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="final_bn")(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)
