"""RevNet-38/110/164 for CIFAR-size and MNIST-size inputs (Gomez et al. 2017, Sec. 5.1, Table 1).

Architecture as in the authors' code (renmengye/revnet-public, resnet/models/revnet_model.py and
resnet/configs/cifar_configs.py), pre-activation residual functions:

* stem: conv3x3 (filters[0]) - BN - ReLU;
* three stages with strides 1, 2, 2. The first unit of each stage is a *transition*: a coupling
  y1 = down(x1) + F(x2), y2 = down(x2) + G(y1) whose F has the stage's stride and widens the
  channels, with down() an average pool plus zero channel padding (basic) or a strided 1x1
  projection (bottleneck). It is not invertible, so it is an ordinary layer whose activations are
  stored. The remaining `units - 1` units of the stage are reversible coupling blocks
  (`fastnets.nn.ReversibleStack`): their activations are rebuilt in the backward pass;
* final BN - ReLU - global average pool - dense.

F and G are BN-ReLU-conv3x3-BN-ReLU-conv3x3 (basic) or BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-
conv1x1 with a 4x expansion (bottleneck); the stem's BN-ReLU replaces the first BN-ReLU of the
first transition. Each coupling unit has F and G, hence 4 (basic) or 6 (bottleneck) convs:
RevNet-38 = 9 units x 4 + 2, RevNet-110 = 27 x 4 + 2, RevNet-164 = 27 x 6 + 2.

| model      | block      | units per stage | filters (stem, s1, s2, s3) | ResNet baseline |
| RevNet-38  | basic      | 3-3-3           | 32, 32, 64, 112            | ResNet-32       |
| RevNet-110 | basic      | 9-9-9           | 32, 32, 64, 128            | ResNet-110      |
| RevNet-164 | bottleneck | 9-9-9           | 32, 32, 64, 128 (x4 out)   | ResNet-164      |

Convolutions use Flax's default initialiser, as `fastnets.models.resnet.ResNet` does, so that the
RevNet-vs-ResNet comparison differs only in the architecture (the authors' code used He-normal
for both).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.models.resnet import ResNet
from fastnets.nn.reversible import ReversibleStack
from fastnets.ops.reversible import BACKPROP_MODES, split_channels

REVNET_CONFIGS: dict[str, dict[str, Any]] = {
    "revnet38": dict(units=(3, 3, 3), filters=(32, 32, 64, 112), bottleneck=False),
    "revnet110": dict(units=(9, 9, 9), filters=(32, 32, 64, 128), bottleneck=False),
    "revnet164": dict(units=(9, 9, 9), filters=(32, 32, 64, 128), bottleneck=True),
}

# RevNet name -> the ResNet it is compared with in the paper (Table 2/3): depth and bottleneck.
RESNET_BASELINES: dict[str, dict[str, Any]] = {
    "revnet38": dict(depth=32, bottleneck=False),
    "revnet110": dict(depth=110, bottleneck=False),
    "revnet164": dict(depth=164, bottleneck=True),
}


def _norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class RevResidualFn(nn.Module):
  """F or G of a RevNet unit: pre-activation residual function on one channel half.

  Basic: [BN-ReLU]-conv3x3(stride)-BN-ReLU-conv3x3. Bottleneck: [BN-ReLU]-conv1x1(features/4,
  stride)-BN-ReLU-conv3x3(features/4)-BN-ReLU-conv1x1(features), as in the authors'
  `_residual_inner` / `_bottleneck_residual_inner` (version "v2").

  Attributes:
    features: output channels.
    bottleneck: bottleneck (3 convs) instead of basic (2 convs).
    strides: stride of the first conv (1 inside reversible blocks).
    preactivate: start with BN-ReLU (False only right after the stem's BN-ReLU).
  """
  features: int
  bottleneck: bool = False
  strides: int = 1
  preactivate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, height, width, channels) -> (batch, height/strides, width/strides, features)."""
    s = (self.strides, self.strides)
    if self.preactivate:
      x = nn.relu(_norm(train, "bn1")(x))
    if not self.bottleneck:
      x = nn.Conv(self.features, (3, 3), s, padding="SAME", use_bias=False, name="conv1")(x)
      x = nn.relu(_norm(train, "bn2")(x))
      return nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv2")(x)
    if self.features % 4:
      raise ValueError(f"features must be a multiple of 4 for a bottleneck, got {self.features}.")
    mid = self.features // 4
    x = nn.Conv(mid, (1, 1), s, use_bias=False, name="conv1")(x)
    x = nn.relu(_norm(train, "bn2")(x))
    x = nn.Conv(mid, (3, 3), padding="SAME", use_bias=False, name="conv2")(x)
    x = nn.relu(_norm(train, "bn3")(x))
    return nn.Conv(self.features, (1, 1), use_bias=False, name="conv3")(x)


class RevTransition(nn.Module):
  """First unit of a RevNet stage: a non-reversible coupling that downsamples and/or widens.

  y1 = down(x1) + F(x2), y2 = down(x2) + G(y1), F strided (authors' `_residual` with
  `_possible_downsample`). Ordinary autodiff: its activations are stored.

  Attributes:
    features: output channels (both halves together); even, >= input channels.
    strides: spatial stride (1 or 2).
    bottleneck: bottleneck F/G and 1x1 projection shortcuts.
    preactivate: whether F starts with BN-ReLU (False for the first unit after the stem).
  """
  features: int
  strides: int = 1
  bottleneck: bool = False
  preactivate: bool = True

  def _down(self, x: jax.Array, name: str) -> jax.Array:
    out = self.features // 2
    if self.bottleneck:
      if self.strides != 1 or x.shape[-1] != out:
        x = nn.Conv(out, (1, 1), (self.strides, self.strides), use_bias=False, name=name)(x)
      return x
    if self.strides != 1:
      x = nn.avg_pool(x, (self.strides, self.strides), (self.strides, self.strides),
                      padding="SAME", count_include_pad=False)
    pad = out - x.shape[-1]
    if pad:
      x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad // 2, pad - pad // 2)])
    return x

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, h, w, c_in), c_in even -> (batch, h/strides, w/strides, features)."""
    if self.features % 2 or self.features < x.shape[-1]:
      raise ValueError(f"features must be even and >= the input channels {x.shape[-1]}, got "
                       f"{self.features}.")
    x1, x2 = split_channels(x)
    half = self.features // 2
    y1 = self._down(x1, "x1_proj") + RevResidualFn(
        half, self.bottleneck, self.strides, self.preactivate, name="f")(x2, train)
    y2 = self._down(x2, "x2_proj") + RevResidualFn(half, self.bottleneck, name="g")(y1, train)
    return jnp.concatenate([y1, y2], axis=-1)


class RevNet(nn.Module):
  """Reversible residual network for CIFAR/MNIST-size NHWC inputs (Gomez et al. 2017).

  Attributes:
    num_classes: number of logits.
    units: coupling units per stage (the first of each is a non-reversible transition).
    filters: channels of the stem and of the three stages (before the 4x bottleneck expansion).
    bottleneck: bottleneck residual functions (RevNet-164).
    strides: stride of each stage's transition.
    backprop: backward pass of the reversible stacks: "reversible" (rebuild activations, the
      point of RevNet), "store" (plain autodiff of the same network, the reference) or
      "checkpoint".
    unroll: `lax.scan` unroll of each reversible stack (True: no loop; much faster on XLA:CPU,
      whose convolution gradients inside loops are slow; compile time grows with depth and
      the memory saving is lost: see `fastnets.ops.reversible_sequence`).
  """
  num_classes: int = 10
  units: Sequence[int] = (3, 3, 3)
  filters: Sequence[int] = (32, 32, 64, 112)
  bottleneck: bool = False
  strides: Sequence[int] = (1, 2, 2)
  backprop: str = "reversible"
  unroll: int | bool = 1

  @property
  def depth(self) -> int:
    """Convolution + dense layers: 2 + units x (4 basic or 6 bottleneck)."""
    return 2 + sum(self.units) * (6 if self.bottleneck else 4)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, height, width, channels) float. Returns: (batch, num_classes) float32."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    if len(self.filters) != len(self.units) + 1 or len(self.strides) != len(self.units):
      raise ValueError(f"filters must be (stem, one per stage) and strides one per stage; got "
                       f"units={self.units}, filters={self.filters}, strides={self.strides}.")
    if any(u < 1 for u in self.units):
      raise ValueError(f"units must be >= 1 per stage, got {self.units}.")
    if self.backprop not in BACKPROP_MODES:
      raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {self.backprop!r}.")
    expand = 4 if self.bottleneck else 1
    widths = [self.filters[0]] + [f * expand for f in self.filters[1:]]
    if any(w % 2 for w in widths):
      raise ValueError(f"every width must be even to split into halves, got {widths}.")
    x = nn.Conv(widths[0], (3, 3), padding="SAME", use_bias=False, name="stem")(x)
    x = nn.relu(_norm(train, "stem_bn")(x))
    for s, (units, stride) in enumerate(zip(self.units, self.strides)):
      width = widths[s + 1]
      x = RevTransition(width, stride, self.bottleneck, preactivate=s > 0,
                        name=f"stage{s + 1}_transition")(x, train)
      if units > 1:
        x = ReversibleStack(RevResidualFn(width // 2, self.bottleneck), num_blocks=units - 1,
                            backprop=self.backprop, unroll=self.unroll,
                            name=f"stage{s + 1}_reversible")(x, train)
    x = nn.relu(_norm(train, "final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def revnet(num_classes: int = 10, depth: int = 38, **overrides: Any) -> RevNet:
  """RevNet of the paper's depth 38, 110 or 164 (registry-style factory: `revnet(10, depth=110)`).

  Raises:
    ValueError: a depth other than 38, 110, 164 (use `RevNet(units=..., ...)` for others).
  """
  name = f"revnet{depth}"
  if name not in REVNET_CONFIGS:
    raise ValueError(f"depth must be one of 38, 110, 164 (the paper's RevNets), got {depth}; "
                     "build other sizes with RevNet(units=..., filters=..., bottleneck=...).")
  return RevNet(num_classes=num_classes, **{**REVNET_CONFIGS[name], **overrides})


def revnet38(num_classes: int = 10, **overrides: Any) -> RevNet:
  """RevNet-38: basic units 3-3-3, filters 32-32-64-112 (compare with ResNet-32)."""
  return revnet(num_classes, 38, **overrides)


def revnet110(num_classes: int = 10, **overrides: Any) -> RevNet:
  """RevNet-110: basic units 9-9-9, filters 32-32-64-128 (compare with ResNet-110)."""
  return revnet(num_classes, 110, **overrides)


def revnet164(num_classes: int = 10, **overrides: Any) -> RevNet:
  """RevNet-164: bottleneck units 9-9-9, filters 32-32-64-128 x4 (compare with ResNet-164)."""
  return revnet(num_classes, 164, **overrides)


def matching_resnet(name: str, num_classes: int = 10, **overrides: Any) -> ResNet:
  """The ResNet the paper compares a RevNet with: "revnet38" -> ResNet-32, 110 -> 110, 164 -> 164.

  Widths (16, 16, 32, 64) as in the authors' ResNet configs.
  """
  if name not in RESNET_BASELINES:
    raise ValueError(f"name must be one of {sorted(RESNET_BASELINES)}, got {name!r}.")
  return ResNet(num_classes=num_classes,
                **{"widths": (16, 16, 32, 64), **RESNET_BASELINES[name], **overrides})
