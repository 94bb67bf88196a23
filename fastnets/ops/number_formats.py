"""Number formats of limited-precision training: fixed point and small binary floats.

Papers: Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015 (fixed point
<IL, FL>, their Sec. 3); Wang et al., "Training Deep Neural Networks with 8-bit Floating Point
Numbers", NeurIPS 2018 (FP8 1-5-2 operands, FP16 1-6-9 accumulation and updates).

Formats are frozen dataclasses (hashable, usable as static arguments of `jax.jit`):

  * `FixedPoint(integer_bits, fraction_bits)`: a signed two's-complement word of
    `integer_bits + fraction_bits` bits (the sign bit counts as an integer bit, as in Gupta's
    <IL, FL>); values k * 2^-FL for integers k in [-2^(W-1), 2^(W-1) - 1]. Out-of-range values
    saturate.
  * `FloatFormat(exponent_bits, mantissa_bits, ...)`: a binary float with 1 sign bit, optional
    subnormals and infinities, and an overflow mode ("inf" as IEEE casts, or "saturate"); presets
    `BFLOAT16`, `FLOAT16`, `FP8_E4M3` (float8_e4m3fn), `FP8_E5M2` (Wang's 1-5-2), `FP16_WANG`
    (Wang's 1-6-9) and `FLOAT32`.

`FormatSpec` is what the pytree functions take: one format, None, or a per-leaf callable.
The rounding itself is in `fastnets.ops.rounding`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Union

import jax
import ml_dtypes
import numpy as np

__all__ = [
    "BFLOAT16", "FixedPoint", "FLOAT16", "FLOAT32", "FloatFormat", "Format", "FormatSpec",
    "FP16_WANG", "FP8_E4M3", "FP8_E5M2", "RNG_SOURCES", "ROUNDING_MODES", "check_format",
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


FormatSpec = Union[Format, None, Callable[[tuple, jax.Array], Union[Format, None]]]
FormatSpec.__doc__ = """What a pytree function takes as its format: one `Format` for every float
leaf, None (leave every leaf as it is), or a callable `(key_path, leaf) -> Format | None` choosing
per leaf (e.g. Wang et al. 2018's first and last layers kept in 16 bits)."""


def check_format(fmt: Any, name: str = "fmt") -> None:
  """Raises TypeError naming `name` unless `fmt` is a FixedPoint or FloatFormat."""
  if not isinstance(fmt, (FixedPoint, FloatFormat)):
    raise TypeError(
        f"{name} must be a FixedPoint or FloatFormat, got {type(fmt).__name__} {fmt!r}.")
