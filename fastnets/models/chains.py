"""ResNet and RevNet stacks written as chains of blocks, the form the memory planner splits.

`resnet_chain(depth, width)`: a strided conv stem, `depth` CIFAR basic blocks (He et al. 2016,
`fastnets.models.resnet.BasicBlock`) at one width, and a pooled linear head, as a
`fastnets.nn.Chain`, so that `fastnets.nn.plan_memory` can give every block its own
recomputation strategy. `revnet_chain(depth, width)`: the same stem and head around one
`fastnets.nn.ReversibleStack` of `depth` additive coupling blocks (Gomez et al. 2017, Eq. (3))
whose F and G are RevNet's pre-activation residual functions (`RevResidualFn`) on half the
channels: the reversible extreme of the same network.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.models.resnet import BasicBlock
from fastnets.models.revnet import RevResidualFn
from fastnets.nn.memory_planning import Chain
from fastnets.nn.reversible import ReversibleStack


class ChainStem(nn.Module):
  """conv3x3 (stride `strides`, `features` channels, no bias) - BN - ReLU."""
  features: int
  strides: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (N, H, W, C) float -> (N, H/strides, W/strides, features)."""
    s = (self.strides, self.strides)
    x = nn.Conv(self.features, (3, 3), s, padding="SAME", use_bias=False, name="conv")(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))


class ChainHead(nn.Module):
  """Global average pool and a linear classifier: (N, H, W, C) -> (N, num_classes) float32."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


def _check(depth: int, width: int, even: bool = False) -> None:
  if not (isinstance(depth, int) and depth >= 1):
    raise ValueError(f"depth must be a positive int (number of blocks), got {depth!r}.")
  if not (isinstance(width, int) and width >= 1) or (even and width % 2):
    raise ValueError(f"width must be a positive{' even' if even else ''} int, got {width!r}.")


def resnet_chain(depth: int, width: int = 16, num_classes: int = 10, stem_strides: int = 2
                 ) -> Chain:
  """Stem, `depth` basic residual blocks of `width` channels, head: depth + 2 chain blocks."""
  _check(depth, width)
  blocks = [ChainStem(width, stem_strides)] + [BasicBlock(width) for _ in range(depth)]
  return Chain(blocks + [ChainHead(num_classes)])


def revnet_chain(depth: int, width: int = 16, num_classes: int = 10, stem_strides: int = 2,
                 backprop: str = "reversible") -> Chain:
  """Stem, one `ReversibleStack` of `depth` coupling blocks (F, G: `RevResidualFn(width / 2)`),
  head. `backprop`: "reversible" (RevNet Algorithm 1) or "store" (plain autodiff, the
  reference)."""
  _check(depth, width, even=True)
  stack = ReversibleStack(f=RevResidualFn(width // 2), num_blocks=depth, backprop=backprop)
  return Chain([ChainStem(width, stem_strides), stack, ChainHead(num_classes)])
