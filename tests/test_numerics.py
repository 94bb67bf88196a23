"""Tests of fastnets.ops.number_formats, rounding, random_bits and quantization: formats,
round-to-nearest, stochastic rounding.

Gupta et al. 2015 (fixed point, stochastic rounding); Wang et al. 2018 (FP8, FP16 formats).
"""

import dataclasses

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import ops
from fastnets.ops import random_bits
from fastnets.ops.number_formats import (
  BFLOAT16,
  FLOAT16,
  FLOAT32,
  FP8_E4M3,
  FP8_E5M2,
  FP16_WANG,
  FixedPoint,
  FloatFormat,
)

PRESETS = [BFLOAT16, FLOAT16, FP8_E4M3, FP8_E5M2, FP16_WANG, FLOAT32]
NATIVE = [(BFLOAT16, ml_dtypes.bfloat16), (FLOAT16, np.float16),
          (FP8_E4M3, ml_dtypes.float8_e4m3fn), (FP8_E5M2, ml_dtypes.float8_e5m2),
          (FLOAT32, np.float32)]
CUSTOM = [FloatFormat(5, 10, subnormals=False), FloatFormat(4, 3, overflow="saturate"),
          FloatFormat(6, 9, bias=40), FloatFormat(3, 1), FloatFormat(5, 2, has_inf=False)]
FIXED = [FixedPoint(2, 14), FixedPoint(6, 10), FixedPoint(8, 8), FixedPoint(1, 0),
         FixedPoint(16, 16), FixedPoint(4, 28)]
ALL = PRESETS + CUSTOM + FIXED


# ------------------------------------------------------------------------------------------------
# A float64 reference rounding, written from the definitions with numpy arithmetic.


def ref_round(x, fmt, how="nearest", container=np.float32):
  """Rounds float64 values to fmt: how = "nearest" (ties even), "down"/"up" (toward/away from 0).

  `container` is the dtype the result must fit (fixed point saturates at its largest value <=
  max_value, as documented)."""
  x = np.asarray(x, np.float64)
  with np.errstate(all="ignore"):
    ax = np.abs(x)
    if isinstance(fmt, FixedPoint):
      step = np.full_like(ax, 2.0 ** -fmt.fraction_bits)
    else:
      _, e = np.frexp(ax)
      e = np.where(ax > 0, e - 1, fmt.emin)  # ax in [2^e, 2^(e+1))
      if fmt.subnormals:
        t = np.maximum(e, fmt.emin) - fmt.mantissa_bits
      else:
        t = np.where(e >= fmt.emin, e - fmt.mantissa_bits, fmt.emin)
      step = np.ldexp(1.0, t.astype(np.int64))
    f = {"nearest": np.round, "down": np.floor, "up": np.ceil}[how]
    q = np.where(np.isfinite(ax), f(ax / step) * step, ax)
    if isinstance(fmt, FixedPoint):
      top = container(fmt.max_value)  # documented: saturate at the largest value <= max_value
      top = float(np.nextafter(top, container(0)) if float(top) > fmt.max_value else top)
      v = np.clip(np.where(x < 0, -q, q), fmt.min_value, top) + 0.0
      return np.where(np.isnan(x), np.nan, v)
    over = np.isfinite(ax) & (q > fmt.max_value)
    if fmt.overflow == "saturate":
      q = np.where(over, fmt.max_value, q)
    else:
      q = np.where(over, np.inf if fmt.has_inf else np.nan, q)
    if not fmt.has_inf:
      q = np.where(np.isinf(ax), np.nan, q)
    return np.copysign(q, x)


def same_bits(a, b):
  """Equal as float64 values, with NaN == NaN and the sign of zero compared."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def probe_values(n=20000, seed=0):
  """float32 values over all magnitudes plus specials and format boundaries/ties."""
  rng = np.random.default_rng(seed)
  mags = np.exp2(rng.uniform(-152, 129, n)) * rng.choice([-1, 1], n)
  special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 2.0 ** -149 * 3, 2.0 ** -126,
             448, 464, 470, 480, 65504, 65519, 65520, 57344, 61439, 61440, 3.3e38, 1.0 + 2 ** -8,
             1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 2.0 - 2 ** -14, 2.0, -2.0, 1.99997, 2 ** -24,
             2 ** -25, 3 * 2 ** -26, 0.5 ** 14 * 1.5, 0.00048828125, 0.0009765625 * 0.75]
  uniform = rng.uniform(-4, 4, n // 4)
  # 2^j * (1 + i/16): exact ties and grid points of every low-precision format at every exponent
  ties = (np.exp2(np.arange(-149, 128))[:, None] * (1 + np.arange(16) / 16)[None]).ravel()
  with np.errstate(over="ignore"):
    return np.concatenate([mags, special, uniform, ties, -ties[::7]]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Round to nearest.


@pytest.mark.parametrize("fmt,dtype", NATIVE, ids=[str(d) for _, d in NATIVE])
def test_round_nearest_equals_native_cast(fmt, dtype):
  x = probe_values()
  with np.errstate(over="ignore"):
    want = x.astype(dtype).astype(np.float32)
  got = np.asarray(ops.round_nearest(jnp.asarray(x), fmt))
  assert got.dtype == np.float32
  bad = ~same_bits(got, want)
  assert not bad.any(), (x[bad][:5], got[bad][:5], want[bad][:5])
  assert fmt.native_dtype == np.dtype(dtype)


@pytest.mark.parametrize("fmt", ALL, ids=str)
def test_round_nearest_equals_float64_reference(fmt):
  x = probe_values(8000, seed=1)
  got = np.asarray(ops.round_nearest(jnp.asarray(x), fmt))
  want = ref_round(x, fmt)
  bad = ~same_bits(got, want)
  assert not bad.any(), (x[bad][:5], got[bad][:5], want[bad][:5])
  if isinstance(fmt, FixedPoint):
    finite = got[np.isfinite(got)]
    assert np.all(finite * 2.0 ** fmt.fraction_bits == np.round(finite * 2.0 ** fmt.fraction_bits))


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("fmt", [FP8_E5M2, FP8_E4M3, FixedPoint(4, 8), FLOAT16, BFLOAT16,
                                 FloatFormat(5, 10, overflow="saturate"), FixedPoint(20, 4)],
                         ids=str)
def test_half_inputs_exhaustive(dtype, fmt):
  """Every bfloat16 / float16 bit pattern: result keeps x's dtype and equals the reference, with
  the documented clamp at the largest value representable in both fmt and x's dtype."""
  x = np.arange(1 << 16, dtype=np.uint16).view(dtype)
  got = np.asarray(ops.round_nearest(jnp.asarray(x), fmt))
  assert got.dtype == dtype
  with np.errstate(invalid="ignore"):
    x64 = x.astype(np.float64)
  finite = np.sort(x64[np.isfinite(x64) & (x64 > 0)])
  both = finite[same_bits(ref_round(finite, fmt), finite)]
  bound = both.max()
  want = ref_round(x64, fmt)
  over = np.isfinite(want) & (np.abs(want) > bound)
  if isinstance(fmt, FloatFormat) and fmt.overflow == "inf":
    fill = np.inf if fmt.has_inf else np.nan
  else:
    fill = bound
  lo = -bound if isinstance(fmt, FloatFormat) else max(fmt.min_value, -finite.max())
  want = np.where(over & (want > 0), fill,
                  np.where(over & (want < 0), -fill if fill == bound else -fill, want))
  want = np.where(over & (want < 0) & (fill == bound), lo, want)
  ok = same_bits(got.astype(np.float64), want)
  assert ok.all(), (x64[~ok][:5], got[~ok][:5], want[~ok][:5])


def test_float16_input_bfloat16_format_saturates_at_common_max():
  x = jnp.asarray([65504.0, -65504.0], jnp.float16)
  sat = dataclasses.replace(BFLOAT16, overflow="saturate")
  np.testing.assert_array_equal(np.asarray(ops.round_nearest(x, sat), np.float32), [65280, -65280])
  # 65536 overflows float16.
  assert np.isinf(np.asarray(ops.round_nearest(x, BFLOAT16), np.float32)).all()


def test_float64_input_matches_reference():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    x = np.exp2(rng.uniform(-160, 130, 5000)) * rng.choice([-1, 1], 5000)
    x = np.concatenate([x, [0.0, -0.0, np.inf, np.nan, 1 + 2 ** -40, 2.0 ** -150]])
    for fmt in [FLOAT32, FP16_WANG, FP8_E4M3, FixedPoint(8, 24)]:
      got = ops.round_nearest(jnp.asarray(x, jnp.float64), fmt)
      assert got.dtype == jnp.float64
      assert same_bits(np.asarray(got), ref_round(x, fmt, container=np.float64)).all(), fmt
      sr = ops.stochastic_round(jax.random.key(0), jnp.asarray(x), fmt)
      lo, hi = (ref_round(x, fmt, how, container=np.float64) for how in ("down", "up"))
      assert (same_bits(np.asarray(sr), lo) | same_bits(np.asarray(sr), hi)).all(), fmt


# ------------------------------------------------------------------------------------------------
# Stochastic rounding.


@pytest.mark.parametrize("rng", ["hash", "jax"])
@pytest.mark.parametrize("fmt", ALL, ids=str)
def test_stochastic_round_gives_a_neighbour(fmt, rng):
  x = probe_values(4000, seed=4)
  got = np.asarray(ops.stochastic_round(jax.random.key(1), jnp.asarray(x), fmt, rng=rng))
  lo, hi = ref_round(x, fmt, "down"), ref_round(x, fmt, "up")
  ok = same_bits(got, lo) | same_bits(got, hi)
  assert ok.all(), (x[~ok][:5], got[~ok][:5], lo[~ok][:5], hi[~ok][:5])
  assert same_bits(ref_round(got, fmt), got).all()  # representable


@pytest.mark.parametrize("fmt", ALL, ids=str)
def test_representable_values_unchanged(fmt):
  grid = np.asarray(ops.round_nearest(jnp.asarray(probe_values(4000, seed=5)), fmt))
  for seed in range(3):
    got = np.asarray(ops.stochastic_round(jax.random.key(seed), jnp.asarray(grid), fmt))
    assert same_bits(got, grid).all()
  assert bool(jnp.all(ops.is_representable(jnp.asarray(grid), fmt) | np.isnan(grid)))


_N_SR = 40000


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(
    fmt=st.sampled_from([FP8_E5M2, FP8_E4M3, BFLOAT16, FixedPoint(4, 6), FP16_WANG,
                         FloatFormat(5, 10, subnormals=False)]),
    x=st.floats(-200.0, 200.0, width=32) | st.floats(-2.0 ** -17, 2.0 ** -17, width=32),
    seed=st.integers(0, 2 ** 31 - 1), rng=st.sampled_from(["hash", "jax"]))
def test_stochastic_round_unbiased(fmt, x, seed, rng):
  """E[SR(x)] = x. z-test with 5 sigma: false-failure rate < 6e-7 per example (normal approx.),
  < 2e-5 for the 25 examples; a rounding biased by 1% of a grid step fails for sure."""
  lo, hi = float(ref_round(x, fmt, "down")), float(ref_round(x, fmt, "up"))
  if lo == hi:
    hypothesis.assume(False)
  xs = jnp.full((_N_SR,), x, jnp.float32)
  y = np.asarray(ops.stochastic_round(jax.random.key(seed), xs, fmt, rng=rng), np.float64)
  assert set(np.unique(y)) <= {lo, hi}
  step = abs(hi - lo)
  p = (abs(x) - min(abs(lo), abs(hi))) / step
  sigma = step * np.sqrt(max(p * (1 - p), 1.0 / _N_SR) / _N_SR)
  assert abs(y.mean() - float(np.float32(x))) <= 5 * sigma + 1e-12 * step, (y.mean(), x, sigma)


def test_wang_weight_update_calibration():
  """10,000 updates of 1e-4 to a weight of 1.0 in FP16 1-6-9: nearest stays 1, SR reaches ~2."""
  key = jax.random.key(7)

  def body(i, ws):
    w_sr, w_rn = ws
    return (ops.stochastic_round(jax.random.fold_in(key, i), w_sr + 1e-4, FP16_WANG),
            ops.round_nearest(w_rn + 1e-4, FP16_WANG))

  w_sr, w_rn = jax.jit(
      lambda: jax.lax.fori_loop(0, 10000, body, (jnp.float32(1), jnp.float32(1))))()
  assert float(w_rn) == 1.0
  assert abs(float(w_sr) - 2.0) < 0.25  # std of the SR random walk is about 0.05


def test_key_determinism():
  x = jax.random.uniform(jax.random.key(0), (4096,), minval=-3, maxval=3)
  for rng in ["hash", "jax"]:
    a = ops.stochastic_round(jax.random.key(1), x, FP8_E5M2, rng=rng)
    b = ops.stochastic_round(jax.random.key(1), x, FP8_E5M2, rng=rng)
    c = ops.stochastic_round(jax.random.key(2), x, FP8_E5M2, rng=rng)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.mean(a != c)) > 0.2
  raw = ops.stochastic_round(jax.random.PRNGKey(1), x, FP8_E5M2)  # legacy raw keys work too
  assert raw.shape == x.shape


def test_hash_bits_statistics():
  """Uniformity of each bit, no correlation between neighbours or between consecutive keys.

  n = 2^18 draws: the standard error of a correlation is 2e-3, of a bit mean 1e-3; thresholds of
  6 standard errors give a false-failure rate below 1e-8 per check.
  """
  n = 1 << 18
  key = jax.random.key(11)
  s0, s1 = random_bits.key_words(key)
  a = np.asarray(random_bits.hash_bits32(s0, s1, (n,)), np.uint64)
  t0, t1 = random_bits.key_words(jax.random.fold_in(key, 1))
  b = np.asarray(random_bits.hash_bits32(t0, t1, (n,)), np.uint64)
  bits = (a[:, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)
  assert np.abs(bits.mean(0) - 0.5).max() < 6e-3
  u, v = a / 2.0 ** 32, b / 2.0 ** 32
  assert abs(u.mean() - 0.5) < 6 * 0.29 / np.sqrt(n)
  for lag in (1, 2, 3, 64, 4096):
    assert abs(np.corrcoef(u[:-lag], u[lag:])[0, 1]) < 1.2e-2
  assert abs(np.corrcoef(u, v)[0, 1]) < 1.2e-2
  for shift in (1, 7, 1000):  # no shifted copy of the stream under a new key
    assert abs(np.corrcoef(u[shift:], v[:-shift])[0, 1]) < 1.2e-2
  assert len(np.unique(a)) > 0.99 * n
  for byte in (a >> np.uint64(24), a & np.uint64(255)):  # chi-square of the top and bottom bytes
    counts = np.bincount(byte.astype(np.int64), minlength=256)
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert chi2 < 400  # 255 dof: P(chi2 > 400) < 1e-8


# ------------------------------------------------------------------------------------------------
# Special values.


def test_saturation():
  fx = FixedPoint(2, 14)
  x = jnp.asarray([5.0, -5.0, 2.0, -2.0, 1.99999, np.inf, -np.inf, 1e30])
  np.testing.assert_array_equal(ops.round_nearest(x, fx),
                                [fx.max_value, -2, fx.max_value, -2, fx.max_value, fx.max_value, -2,
                                 fx.max_value])
  assert fx.max_value == 2 - 2 ** -14
  sr = ops.stochastic_round(jax.random.key(0), jnp.full((1000,), 1.99999), fx)
  assert float(sr.max()) <= fx.max_value
  sat = FloatFormat(5, 2, overflow="saturate")
  np.testing.assert_array_equal(ops.round_nearest(jnp.asarray([1e6, -1e6, 61440.0]), sat),
                                [57344, -57344, 57344])
  np.testing.assert_array_equal(ops.round_nearest(jnp.asarray([1e6, -1e6]), FP8_E5M2),
                                [np.inf, -np.inf])
  assert np.isnan(np.asarray(ops.round_nearest(jnp.asarray([1e6, 470.0]), FP8_E4M3))).all()
  assert float(ops.round_nearest(jnp.asarray(464.0), FP8_E4M3)) == 448
  wide = FixedPoint(2, 30)  # 32-bit word: its max is not a float32; saturate at the largest one
  assert float(ops.round_nearest(jnp.asarray(9.0), wide)) == float(np.float32(2 - 2 ** -23))


def test_nan_inf_negative_zero():
  for fmt in PRESETS + CUSTOM:
    x = jnp.asarray([np.nan, np.inf, -np.inf, -0.0, 0.0, -fmt.smallest_step / 4])
    y = np.asarray(ops.round_nearest(x, fmt))
    assert np.isnan(y[0])
    if fmt.has_inf:
      assert y[1] == np.inf and y[2] == -np.inf
    else:
      assert np.isnan(y[1:3]).all()
    assert y[3] == 0 and np.signbit(y[3]) and not np.signbit(y[4])
    assert y[5] == 0 and np.signbit(y[5])  # -tiny rounds to -0.0 as IEEE casts do
    s = np.asarray(ops.stochastic_round(jax.random.key(0), x, fmt))
    assert np.isnan(s[0]) and np.signbit(s[3])
  x = jnp.asarray([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-3])
  y = np.asarray(ops.round_nearest(x, FixedPoint(4, 4)))
  assert np.isnan(y[0]) and y[1] == 8 - 2 ** -4 and y[2] == -8
  assert not np.signbit(y[3]) and not np.signbit(y[5])  # two's complement has one zero


def test_subnormals():
  f16 = np.asarray([2 ** -24, 3 * 2 ** -25, 2 ** -25, 2 ** -26, 2 ** -14 - 2 ** -24], np.float32)
  np.testing.assert_array_equal(ops.round_nearest(jnp.asarray(f16), FLOAT16),
                                f16.astype(np.float16).astype(np.float32))
  ftz = FloatFormat(5, 10, subnormals=False)
  got = ops.round_nearest(jnp.asarray([2 ** -15, 2 ** -15 * 1.01, 2 ** -16, 2 ** -14 * 0.9]), ftz)
  np.testing.assert_array_equal(got, [0, 2 ** -14, 0, 2 ** -14])
  # stochastic rounding below the smallest normal stays unbiased without subnormals
  y = ops.stochastic_round(jax.random.key(3), jnp.full((100000,), 2 ** -16, jnp.float32), ftz)
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 2 ** -14}
  assert abs(float(jnp.mean(y)) / 2 ** -16 - 1) < 0.03
  # far below the smallest step (d > 32): still rounds up with about the right probability
  tiny = FloatFormat(5, 2)
  v = tiny.smallest_step * 2 ** -6
  y = ops.stochastic_round(jax.random.key(4), jnp.full((200000,), v, jnp.float32), tiny)
  assert abs(float(jnp.mean(y)) / v - 1) < 0.2


# ------------------------------------------------------------------------------------------------
# Gradients.


def test_straight_through_gradients():
  x = jnp.linspace(-3, 3, 17)
  w = jnp.arange(17.0)
  for f in (lambda x: ops.round_nearest(x, FP8_E4M3),
            lambda x: ops.stochastic_round(jax.random.key(0), x, FixedPoint(2, 2)),
            lambda x: ops.quantize(x, FP8_E5M2, "stochastic", key=jax.random.key(1))):
    g = jax.grad(lambda x: jnp.sum(f(x) * w))(x)
    np.testing.assert_array_equal(g, w)
    _, t = jax.jvp(f, (x,), (w,))
    np.testing.assert_array_equal(t, w)


def test_quantize_grad_rounds_the_cotangent():
  x = jnp.linspace(-1, 1, 33)
  g = jnp.linspace(-0.37, 0.91, 33) * 1.234567
  y, vjp = jax.vjp(lambda x: ops.quantize_grad(x, FP8_E5M2), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(g)[0], ops.round_nearest(g, FP8_E5M2))
  key = jax.random.key(5)
  _, vjp = jax.vjp(lambda x: ops.quantize_grad(x, FixedPoint(2, 4), "stochastic", key=key), x)
  gq = np.asarray(vjp(g)[0])
  lo = ref_round(np.asarray(g), FixedPoint(2, 4), "down")
  hi = ref_round(np.asarray(g), FixedPoint(2, 4), "up")
  assert (same_bits(gq, lo) | same_bits(gq, hi)).all()
  np.testing.assert_array_equal(gq, vjp(g)[0])  # deterministic given the key
  assert ops.quantize_grad(x, None) is x


def test_check_grads_float64():
  """check_grads cannot test an STE against finite differences of a step function, so it runs on
  the fine FLOAT32 grid where rounding is a 2^-24 relative perturbation (eps 1e-3, tol 1e-3); it
  verifies the custom_jvp/custom_vjp wiring (identity Jacobian, cotangent passed through)."""
  with jax.enable_x64(True):
    x = jnp.linspace(-2.0, 3.0, 7, dtype=jnp.float64) + 0.1234
    f = lambda x: jnp.sin(ops.quantize(x, FLOAT32)) * ops.quantize_grad(x ** 2, FLOAT32)
    check_grads(f, (x,), order=1, modes=["rev"], eps=1e-3, atol=1e-3, rtol=1e-3)
    # STE reference in float64: d/dx = cos(q) * x^2 + round32(sin(q)) * 2x with q = round32(x).
    xn = np.asarray(x)
    q = xn.astype(np.float32).astype(np.float64)
    want = np.cos(q) * xn ** 2 + np.sin(q).astype(np.float32).astype(np.float64) * 2 * xn
    np.testing.assert_allclose(jax.grad(lambda x: f(x).sum())(x), want, rtol=1e-13)


# ------------------------------------------------------------------------------------------------
# Helpers and bad input.


def test_to_native_and_tree():
  x = jnp.asarray([0.1, 300.0, -2.5e-3])
  for fmt, dtype in NATIVE:
    y = ops.to_native(x, fmt)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), ops.round_nearest(x, fmt))
  with pytest.raises(ValueError, match="no native dtype"):
    ops.to_native(x, FP16_WANG)
  tree = {"w": jnp.full((3,), 0.1), "step": jnp.asarray(3), "b": jnp.full((2,), 0.3)}
  out = ops.quantize_tree(tree, lambda path, leaf: None if path[-1].key == "b" else FP8_E5M2)
  np.testing.assert_array_equal(out["w"], ops.round_nearest(tree["w"], FP8_E5M2))
  assert out["b"] is tree["b"] and out["step"] is tree["step"]
  out = ops.quantize_tree(tree, FixedPoint(2, 2), "stochastic", key=jax.random.key(0))
  assert set(np.unique(np.asarray(out["w"]))) <= {0.0, 0.25}


def test_format_properties():
  assert FP8_E4M3.max_value == 448 and FP8_E5M2.max_value == 57344 and FLOAT16.max_value == 65504
  assert FP16_WANG.emin == -30 and FP16_WANG.precision == 10
  assert FLOAT32.max_value == float(np.finfo(np.float32).max)
  assert FLOAT32.smallest_step == 2.0 ** -149
  assert FixedPoint(2, 14).min_value == -2 and FixedPoint(2, 14).word_bits == 16
  assert FP16_WANG.native_dtype is None and FloatFormat(8, 7) == BFLOAT16
  assert hash(FloatFormat(8, 7)) == hash(BFLOAT16)


def test_bad_input():
  with pytest.raises(ValueError, match="wider than 32 bits"):
    FixedPoint(20, 20)
  with pytest.raises(ValueError, match="fraction_bits must be in"):
    FixedPoint(4, -1)
  with pytest.raises(ValueError, match="integer_bits must be in"):
    FixedPoint(0, 8)
  with pytest.raises(TypeError, match="integer_bits must be an int"):
    FixedPoint(2.0, 8)
  with pytest.raises(ValueError, match="exponent_bits must be in"):
    FloatFormat(9, 3)
  with pytest.raises(ValueError, match="mantissa_bits must be in"):
    FloatFormat(8, 24)
  with pytest.raises(ValueError, match="cannot be represented in float32"):
    FloatFormat(8, 7, bias=100)
  with pytest.raises(ValueError, match="cannot be represented in float32"):
    FloatFormat(8, 7, bias=150)
  with pytest.raises(ValueError, match="overflow must be one of"):
    FloatFormat(5, 2, overflow="wrap")
  with pytest.raises(TypeError, match="x must be a float32"):
    ops.round_nearest(jnp.arange(4), FP8_E5M2)
  with pytest.raises(TypeError, match="fmt must be a FixedPoint or FloatFormat"):
    ops.round_nearest(jnp.ones(3), "fp8")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    ops.stochastic_round(None, jnp.ones(3), FP8_E5M2)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    ops.quantize(jnp.ones(3), FP8_E5M2, "stochastic")
  with pytest.raises(TypeError, match="key must be"):
    ops.stochastic_round(jnp.ones(2), jnp.ones(3), FP8_E5M2)
  with pytest.raises(ValueError, match="mode must be one of"):
    ops.quantize(jnp.ones(3), FP8_E5M2, "floor")
  with pytest.raises(ValueError, match="rng must be one of"):
    ops.stochastic_round(jax.random.key(0), jnp.ones(3), FP8_E5M2, rng="numpy")
