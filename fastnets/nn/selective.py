"""Selective convolutional unit (Jeong & Shin, ICML 2019): BN, ReLU, channel selection with
learned spatial shifts, then a convolution.

`SelectiveConv` computes conv(shift(gather(ReLU(BN(x)), index) * mask, shifts)): slot s of the
conv's input reads channel index[s] of the activation (masked by mask[s]) moved by its learned
sub-pixel offset shifts[s] (`fastnets.ops.bilinear_shift`). Index and mask live in the
"selection" collection (not trained); shifts are parameters. Initially every slot reads its own
channel with zero shift, so the unit equals BN-ReLU-conv. `fastnets.ops.expected_channel_damage`
scores the slots and `fastnets.ops.reallocate` moves the least useful ones onto copies of the
most useful; `selection_scores` reads the scores from a unit's variables.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.ops.selective_conv import bilinear_shift, expected_channel_damage

__all__ = ["SELECTION_COLLECTION", "SelectiveConv", "selection_scores"]

SELECTION_COLLECTION = "selection"


class SelectiveConv(nn.Module):
  """BN-ReLU-(channel selection + shifts)-Conv (Jeong & Shin 2019, Sec. 3).

  Attributes:
    features: output channels of the conv.
    kernel_size: the conv's (square) kernel size (1 in a DenseNet bottleneck).
  """
  features: int
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (N, H, W, C) float. Returns (N, H, W, features)."""
    c = x.shape[-1]
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
    index = self.variable(SELECTION_COLLECTION, "index", lambda: jnp.arange(c, dtype=jnp.int32))
    mask = self.variable(SELECTION_COLLECTION, "mask", lambda: jnp.ones((c,), jnp.float32))
    shifts = self.param("shifts", nn.initializers.zeros, (c, 2), jnp.float32)
    y = jnp.take(y, index.value, axis=-1) * mask.value.astype(y.dtype)
    y = bilinear_shift(y, shifts.astype(y.dtype))
    k = self.kernel_size
    return nn.Conv(self.features, (k, k), padding="SAME", use_bias=False, name="conv")(y)


def selection_scores(params: Mapping, selection: Mapping) -> jax.Array:
  """ECDS of every slot of one SelectiveConv (its params and "selection" variables): the score
  of the channel the slot reads, through the slot's own conv weights."""
  bn, kernel = params["bn"], params["conv"]["kernel"]
  idx = selection["index"]
  return expected_channel_damage(bn["scale"][idx], bn["bias"][idx], kernel) * selection["mask"]
