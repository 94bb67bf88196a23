"""Limited-precision number formats and rounding: fixed point, small floats, stochastic rounding.

Papers:
  * Gupta, Agrawal, Gopalakrishnan, Narayanan, "Deep Learning with Limited Numerical Precision",
    ICML 2015: fixed point <IL, FL>, round-to-nearest vs stochastic rounding (their Eq. 1-3).
  * Wang, Choi, Brand, Chen, Gopalakrishnan, "Training Deep Neural Networks with 8-bit Floating
    Point Numbers", NeurIPS 2018: FP8 (1-5-2), FP16 (1-6-9), floating-point stochastic rounding.

Formats are frozen dataclasses (hashable, usable as static arguments of `jax.jit`):

  * `FixedPoint(integer_bits, fraction_bits)`: a signed two's-complement word of
    `integer_bits + fraction_bits` bits (the sign bit counts as an integer bit, as in Gupta's
    <IL, FL>); values k * 2^-FL for integers k in [-2^(W-1), 2^(W-1) - 1]. Out-of-range values
    saturate.
  * `FloatFormat(exponent_bits, mantissa_bits, ...)`: a binary float with 1 sign bit; presets
    `BFLOAT16`, `FLOAT16`, `FP8_E4M3` (float8_e4m3fn), `FP8_E5M2` (Wang's 1-5-2), `FP16_WANG`
    (Wang's 1-6-9) and `FLOAT32`.

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

Random bits for stochastic rounding come from one of two sources (`rng=`):
  * "hash" (default): a counter-based integer hash of (element index, key) computed in the same
    fused pass: r_i = lowbias32(i * (s1 | 1) + s0) (C. Wellons' 32-bit integer hash, two
    multiplies and three xor-shifts), with (s0, s1) mixed from all words of the key once per call.
    It costs about as much as the rounding itself. Its quality is checked in tests (uniform bits,
    unbiased rounding, no correlation between neighbouring elements, between keys or between
    shifted streams); it is not a cryptographic or statistically certified generator: for one key
    the bits are a fixed bijection of the index, so use a fresh key (e.g.
    `jax.random.fold_in(key, step)`) for every call; arrays beyond 2^32 elements repeat the index.
  * "jax": `jax.random.bits(key, shape)`, the key's own PRNG (threefry by default), a separate
    and slower pass; use it when certified randomness matters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

from fastnets.checks import check_choice, check_key

__all__ = [
    "FixedPoint", "FloatFormat", "Format", "BFLOAT16", "FLOAT16", "FP8_E4M3", "FP8_E5M2",
    "FP16_WANG", "FLOAT32", "round_nearest", "stochastic_round", "to_native", "is_representable",
    "quantize", "quantize_grad", "quantize_tree",
]

_OVERFLOW_MODES = ("inf", "saturate")
ROUNDING_MODES = ("nearest", "stochastic")
RNG_SOURCES = ("hash", "jax")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_int(name: str, value: Any, lo: int, hi: int, cls: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{cls}.{name} must be an int, got {type(value).__name__} {value!r}.")
  if not lo <= value <= hi:
    raise ValueError(f"{cls}.{name} must be in [{lo}, {hi}], got {value}.")


@dataclasses.dataclass(frozen=True)
class FixedPoint:
  """Signed two's-complement fixed point <IL, FL> (Gupta et al. 2015, Sec. 3).

  A word of `integer_bits + fraction_bits` bits (the sign bit is one of the integer bits) holding
  k * 2^-fraction_bits for integers k in [-2^(W-1), 2^(W-1) - 1]. E.g. FixedPoint(2, 14) is a
  16-bit word covering [-2, 2 - 2^-14]. Rounding saturates at both ends.

  Attributes:
    integer_bits: IL >= 1, including the sign bit.
    fraction_bits: FL >= 0; the grid step is 2^-FL.

  Raises:
    TypeError / ValueError: non-integer or negative bit counts, or a word wider than 32 bits.
  """
  integer_bits: int
  fraction_bits: int

  def __post_init__(self):
    _check_int("integer_bits", self.integer_bits, 1, 32, "FixedPoint")
    _check_int("fraction_bits", self.fraction_bits, 0, 31, "FixedPoint")
    # numpy integers become Python ints: 2 ** bits must not overflow an int16, and a format must
    # hash and compare as the same format given with Python ints (jit caches key on it).
    object.__setattr__(self, "integer_bits", int(self.integer_bits))
    object.__setattr__(self, "fraction_bits", int(self.fraction_bits))
    if self.word_bits > 32:
      raise ValueError(
          f"FixedPoint word integer_bits + fraction_bits = {self.word_bits} is wider than 32 bits "
          f"(got integer_bits={self.integer_bits}, fraction_bits={self.fraction_bits}).")

  @property
  def word_bits(self) -> int:
    return self.integer_bits + self.fraction_bits

  @property
  def resolution(self) -> float:
    """Grid step 2^-fraction_bits."""
    return 2.0 ** -self.fraction_bits

  @property
  def max_value(self) -> float:
    """Largest value (2^(W-1) - 1) * 2^-FL (exact in Python's float)."""
    return (2 ** (self.word_bits - 1) - 1) * self.resolution

  @property
  def min_value(self) -> float:
    """Smallest (most negative) value -2^(W-1) * 2^-FL."""
    return -(2.0 ** (self.integer_bits - 1))

  def __str__(self) -> str:
    return f"fixed<{self.integer_bits},{self.fraction_bits}>"


@dataclasses.dataclass(frozen=True)
class FloatFormat:
  """A binary floating-point format with 1 sign bit, simulated inside float32.

  Attributes:
    exponent_bits: width of the exponent field, 2..8.
    mantissa_bits: stored fraction bits (precision is mantissa_bits + 1), 0..23.
    bias: exponent bias; default 2^(exponent_bits - 1) - 1 (IEEE).
    subnormals: gradual underflow below 2^emin (True, IEEE) or none (False, see module doc).
    has_inf: True: the top exponent code holds inf/NaN (IEEE, e.g. float16, float8_e5m2). False:
      the top exponent code holds normal numbers except all-ones mantissa = NaN, no infinities
      (the "fn" formats such as float8_e4m3fn, max 448).
    overflow: "inf" (IEEE cast semantics, default) or "saturate" (clamp to +-max_value).

  Raises:
    TypeError / ValueError: bad field types or values, or a format whose range or smallest step
      cannot be represented in float32 (the simulation container).
  """
  exponent_bits: int
  mantissa_bits: int
  bias: int | None = None
  subnormals: bool = True
  has_inf: bool = True
  overflow: str = "inf"

  def __post_init__(self):
    _check_int("exponent_bits", self.exponent_bits, 2, 8, "FloatFormat")
    _check_int("mantissa_bits", self.mantissa_bits, 0, 23, "FloatFormat")
    if self.bias is None:
      object.__setattr__(self, "bias", 2 ** (self.exponent_bits - 1) - 1)
    elif isinstance(self.bias, bool) or not isinstance(self.bias, (int, np.integer)):
      raise TypeError(f"FloatFormat.bias must be an int or None, got {self.bias!r}.")
    for name in ("subnormals", "has_inf"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise TypeError(f"FloatFormat.{name} must be a bool, got {getattr(self, name)!r}.")
    # numpy scalars become Python ones (no int16 overflow in 2 ** bits; one hash per format).
    for name, kind in (("exponent_bits", int), ("mantissa_bits", int), ("bias", int),
                       ("subnormals", bool), ("has_inf", bool)):
      object.__setattr__(self, name, kind(getattr(self, name)))
    if self.overflow not in _OVERFLOW_MODES:
      raise ValueError(
          f"FloatFormat.overflow must be one of {_OVERFLOW_MODES}, got {self.overflow!r}.")
    if not self.has_inf and self.mantissa_bits == 0:
      raise ValueError("FloatFormat with has_inf=False needs mantissa_bits >= 1 (the all-ones "
                       "mantissa of the top exponent is NaN).")
    if self.max_value > _FLOAT32_MAX:
      raise ValueError(
          f"FloatFormat {self} cannot be represented in float32: its largest value "
          f"{self.max_value:.6g} exceeds float32's {_FLOAT32_MAX:.6g} (lower exponent_bits or "
          "raise bias).")
    if self.smallest_step < 2.0 ** -149:
      raise ValueError(
          f"FloatFormat {self} cannot be represented in float32: its smallest positive value "
          f"2^{math.log2(self.smallest_step):.0f} is below float32's 2^-149 (raise emin = 1 - bias "
          "or use fewer mantissa bits).")

  @property
  def precision(self) -> int:
    """Significant bits, mantissa_bits + 1."""
    return self.mantissa_bits + 1

  @property
  def emin(self) -> int:
    """Exponent of the smallest normal number, 1 - bias."""
    return 1 - self.bias

  @property
  def emax(self) -> int:
    """Exponent of the largest finite number."""
    top = 2 ** self.exponent_bits - (2 if self.has_inf else 1)
    return top - self.bias

  @property
  def max_value(self) -> float:
    """Largest finite value (exact in Python's float)."""
    frac_units = 2 ** (self.mantissa_bits + 1) - (1 if self.has_inf else 2)
    return frac_units * 2.0 ** (self.emax - self.mantissa_bits)

  @property
  def smallest_normal(self) -> float:
    return 2.0 ** self.emin

  @property
  def smallest_step(self) -> float:
    """Smallest positive value: the smallest subnormal, or the smallest normal without them."""
    return 2.0 ** (self.emin - self.mantissa_bits) if self.subnormals else 2.0 ** self.emin

  @property
  def native_dtype(self):
    """The numpy/ml_dtypes dtype with exactly this value set, or None."""
    for dtype in _NATIVE_DTYPES:
      info = ml_dtypes.finfo(dtype)
      if (info.nmant == self.mantissa_bits and info.nexp == self.exponent_bits
          and float(info.max) == self.max_value
          and float(info.smallest_normal) == self.smallest_normal and self.subnormals
          and np.isinf(np.array(np.inf, np.float32).astype(dtype)) == self.has_inf):
        return np.dtype(dtype)
    return None

  def __str__(self) -> str:
    extra = "" if self.has_inf else "fn"
    return f"float<e{self.exponent_bits}m{self.mantissa_bits}{extra},bias={self.bias}>"


_NATIVE_DTYPES = (ml_dtypes.bfloat16, np.float16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
                  np.float32)

Format = Union[FixedPoint, FloatFormat]
Format.__doc__ = """A number format of `fastnets.ops`: `FixedPoint` (Gupta et al. 2015's <IL, FL>)
or `FloatFormat` (sign, exponent and mantissa bits: FP8, FP16, bfloat16, ...). Both are frozen,
hashable dataclasses, usable as static arguments of `jax.jit`."""

BFLOAT16 = FloatFormat(8, 7)
FLOAT16 = FloatFormat(5, 10)
FP8_E4M3 = FloatFormat(4, 3, has_inf=False)  # float8_e4m3fn: max 448, no inf, NaN = S.1111.111
FP8_E5M2 = FloatFormat(5, 2)  # Wang et al. 2018's FP8 (1-5-2), float8_e5m2
FP16_WANG = FloatFormat(6, 9)  # Wang et al. 2018's FP16 (1-6-9) for accumulation and updates
FLOAT32 = FloatFormat(8, 23)


# ---------------------------------------------------------------------------------------------
# Bit-level rounding.


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


def _check_format(fmt: Any, name: str = "fmt") -> None:
  if not isinstance(fmt, (FixedPoint, FloatFormat)):
    raise TypeError(
        f"{name} must be a FixedPoint or FloatFormat, got {type(fmt).__name__} {fmt!r}.")


def _check_input(x: Any, fn: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype not in [np.dtype(d) for d in _INPUT_DTYPES]:
    raise TypeError(f"{fn}: x must be a float32, bfloat16, float16 or float64 array, got dtype "
                    f"{x.dtype} (integer inputs are already on a grid: cast them first).")
  return x


def _container(dtype) -> _Container:
  return _C64 if np.dtype(dtype) == np.dtype(np.float64) else _C32


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


# ---------------------------------------------------------------------------------------------
# Random bits.


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (a bijection of uint32 with full avalanche)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two uint32 seeds derived from all words of the key."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  data = jnp.ravel(data).astype(jnp.uint32)
  s0, s1 = jnp.uint32(0x243F6A88), jnp.uint32(0x85A308D3)
  for i in range(data.shape[0]):
    s0 = _fmix32(s0 ^ data[i])
    s1 = _fmix32(s1 + data[i] * jnp.uint32(0x9E3779B9))
  return s0, _fmix32(s1 ^ s0)


def _lowbias32(h: jax.Array) -> jax.Array:
  """C. Wellons' "lowbias32" integer hash: a uint32 bijection with very low avalanche bias."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def _hash_bits32(s0: jax.Array, s1: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """lowbias32(i * (s1 | 1) + s0) for the flat element index i: one keyed bijection per key."""
  size = int(np.prod(shape, dtype=np.int64))
  idx = lax.iota(jnp.uint32, size).reshape(shape) if size else jnp.zeros(shape, jnp.uint32)
  return _lowbias32(idx * (s1 | jnp.uint32(1)) + s0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_bits(key: jax.Array, shape: tuple[int, ...], c: _Container, rng: str) -> jax.Array:
  if rng == "jax":
    return jax.random.bits(key, shape, dtype=c.uint_dtype)
  # The barrier keeps XLA from fusing (and so recomputing) the scalar key mixing per element.
  s0, s1 = lax.optimization_barrier(_key_words(key))
  h = _hash_bits32(s0, s1, shape)
  if c.nbits == 32:
    return h
  h2 = _hash_bits32(_fmix32(s0 ^ jnp.uint32(0x3C6EF372)), _fmix32(s1 ^ jnp.uint32(0xA54FF53A)),
                    shape)
  return (h.astype(jnp.uint64) << jnp.uint64(32)) | h2.astype(jnp.uint64)


# ---------------------------------------------------------------------------------------------
# Public rounding functions (straight-through gradients).


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
  x = _check_input(x, "round_nearest")
  _check_format(fmt)
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
  x = _check_input(x, "stochastic_round")
  _check_format(fmt)
  check_choice("rng", rng, RNG_SOURCES, "stochastic_round")
  rbits = _random_bits(key, x.shape, _container(x.dtype), rng)
  return _ste_round(x, rbits, fmt)


def to_native(x: jax.Array, fmt: FloatFormat) -> jax.Array:
  """Rounds x to `fmt` (nearest) and casts to the native jnp/ml_dtypes dtype with that value set.

  Native formats: BFLOAT16 -> bfloat16, FLOAT16 -> float16, FP8_E4M3 -> float8_e4m3fn,
  FP8_E5M2 -> float8_e5m2, FLOAT32 -> float32 (any `overflow` mode). The rounding is idempotent on
  values already representable (e.g. the output of `stochastic_round`), so the cast is exact.

  Raises:
    ValueError: fmt has no native dtype (fixed point, FP16_WANG, custom bias, ...).
  """
  _check_format(fmt)
  dtype = fmt.native_dtype if isinstance(fmt, FloatFormat) else None
  if dtype is None:
    raise ValueError(f"to_native: format {fmt} has no native dtype; native ones are BFLOAT16, "
                     "FLOAT16, FP8_E4M3, FP8_E5M2 and FLOAT32.")
  return round_nearest(x, fmt).astype(dtype)


def is_representable(x: jax.Array, fmt: Format) -> jax.Array:
  """Boolean array: which values of x are exactly representable in fmt (NaN counts for floats)."""
  x = _check_input(x, "is_representable")
  _check_format(fmt)
  same = round_nearest(x, fmt) == x
  if isinstance(fmt, FloatFormat):
    same = same | jnp.isnan(x)
  return same


# ---------------------------------------------------------------------------------------------
# Quantisation ops for training.


def round_with_mode(x, fmt, mode, key, rng):
  """Rounds `x` to `fmt` by `mode` ("nearest" or "stochastic" with `key` and `rng`), with no
  custom derivative: for gradients and parameter updates. Arguments are not checked."""
  if mode == "nearest":
    return _round_bits_jit(x, fmt, None)
  rbits = _random_bits(key, x.shape, _container(x.dtype), rng)
  return _round_bits_jit(x, fmt, rbits)


def _check_quant_args(x, fmt, mode, key, rng, fn):
  x = _check_input(x, fn)
  if fmt is not None:
    _check_format(fmt)
  check_choice("mode", mode, ROUNDING_MODES, fn)
  check_choice("rng", rng, RNG_SOURCES, fn)
  if mode == "stochastic" and fmt is not None:
    key = check_key(key, fn, purpose="stochastic rounding")
  return x, key


def quantize(x: jax.Array, fmt: Format | None, mode: str = "nearest", *,
             key: jax.Array | None = None, rng: str = "hash") -> jax.Array:
  """Rounds x to fmt in the forward pass; straight-through gradient (identity, not rounded).

  Args:
    x: float array (float32, bfloat16, float16, float64).
    fmt: a format, or None for the identity (handy in configs).
    mode: "nearest" (`round_nearest`) or "stochastic" (`stochastic_round`, needs key).
    key: PRNG key for mode="stochastic".
    rng: random-bit source for stochastic rounding, "hash" or "jax".

  Returns:
    x's shape and dtype, representable in fmt.

  Raises:
    ValueError: unknown mode/rng, or mode="stochastic" without a key. TypeError: bad dtype/fmt.
  """
  x, key = _check_quant_args(x, fmt, mode, key, rng, "quantize")
  if fmt is None:
    return x
  if mode == "nearest":
    return _ste_round(x, None, fmt)
  return _ste_round(x, _random_bits(key, x.shape, _container(x.dtype), rng), fmt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _quantize_grad(x, key, fmt, mode, rng):
  del key, fmt, mode, rng
  return x


def _quantize_grad_fwd(x, key, fmt, mode, rng):
  del fmt, mode, rng
  return x, key


def _quantize_grad_bwd(fmt, mode, rng, key, g):
  return round_with_mode(g, fmt, mode, key, rng), None


_quantize_grad.defvjp(_quantize_grad_fwd, _quantize_grad_bwd)


def quantize_grad(x: jax.Array, fmt: Format | None, mode: str = "nearest", *,
                  key: jax.Array | None = None, rng: str = "hash") -> jax.Array:
  """Identity in the forward pass; rounds the incoming cotangent (gradient) to fmt.

  Used to keep gradients (Wang's error and weight gradients, Gupta's gradients) in low precision:
  `y = quantize_grad(x, FP8_E5M2)` makes dL/dx = round(dL/dy). A `jax.custom_vjp`: the forward
  saves only the key (nothing for mode="nearest"); the backward rounds the cotangent with it
  (`stochastic_round(key, g, fmt)` or `round_nearest(g, fmt)`); nothing is recomputed.

  Args:
    x: float array; returned unchanged.
    fmt: format of the gradient, or None for the identity.
    mode: "nearest" or "stochastic" (needs key).
    key: PRNG key for mode="stochastic" (use a different key from the forward rounding).
    rng: "hash" or "jax".

  Raises:
    ValueError / TypeError as `quantize`.
  """
  x, key = _check_quant_args(x, fmt, mode, key, rng, "quantize_grad")
  if fmt is None:
    return x
  if mode == "nearest":
    key = jnp.zeros((2,), jnp.uint32)
  return _quantize_grad(x, key, fmt, mode, rng)


FormatSpec = Union[Format, None, Callable[[tuple, jax.Array], Union[Format, None]]]
FormatSpec.__doc__ = """What a pytree function takes as its format: one `Format` for every float
leaf, None (leave every leaf as it is), or a callable `(key_path, leaf) -> Format | None` choosing
per leaf (e.g. Wang et al. 2018's first and last layers kept in 16 bits)."""


def leaf_format(fmt_spec: FormatSpec, path: tuple, leaf: Any) -> Format | None:
  """The format of one pytree leaf under `fmt_spec` (a format, None, or a callable
  `(path, leaf) -> format`); None for non-float leaves, which are never rounded."""
  if fmt_spec is None or isinstance(fmt_spec, (FixedPoint, FloatFormat)):
    fmt = fmt_spec
  elif callable(fmt_spec):
    fmt = fmt_spec(path, leaf)
    if fmt is not None:
      _check_format(fmt, "fmt(path, leaf)")
  else:
    raise TypeError(f"fmt must be a FixedPoint, FloatFormat, None or a callable (path, leaf) -> "
                    f"format, got {type(fmt_spec).__name__}.")
  if fmt is not None and not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
    return None  # integer leaves (step counters, ...) are left alone
  return fmt


def quantize_tree(tree: Any, fmt: FormatSpec, mode: str = "nearest", *,
                  key: jax.Array | None = None, rng: str = "hash") -> Any:
  """Rounds every float leaf of a pytree (e.g. parameters) to its format.

  Args:
    tree: pytree of arrays; non-float leaves are returned unchanged.
    fmt: one format for all leaves, or a callable (key_path, leaf) -> format or None (None keeps
      the leaf as it is), e.g. to give biases more integer bits.
    mode: "nearest" or "stochastic".
    key: PRNG key for mode="stochastic"; leaf i uses `jax.random.fold_in(key, i)`.
    rng: "hash" or "jax".

  Returns:
    A pytree of the same structure with rounded float leaves (straight-through gradients).
  """
  check_choice("mode", mode, ROUNDING_MODES, "quantize_tree")
  if mode == "stochastic":
    key = check_key(key, "quantize_tree", purpose="stochastic rounding")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = []
  for i, (path, leaf) in enumerate(leaves):
    leaf_fmt = leaf_format(fmt, path, leaf)
    if leaf_fmt is None:
      out.append(leaf)
      continue
    leaf_key = jax.random.fold_in(key, i) if mode == "stochastic" else None
    out.append(quantize(leaf, leaf_fmt, mode, key=leaf_key, rng=rng))
  return jax.tree_util.tree_unflatten(treedef, out)
