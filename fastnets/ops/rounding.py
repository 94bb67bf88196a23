"""Rounding to a number format: round-to-nearest-even and stochastic rounding, bit-exact.

Papers: Gupta et al. 2015 (round-to-nearest vs stochastic rounding, their Eq. 1-3); Wang et al.
2018 (floating-point stochastic rounding). Formats are in `fastnets.ops.number_formats`, the
random bits of stochastic rounding in `fastnets.ops.random_bits` (`rng="hash"` or `"jax"`).

Rounding (`round_nearest`, `stochastic_round`) returns arrays of x's dtype whose values are exactly
representable in the format. It works on the bit pattern of float32 (or float64 for float64 input)
with integer operations only (`lax.bitcast_convert_type`), element-wise and fully fused by XLA:
no Python loops over elements and no float64 arithmetic for float32/bfloat16/float16 input.

Algorithm (one pass, per element). Write |x| = M * 2^(e - 23) with M the 24-bit significand of the
float32 pattern (implicit bit included) and e its exponent. The target format's grid spacing at |x|
is 2^t, with t = max(e, emin) - m for a float format with subnormals (m mantissa bits, emin the
smallest normal exponent), and t = -FL for fixed point. The number of low bits to drop is
d = t - e + 23 >= 0.
  * d <= 23: drop d bits of the abs bit pattern u: nearest-even adds 2^(d-1) - 1 + (bit d of M);
    stochastic adds d uniform random bits; then clears the d low bits. A carry out of the mantissa
    increments the exponent, which is exactly the next grid point, so this is correct across binade
    boundaries, in the target's subnormal range and for float32 subnormal input.
  * d >= 24: |x| < 2^t, the result is 0 or 2^t (the smallest grid step): nearest-even rounds up iff
    |x| > 2^(t-1); stochastic rounds up iff a 32-bit uniform integer r < M * 2^(32-d) (for d > 32,
    M >> (d - 32)), i.e. with probability |x| / 2^t exactly for d <= 32. For d > 32 (|x| below
    2^-8 of the smallest spacing) the probability is truncated to 32 bits: an absolute bias below
    2^-32 of one grid step.
Stochastic rounding is therefore unbiased, E[SR(x)] = x, for every x inside the representable range
(up to that 2^-32 truncation), and values already representable are returned unchanged (the
random bits added are smaller than one dropped-bit unit). float64 input runs the same algorithm on
the 64-bit pattern (52 stored bits, 64 random bits).

Special values:
  * NaN input returns NaN (the input's bits) for every format, fixed point included (a hardware
    fixed-point datapath has no NaN; keeping it makes divergence visible).
  * Infinite input: fixed point saturates; a float format with infinities keeps +-inf; one without
    (FP8_E4M3, `has_inf=False`) gives NaN, as the ml_dtypes cast does.
  * Overflow of finite values: fixed point always saturates (Gupta). A float format has
    `overflow="inf"` (IEEE: a value that rounds above the largest finite becomes +-inf, or NaN
    without infinities; what the native casts do, and the presets' default) or
    `overflow="saturate"` (clamp to +-largest finite). Stochastic rounding of a value between the
    largest finite and the overflow threshold may round up: "inf" then gives inf (or NaN), while
    "saturate" returns the largest finite. The largest finite value used is the largest
    one representable both in the format and in x's dtype (e.g. rounding float16 input to
    bfloat16 saturates at 65280, not at 65536, which float16 cannot hold).
  * Subnormals: `subnormals=True` (default, IEEE gradual underflow: the grid below the smallest
    normal 2^emin has spacing 2^(emin - m)); `subnormals=False`: the only representable value below
    2^emin is 0, and both roundings pick between 0 and +-2^emin (so stochastic rounding stays
    unbiased; nearest flushes |x| <= 2^(emin-1) to zero).
  * Signed zero: float formats keep the sign of zero (-tiny rounds to -0.0, as IEEE casts do);
    two's-complement fixed point has one zero and returns +0.0.

Gradients are straight-through (the "STE"; Gupta and Wang train with the rounding invisible to back
propagation): d round(x) / dx = 1 everywhere, including where the value saturates. It is a
`jax.custom_jvp` whose tangent rule is the identity, so both forward mode (`jax.jvp`) and reverse
mode work; nothing is saved for the backward pass. `quantize_grad` (a `jax.custom_vjp`) rounds the
cotangent instead, for gradients in low precision.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fastnets.checks import check_choice, check_key
from fastnets.ops.number_formats import RNG_SOURCES, FloatFormat, Format, check_format
from fastnets.ops.random_bits import random_bits

__all__ = ["check_float_input", "container_bits", "is_representable", "round_bits",
           "round_nearest", "round_with_mode", "stochastic_round", "to_native"]


class _Container(NamedTuple):
  float_dtype: Any
  uint_dtype: Any
  int_dtype: Any
  nbits: int
  mant: int
  bias: int


_C32 = _Container(jnp.float32, jnp.uint32, jnp.int32, 32, 23, 127)
_C64 = _Container(jnp.float64, jnp.uint64, jnp.int64, 64, 52, 1023)
_INPUT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def check_float_input(x: Any, fn: str) -> jax.Array:
  """x as an array; TypeError (naming `fn`) unless float32, bfloat16, float16 or float64."""
  x = jnp.asarray(x)
  if x.dtype not in [np.dtype(d) for d in _INPUT_DTYPES]:
    raise TypeError(f"{fn}: x must be a float32, bfloat16, float16 or float64 array, got dtype "
                    f"{x.dtype} (integer inputs are already on a grid: cast them first).")
  return x


def _container(dtype) -> _Container:
  return _C64 if np.dtype(dtype) == np.dtype(np.float64) else _C32


def container_bits(dtype) -> int:
  """Width of the bit pattern rounding works on for `dtype`: 64 for float64, else 32."""
  return _container(dtype).nbits


def _truncate(value: float, bits: int) -> float:
  """Largest number <= value (value > 0) with at most `bits` significant bits."""
  m, e = math.frexp(value)  # value = m * 2^e, m in [0.5, 1)
  return math.floor(m * 2 ** bits) * 2.0 ** (e - bits)


def _float_bits(value: float, c: _Container) -> int:
  """Bit pattern (as a Python int) of `value` in the container's float type (value exact there)."""
  np_f = np.float64 if c.nbits == 64 else np.float32
  np_u = np.uint64 if c.nbits == 64 else np.uint32
  v = np_f(value)
  if float(v) != value:
    raise AssertionError(f"internal: {value!r} not exact in {np_f.__name__}")
  return int(np.array(v).view(np_u))


def _bounds(fmt: Format, dtype) -> tuple[float, float]:
  """(largest positive, largest negative magnitude) representable in both fmt and dtype."""
  info = jnp.finfo(dtype)
  p_dtype, dtype_max = int(info.nmant) + 1, float(info.max)
  if isinstance(fmt, FloatFormat):
    hi = _truncate(min(fmt.max_value, dtype_max), min(fmt.precision, p_dtype))
    return hi, hi
  hi = _truncate(min(fmt.max_value, dtype_max), p_dtype) if fmt.max_value > 0 else 0.0
  lo = _truncate(min(-fmt.min_value, dtype_max), p_dtype)
  return hi, lo


def round_bits(x: jax.Array, fmt: Format, rbits: jax.Array | None) -> jax.Array:
  """Rounds x (any accepted float dtype) to fmt; nearest-even if rbits is None, else stochastic.

  rbits: uniform random unsigned integers of the container width (uint32; uint64 for float64 x),
  same shape as x. Returns an array of x's dtype. See the module docstring for the algorithm; the
  code is written for few element-wise operations (it is one fused XLA loop).
  """
  out_dtype = x.dtype
  c = _container(out_dtype)
  u_t, i_t = c.uint_dtype, c.int_dtype
  uc = lambda v: u_t(v)  # typed scalar constant
  bits = lax.bitcast_convert_type(x.astype(c.float_dtype), u_t)
  sign_mask = 1 << (c.nbits - 1)
  sign = bits & uc(sign_mask)
  u = bits & uc(sign_mask - 1)  # |x| as bits
  exp_u = u >> uc(c.mant)
  exp1 = jnp.maximum(exp_u.astype(i_t), 1)  # container subnormals share the exponent of E = 1

  # d = number of low significand bits to drop = t - e + mant, t = exponent of the grid step at |x|.
  if isinstance(fmt, FloatFormat):
    k1 = fmt.emin + c.bias  # biased exponent field of the format's smallest normal
    k2 = c.mant - fmt.mantissa_bits
    if fmt.subnormals:
      d = jnp.maximum(k1 - exp1, 0) + k2
      t_small = fmt.emin - fmt.mantissa_bits
    else:
      d = jnp.where(exp1 >= k1, k2, k1 + c.mant - exp1)
      t_small = fmt.emin
  else:
    d = jnp.maximum((c.bias + c.mant - fmt.fraction_bits) - exp1, 0)
    t_small = -fmt.fraction_bits
  du = d.astype(u_t)
  significand = (u & uc((1 << c.mant) - 1)) | (jnp.minimum(exp_u, uc(1)) << uc(c.mant))  # M

  # Path 1 (d <= mant): drop d bits of the pattern; a carry moves to the next binade (exact).
  mask = (uc(1) << du) - uc(1)
  if rbits is None:
    lsb = (significand >> du) & mask & uc(1)  # lowest kept bit of M; 0 when d = 0
    add = (mask >> uc(1)) + lsb  # 2^(d-1) - 1 + lsb: ties to even
  else:
    add = rbits & mask
  u_big = (u + add) & ~mask

  # Path 2 (d > mant): the result is 0 or the smallest grid step 2^t_small. Shifts by the bit
  # width or more give 0 in XLA, which is the right probability for d > nbits + 8 and harmless
  # for d <= mant (path 1 is selected there).
  if rbits is None:
    up = (du == uc(c.mant + 1)) & (significand > uc(1 << c.mant))
  else:
    head = c.nbits - c.mant - 1
    thresh = (significand << uc(head)) >> (du - uc(c.mant + 1))  # floor(M * 2^(nbits - d))
    up = rbits < thresh
  u_small = jnp.where(up, uc(_float_bits(2.0 ** t_small, c)), uc(0))
  r = jnp.where(du <= uc(c.mant), u_big, u_small)

  inf_bits = _float_bits(math.inf, c)
  quiet = 1 << (c.mant - 1)
  hi, lo = _bounds(fmt, out_dtype)
  if isinstance(fmt, FloatFormat):
    max_bits = uc(_float_bits(hi, c))
    if fmt.overflow == "saturate":
      ovf = max_bits
    else:
      ovf = uc(inf_bits if fmt.has_inf else inf_bits | quiet)
    special = u if fmt.has_inf else u | uc(quiet)  # inf/NaN input: kept, or inf -> NaN
    r = jnp.where(r > max_bits, jnp.where(u >= uc(inf_bits), special, ovf), r)
    out = r | sign
  else:
    r = jnp.minimum(r, jnp.where(sign != 0, uc(_float_bits(lo, c)), uc(_float_bits(hi, c))))
    out = jnp.where(u > uc(inf_bits), bits, r | jnp.where(r != 0, sign, uc(0)))
  return lax.bitcast_convert_type(out, c.float_dtype).astype(out_dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _ste_round_impl(x, rbits, fmt):
  return round_bits(x, fmt, rbits)


@_ste_round_impl.defjvp
def _ste_round_jvp(fmt, primals, tangents):
  # Straight-through estimator: the tangent passes unchanged (identity Jacobian); nothing saved.
  x, rbits = primals
  return _ste_round_impl(x, rbits, fmt), tangents[0]


# jit with the format static: one fused XLA kernel even when called eagerly (inlined under jit).
_ste_round = jax.jit(_ste_round_impl, static_argnums=(2,))
_round_bits_jit = jax.jit(round_bits, static_argnums=(1,))


def round_nearest(x: jax.Array, fmt: Format) -> jax.Array:
  """Rounds to the nearest value of `fmt`, ties to even (Gupta Eq. 1 / IEEE 754 RNE).

  Bit for bit equal to the native cast for the presets that have one, e.g.
  `round_nearest(x, BFLOAT16) == x.astype(jnp.bfloat16).astype(x.dtype)` (NaN aside), and for
  float64 input equal to a float64 reference rounding.

  Args:
    x: float32, bfloat16, float16 or float64 array of any shape.
    fmt: a FixedPoint or FloatFormat.

  Returns:
    Array of x's shape and dtype, every value exactly representable in `fmt` (special values and
    overflow as described in the module docstring). Gradient: straight-through (identity).

  Raises:
    TypeError: x not one of the accepted float dtypes (e.g. integers), or fmt not a format.
  """
  x = check_float_input(x, "round_nearest")
  check_format(fmt)
  return _ste_round(x, None, fmt)


def stochastic_round(key: jax.Array, x: jax.Array, fmt: Format, *, rng: str = "hash") -> jax.Array:
  """Stochastic rounding (Gupta Eq. 2; Wang Sec. 3.3): rounds up with probability frac/step.

  For x between neighbours a < x < b of `fmt`, returns b with probability (x - a) / (b - a) and a
  otherwise, so E[SR(x)] = x inside the range; representable x is returned unchanged.

  Args:
    key: a `jax.random.key` (or raw uint32 key); the same key gives the same rounding.
    x: float32, bfloat16, float16 or float64 array.
    fmt: a FixedPoint or FloatFormat.
    rng: "hash" (default, fast counter-based hash of (index, key)) or "jax" (`jax.random.bits`).
      See the module docstring for the trade-off.

  Returns:
    Array of x's shape and dtype, values representable in `fmt`. Gradient: straight-through.

  Raises:
    ValueError: key is None, or rng unknown. TypeError: bad key, x dtype or fmt.
  """
  key = check_key(key, "stochastic_round", purpose="stochastic rounding")
  x = check_float_input(x, "stochastic_round")
  check_format(fmt)
  check_choice("rng", rng, RNG_SOURCES, "stochastic_round")
  rbits = random_bits(key, x.shape, container_bits(x.dtype), rng)
  return _ste_round(x, rbits, fmt)


def to_native(x: jax.Array, fmt: FloatFormat) -> jax.Array:
  """Rounds x to `fmt` (nearest) and casts to the native jnp/ml_dtypes dtype with that value set.

  Native formats: BFLOAT16 -> bfloat16, FLOAT16 -> float16, FP8_E4M3 -> float8_e4m3fn,
  FP8_E5M2 -> float8_e5m2, FLOAT32 -> float32 (any `overflow` mode). The rounding is idempotent on
  values already representable (e.g. the output of `stochastic_round`), so the cast is exact.

  Raises:
    ValueError: fmt has no native dtype (fixed point, FP16_WANG, custom bias, ...).
  """
  check_format(fmt)
  dtype = fmt.native_dtype if isinstance(fmt, FloatFormat) else None
  if dtype is None:
    raise ValueError(f"to_native: format {fmt} has no native dtype; native ones are BFLOAT16, "
                     "FLOAT16, FP8_E4M3, FP8_E5M2 and FLOAT32.")
  return round_nearest(x, fmt).astype(dtype)


def is_representable(x: jax.Array, fmt: Format) -> jax.Array:
  """Boolean array: which values of x are exactly representable in fmt (NaN counts for floats)."""
  x = check_float_input(x, "is_representable")
  check_format(fmt)
  same = round_nearest(x, fmt) == x
  if isinstance(fmt, FloatFormat):
    same = same | jnp.isnan(x)
  return same


def round_with_mode(x, fmt, mode, key, rng):
  """Rounds `x` to `fmt` by `mode` ("nearest" or "stochastic" with `key` and `rng`), with no
  custom derivative: for gradients and parameter updates. Arguments are not checked."""
  if mode == "nearest":
    return _round_bits_jit(x, fmt, None)
  rbits = random_bits(key, x.shape, container_bits(x.dtype), rng)
  return _round_bits_jit(x, fmt, rbits)
