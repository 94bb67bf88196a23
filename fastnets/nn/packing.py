"""`Packed`: PacGAN packing as a one-line wrapper over any Flax discriminator.

PacGAN (Lin, Khetan, Fanti, Oh, NeurIPS 2018), Section 3: the discriminator D_m judges m samples
jointly, D_m(x_1, ..., x_m), with the samples concatenated on the feature axis; m = 1 is the
ordinary GAN. The wrapped discriminator must accept inputs whose last axis is m times the
sample's (for an MLP: input width 2m; for a conv net: 3m input channels), which Flax layers do by
shape inference.

    d = Packed(MaxoutDiscriminator(), degree=2)
    logits_real = d.apply(v, real_batch)           # (B,) batch -> B/2 packs of consecutive samples
    logits_fake = d.apply(v, [g(z1), g(z2)])       # m generator batches -> packs across batches
"""

from typing import Any, Sequence, Union

import flax.linen as nn
import jax

from fastnets.ops import packing as packing_ops


class Packed(nn.Module):
  """A discriminator of packs of `degree` samples (PacGAN, Lin et al. 2018, Section 3).

  Calling it with one batch (B, ..., C) groups the batch into B // m packs of m consecutive
  samples (`fastnets.ops.pack`); calling it with a list of m batches (n, ..., C) packs across the
  batches (`fastnets.ops.concat_packs`, the paper's fake pack of m independent generator batches).
  Either way the wrapped discriminator sees (packs, ..., m * C) and returns one output per pack.

  Attributes:
    discriminator: any Flax module taking (packs, ..., m * C) inputs (its parameters live under
      the name "discriminator").
    degree: the pack degree m >= 1 (1: no packing, the plain GAN).
    drop_remainder: when a single batch of size B is not divisible by m, drop the last B % m
      samples instead of raising ValueError (off by default: a silent drop can bias small
      batches, so the caller must ask for it).
  """
  discriminator: nn.Module
  degree: int = 2
  drop_remainder: bool = False

  def pack_inputs(self, x: Union[jax.Array, Sequence[jax.Array]]) -> jax.Array:
    """The packed input the discriminator sees: `pack(x, m)` or `concat_packs(x)` (see class)."""
    m = packing_ops.check_degree(self.degree)
    if isinstance(x, (list, tuple)):
      if len(x) != m:
        raise ValueError(f"a list input must hold exactly degree={m} batches (one per pack "
                         f"slot), got {len(x)}.")
      return packing_ops.concat_packs(x)
    return packing_ops.pack(x, m, drop_remainder=self.drop_remainder)

  def __call__(self, x: Union[jax.Array, Sequence[jax.Array]], *args: Any, **kwargs: Any):
    """Packs `x` and applies the discriminator.

    Args:
      x: one batch (B, ..., C) with B divisible by m (or `drop_remainder`), or a list/tuple of m
        batches of identical shape (n, ..., C).
      *args, **kwargs: passed to the wrapped discriminator (e.g. `train=True`).

    Returns:
      The discriminator's output on (B // m or n, ..., m * C) packs.

    Raises:
      ValueError: indivisible batch, wrong number of batches, mismatched batch shapes.
    """
    return self.discriminator(self.pack_inputs(x), *args, **kwargs)

  def judge(self, packs: jax.Array, *args: Any, **kwargs: Any):
    """The discriminator on inputs that are already packed, (n, ..., m * C) (no checks beyond
    the discriminator's own); e.g. real and fake packs concatenated into one pass."""
    return self.discriminator(packs, *args, **kwargs)


def packed(discriminator: nn.Module, degree: int, drop_remainder: bool = False) -> Packed:
  """`Packed(discriminator, degree, drop_remainder)` after validating `degree` (one-line change)."""
  return Packed(discriminator=discriminator, degree=packing_ops.check_degree(degree),
                drop_remainder=drop_remainder)
