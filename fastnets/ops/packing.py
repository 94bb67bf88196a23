"""Packing for GAN discriminators (PacGAN, Lin, Khetan, Fanti, Oh, NeurIPS 2018, Section 3).

A packed discriminator of degree m judges m samples at once: m samples, all real or all generated,
are concatenated on the feature axis (the last axis; the channels of an NHWC image) and the
discriminator sees one input of m times as many features. These are the pure array helpers; the
Flax wrapper is `fastnets.nn.Packed`.

Two ways to form packs, both exact and checked:
  * `pack(x, m)` groups a batch: pack i holds the m *consecutive* samples x[i*m], ..., x[i*m+m-1]
    (a real batch of independent samples, so each pack is m independent draws);
  * `concat_packs([x_1, ..., x_m])` joins m independent batches (the paper's fake pack: m generator
    batches from m independent noise batches): pack i holds x_1[i], ..., x_m[i].
In both, the features of the first sample come first: packed[..., :C] is the first sample.
"""

import operator
from typing import Sequence

import jax
import jax.numpy as jnp


def check_degree(degree) -> int:
  """Returns `degree` as an int after checking it is a positive integer.

  Raises:
    TypeError: `degree` is not an integer (bools are rejected too).
    ValueError: `degree` < 1.
  """
  if isinstance(degree, bool):
    raise TypeError(f"degree (the pack degree m) must be a positive int, got bool {degree!r}.")
  try:
    degree = operator.index(degree)  # int and numpy integers; floats are rejected.
  except TypeError:
    raise TypeError(f"degree (the pack degree m) must be a positive int, got "
                    f"{type(degree).__name__} {degree!r}.") from None
  if degree < 1:
    raise ValueError(f"degree (the pack degree m) must be a positive int >= 1, got {degree}.")
  return degree


def num_packs(batch_size: int, degree: int, drop_remainder: bool = False) -> int:
  """How many packs of `degree` samples a batch of `batch_size` samples makes.

  Args:
    batch_size: number of samples (>= 0).
    degree: pack degree m >= 1.
    drop_remainder: if True, the last `batch_size % degree` samples are dropped; if False, a batch
      size that does not divide by m is an error (never a silent misalignment).

  Returns:
    `batch_size // degree`.

  Raises:
    ValueError: the batch size does not divide by m and `drop_remainder` is False, or there are
      fewer than m samples.
  """
  degree = check_degree(degree)
  remainder = batch_size % degree
  if remainder and not drop_remainder:
    raise ValueError(
        f"batch size {batch_size} is not divisible by the pack degree m={degree} (remainder "
        f"{remainder}): use a batch size that is a multiple of {degree}, or pass "
        f"drop_remainder=True to drop the last {remainder} sample(s).")
  if batch_size // degree < 1:
    raise ValueError(f"batch size {batch_size} is smaller than the pack degree m={degree}: "
                     "not even one pack can be formed.")
  return batch_size // degree


def pack(x: jax.Array, degree: int, drop_remainder: bool = False) -> jax.Array:
  """Groups a batch into packs of `degree` consecutive samples, concatenated on the last axis.

  PacGAN (Lin et al. 2018), Section 3: the discriminator input for degree m is the concatenation
  of m samples. For an image batch (B, H, W, C) the result is (B // m, H, W, m * C) with
  `out[i, ..., j*C:(j+1)*C] == x[i*m + j]`.

  Args:
    x: (B, ..., C) batch, any dtype; the leading axis is the sample axis, the last the features.
      At least 2-D.
    degree: pack degree m >= 1 (m = 1 returns `x` unchanged).
    drop_remainder: drop the last `B % m` samples instead of raising (documented, opt-in).

  Returns:
    (B // m, ..., m * C) packs, same dtype.

  Raises:
    ValueError: `x` is not at least 2-D, or B does not divide by m (without `drop_remainder`).
    TypeError: `degree` is not an int.
  """
  degree = check_degree(degree)
  if x.ndim < 2:
    raise ValueError(f"x must be at least 2-D (batch, ..., features), got shape {x.shape}.")
  n = num_packs(x.shape[0], degree, drop_remainder)
  if degree == 1:
    return x
  x = x[:n * degree]
  inner = x.shape[1:-1]
  c = x.shape[-1]
  x = x.reshape((n, degree) + inner + (c,))
  # (n, m, *inner, C) -> (n, *inner, m, C) -> (n, *inner, m*C): sample j at [j*C:(j+1)*C].
  x = jnp.moveaxis(x, 1, -2)
  return x.reshape((n,) + inner + (degree * c,))


def unpack(packed: jax.Array, degree: int) -> jax.Array:
  """The inverse of `pack`: (n, ..., m * C) -> (n * m, ..., C), samples back in batch order.

  Raises:
    ValueError: the last axis does not divide by m, or `packed` is not at least 2-D.
  """
  degree = check_degree(degree)
  if packed.ndim < 2:
    raise ValueError(f"packed must be at least 2-D (packs, ..., m*features), got shape "
                     f"{packed.shape}.")
  if packed.shape[-1] % degree:
    raise ValueError(f"the last axis of packed ({packed.shape[-1]}) is not divisible by the pack "
                     f"degree m={degree}.")
  n, inner, c = packed.shape[0], packed.shape[1:-1], packed.shape[-1] // degree
  x = packed.reshape((n,) + inner + (degree, c))
  x = jnp.moveaxis(x, -2, 1)
  return x.reshape((n * degree,) + inner + (c,))


def concat_packs(batches: Sequence[jax.Array]) -> jax.Array:
  """Packs m independent batches: pack i is (batches[0][i], ..., batches[m-1][i]).

  PacGAN's fake pack: m generator batches from m independent noise batches, concatenated on the
  feature axis (Lin et al. 2018, Section 3; the official code concatenates on axis 1 for vectors,
  on the channel axis for images).

  Args:
    batches: a non-empty sequence of m arrays of identical shape (n, ..., C) and dtype.

  Returns:
    (n, ..., m * C).

  Raises:
    ValueError: empty sequence, or shapes / dtypes that differ, or arrays below 2-D.
    TypeError: `batches` is a single array rather than a sequence of arrays.
  """
  if hasattr(batches, "shape"):
    raise TypeError("batches must be a sequence (list/tuple) of m arrays, got a single array; "
                    "use pack(x, m) to group one batch.")
  batches = list(batches)
  if not batches:
    raise ValueError("batches must hold at least one array (m >= 1).")
  first = batches[0]
  if first.ndim < 2:
    raise ValueError(f"each batch must be at least 2-D (batch, ..., features), got shape "
                     f"{first.shape}.")
  for i, b in enumerate(batches):
    if b.shape != first.shape or b.dtype != first.dtype:
      raise ValueError(f"all batches must have the same shape and dtype; batch 0 is "
                       f"{first.shape} {first.dtype}, batch {i} is {b.shape} {b.dtype}.")
  if len(batches) == 1:
    return first
  return jnp.concatenate(batches, axis=-1)
