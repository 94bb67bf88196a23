"""Tests of low-precision training: chunked accumulation, quantised layers, optimizer wrapper."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops
from fastnets.ops import (
  FLOAT32,
  FP8_E4M3,
  FP8_E5M2,
  FP16_WANG,
  FixedPoint,
  QuantConfig,
)


def ref_round64(x, fmt):
  """Float64 reference round-to-nearest-even for FloatFormat (subnormals, overflow -> inf)."""
  x = np.asarray(x, np.float64)
  ax = np.abs(x)
  _, e = np.frexp(ax)
  e = np.where(ax > 0, e - 1, fmt.emin)
  step = np.ldexp(1.0, (np.maximum(e, fmt.emin) - fmt.mantissa_bits).astype(np.int64))
  q = np.round(ax / step) * step
  q = np.where(q > fmt.max_value, np.inf, q)
  return np.copysign(q, x)


def ref_chunked_dot(a, b, fmt, chunk):
  """Float64 simulation with explicit Python loops in the documented accumulation order."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  m, k = a.shape
  out = np.zeros((m, b.shape[1]))
  chunk = k if chunk is None else chunk
  for i in range(m):
    for j in range(b.shape[1]):
      total = 0.0
      for start in range(0, k, chunk):
        s = 0.0
        for t in range(start, min(start + chunk, k)):
          s = float(ref_round64(s + float(ref_round64(a[i, t] * b[t, j], fmt)), fmt))
        total = float(ref_round64(total + s, fmt)) if start else s
      out[i, j] = total
  return out


def fp8(shape, seed, scale=1.0):
  x = jax.random.normal(jax.random.key(seed), shape) * scale
  return ops.round_nearest(x, FP8_E5M2)


# ------------------------------------------------------------------------------------------------
# chunked_dot


@pytest.mark.parametrize("chunk", [None, 16, 64])
def test_chunked_dot_matches_float64_simulation(chunk):
  a, b = fp8((3, 150), 0, 4.0), fp8((150, 4), 1, 4.0)
  got = np.asarray(ops.chunked_dot(a, b, FP16_WANG, chunk), np.float64)
  want = ref_chunked_dot(a, b, FP16_WANG, chunk)
  np.testing.assert_array_equal(got, want)
  assert np.abs(got - np.asarray(a, np.float64) @ np.asarray(b, np.float64)).max() > 0  # it rounds


def test_wang_chunked_accumulation_calibration():
  """Sum of 4096 values in [0, 1) with a 9-bit-mantissa accumulator: naive swamping loses about
  half of the sum (Wang: 50%), chunks of 64 keep it within 0.15% (we require < 0.5%)."""
  vals = ops.round_nearest(jax.random.uniform(jax.random.key(2), (4096, 1)), FP8_E5M2)
  exact = float(np.sum(np.asarray(vals, np.float64)))
  ones = jnp.ones((1, 4096))
  naive = float(ops.chunked_dot(ones, vals, FP16_WANG, None)[0, 0])
  chunked = float(ops.chunked_dot(ones, vals, FP16_WANG, 64)[0, 0])
  assert abs(naive - exact) / exact > 0.3
  assert abs(chunked - exact) / exact < 5e-3


def test_chunked_dot_general_batch_dims_and_none():
  lhs, rhs = fp8((2, 3, 40), 3), fp8((2, 40, 5), 4)
  dims = (((2,), (1,)), ((0,), (0,)))
  got = ops.chunked_dot_general(lhs, rhs, dims, acc_fmt=FLOAT32, chunk=8)
  want = lax.dot_general(lhs, rhs, dims, precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got = ops.chunked_dot_general(lhs, rhs, dims, acc_fmt=FP16_WANG, chunk=8)
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
  np.testing.assert_array_equal(ops.chunked_dot_general(lhs, rhs, dims, acc_fmt=None), want)
  x = fp8((4, 7, 40), 5)  # leading dims of chunked_dot
  np.testing.assert_allclose(ops.chunked_dot(x, rhs[0], FLOAT32, 16),
                             jnp.einsum("abk,kn->abn", x, rhs[0], precision="highest"),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dn,stride,padding,dil", [
    (("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1)),
    (("NCHW", "OIHW", "NCHW"), (2, 1), ((1, 0), (2, 1)), (1, 2)),
])
def test_chunked_conv_matches_lax_conv(dn, stride, padding, dil):
  if dn[0] == "NHWC":
    x, w = fp8((2, 7, 6, 3), 6), fp8((3, 3, 3, 5), 7)
  else:
    x, w = fp8((2, 3, 7, 6), 6), fp8((5, 3, 3, 3), 7)
  want = lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dil, dimension_numbers=dn,
                                  precision=lax.Precision.HIGHEST)
  got = ops.chunked_conv_general_dilated(x, w, stride, padding, rhs_dilation=dil,
                                         dimension_numbers=dn, acc_fmt=FLOAT32, chunk=4)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  low = ops.chunked_conv_general_dilated(x, w, stride, padding, rhs_dilation=dil,
                                         dimension_numbers=dn, acc_fmt=FP16_WANG, chunk=4)
  assert bool(jnp.all(ops.is_representable(low, FP16_WANG)))
  np.testing.assert_allclose(low, want, rtol=2e-2, atol=3e-2)


def test_chunked_dot_gradients():
  a, b = fp8((3, 20), 8), fp8((20, 4), 9)
  g = fp8((3, 4), 10)
  _, vjp = jax.vjp(lambda a, b: ops.chunked_dot(a, b, FP16_WANG, 8), a, b)
  da, db = vjp(g)
  np.testing.assert_array_equal(da, ops.chunked_dot(g, b.T, FP16_WANG, 8))  # same accumulation
  np.testing.assert_array_equal(db, ops.chunked_dot(a.T, g, FP16_WANG, 8))
  np.testing.assert_allclose(da, g @ b.T, rtol=2e-2, atol=2e-2)  # close to the exact gradient
  with jax.enable_x64(True):
    a64 = jax.random.normal(jax.random.key(0), (3, 10), jnp.float64)
    b64 = jax.random.normal(jax.random.key(1), (10, 2), jnp.float64)
    f = lambda a, b: jnp.tanh(ops.chunked_dot(a, b, FLOAT32, 4))
    check_grads(f, (a64, b64), order=1, modes=["rev"], eps=1e-3, atol=1e-3, rtol=1e-3)
    ga = jax.grad(lambda a: f(a, b64).sum())(a64)
    gref = jax.grad(lambda a: jnp.tanh(a @ b64).sum())(a64)
    np.testing.assert_allclose(ga, gref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Quantised layers


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(8, name="hidden")(x))
    return nn.Dense(3, name="out")(x)


def _setup():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
  params = Net().init(jax.random.key(1), x)
  return x, params


def test_quantized_dot_general_forward_and_gradients():
  cfg = QuantConfig(weights=FP8_E4M3, activations=FP8_E4M3, gradients=FP8_E5M2)
  x, w = jax.random.normal(jax.random.key(0), (4, 6)), jax.random.normal(jax.random.key(1), (6, 3))
  dot = ops.quantized_dot_general(cfg)
  dims = (((1,), (0,)), ((), ()))
  y = dot(x, w, dims)
  np.testing.assert_array_equal(y, ops.round_nearest(x, FP8_E4M3) @ ops.round_nearest(w, FP8_E4M3))
  gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.sin(dot(x, w, dims))), argnums=(0, 1))(x, w)
  assert bool(jnp.all(ops.is_representable(gx, FP8_E5M2)))
  assert bool(jnp.all(ops.is_representable(gw, FP8_E5M2)))
  gy = ops.round_nearest(jnp.cos(y), FP8_E5M2)
  np.testing.assert_array_equal(
      gw, ops.round_nearest(ops.round_nearest(x, FP8_E4M3).T @ gy, FP8_E5M2))


def test_interceptor_quantises_a_model():
  x, params = _setup()
  cfg = QuantConfig(weights=FP8_E4M3, activations=FP8_E4M3)
  with fnn.quantized(cfg):
    y = Net().apply(params, x)
  # Same as the float model applied to rounded kernels, with each layer's input rounded.
  qp = jax.tree_util.tree_map_with_path(
      lambda p, v: ops.round_nearest(v, FP8_E4M3) if p[-1].key == "kernel" else v, params)

  class Manual(nn.Module):
    @nn.compact
    def __call__(self, x):
      r = lambda v: ops.round_nearest(v, FP8_E4M3)
      x = nn.relu(nn.Conv(4, (3, 3), name="conv")(r(x)))
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(nn.Dense(8, name="hidden")(r(x)))
      return nn.Dense(3, name="out")(r(x))

  np.testing.assert_allclose(y, Manual().apply(qp, x), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(y - Net().apply(params, x))).max() > 1e-4
  # init under the interceptor creates the same parameter tree
  with fnn.quantized(cfg):
    p2 = Net().init(jax.random.key(1), x)
  assert jax.tree.structure(p2) == jax.tree.structure(params)
  np.testing.assert_array_equal(p2["params"]["out"]["kernel"], params["params"]["out"]["kernel"])
  # accumulation: same as the model built with the chunked functions as Flax attributes
  with fnn.quantized(QuantConfig(accumulation=FP16_WANG, chunk=8)):
    y_acc = Net().apply(params, x)
  dot = functools.partial(ops.chunked_dot_general, acc_fmt=FP16_WANG, chunk=8)
  conv = functools.partial(ops.chunked_conv_general_dilated, acc_fmt=FP16_WANG, chunk=8)

  class Chunked(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), name="conv", conv_general_dilated=conv)(x))
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(nn.Dense(8, name="hidden", dot_general=dot)(x))
      return nn.Dense(3, name="out", dot_general=dot)(x)

  np.testing.assert_array_equal(y_acc, Chunked().apply(params, x))
  np.testing.assert_allclose(y_acc, Net().apply(params, x), rtol=3e-2, atol=3e-2)


def test_interceptor_stochastic_keys_jit_and_select():
  x, params = _setup()
  cfg = QuantConfig(weights=FixedPoint(2, 6), activations=FixedPoint(4, 4),
                    gradients=FixedPoint(4, 10), mode="stochastic", grad_mode="stochastic")

  @jax.jit
  def loss(params, key):
    with fnn.quantized(cfg, key):
      return jnp.sum(Net().apply(params, x) ** 2)

  a, b = loss(params, jax.random.key(1)), loss(params, jax.random.key(1))
  c = loss(params, jax.random.key(2))
  assert float(a) == float(b) and float(a) != float(c)
  grads = jax.jit(jax.grad(loss))(params, jax.random.key(3))
  for leaf in (grads["params"]["hidden"]["kernel"], grads["params"]["conv"]["kernel"]):
    assert bool(jnp.all(ops.is_representable(leaf, FixedPoint(4, 10))))
  # the Linen rng stream instead of an explicit key
  with fnn.quantized(cfg):
    y1 = Net().apply(params, x, rngs={"quantize": jax.random.key(5)})
    y2 = Net().apply(params, x, rngs={"quantize": jax.random.key(5)})
  np.testing.assert_array_equal(y1, y2)
  with pytest.raises(ValueError, match="no key was given"):
    with fnn.quantized(cfg):
      Net().apply(params, x)
  # select: keep the first and last layers in float32 (Wang) -> only "hidden" is quantised
  seen = []

  def select(m):
    seen.append(m.name)
    return None if m.name in ("conv", "out") else QuantConfig(weights=FP8_E5M2)

  with fnn.quantized(cfg, jax.random.key(0), select=select):
    y = Net().apply(params, x)
  assert sorted(seen) == ["conv", "hidden", "out"]
  ph = jax.tree_util.tree_map_with_path(
      lambda p, v: ops.round_nearest(v, FP8_E5M2) if p[-2].key == "hidden" and p[-1].key == "kernel"
      else v, params)
  np.testing.assert_allclose(y, Net().apply(ph, x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Optimizer wrapper


def _regression(steps, tx_fn, fmt, lr=0.05, seed=0):
  rng = np.random.default_rng(seed)
  xs = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
  ys = xs @ jnp.asarray([0.5, -0.25, 0.125, 1.0, -0.75])
  params = ops.quantize_tree({"w": jnp.zeros(5), "b": jnp.zeros(())}, fmt)
  tx = tx_fn(optax.sgd(lr))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.mean((xs @ p["w"] + p["b"] - ys) ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for _ in range(steps):
    params, state = step(params, state)
    history.append(params)
  return params, state, history


def test_low_precision_updates_keep_params_representable_and_learn():
  fmt = FixedPoint(2, 8)
  wrap = functools.partial(ops.low_precision_updates, fmt=fmt, mode="stochastic",
                           key=jax.random.key(0))
  params, state, history = _regression(60, wrap, fmt)
  for p in history:
    for leaf in jax.tree.leaves(p):
      assert bool(jnp.all(ops.is_representable(leaf, fmt)))
  p_f32, _, _ = _regression(60, lambda tx: tx, None)
  np.testing.assert_allclose(params["w"], p_f32["w"], atol=0.02)  # SR tracks float32 (step 1/256)
  assert int(state[1].count) == 60
  again, _, _ = _regression(60, wrap, fmt)  # same key, same trajectory
  np.testing.assert_array_equal(again["w"], params["w"])


def test_nearest_rounds_small_updates_away_stochastic_does_not():
  """Gupta's finding in miniature: updates below half a grid step vanish with round-to-nearest."""
  fmt = FixedPoint(4, 6)  # step 1/64; lr 1e-3 makes every update smaller than 1/128
  near = functools.partial(ops.low_precision_updates, fmt=fmt, mode="nearest")
  sto = functools.partial(ops.low_precision_updates, fmt=fmt, mode="stochastic",
                          key=jax.random.key(1))
  p_near, _, _ = _regression(150, near, fmt, lr=1e-3)
  p_sto, _, _ = _regression(150, sto, fmt, lr=1e-3)
  p_f32, _, _ = _regression(150, lambda tx: tx, None, lr=1e-3)
  assert float(jnp.abs(p_near["w"]).max()) == 0.0
  np.testing.assert_allclose(p_sto["w"], p_f32["w"], atol=0.08)
  assert float(jnp.abs(p_sto["w"]).max()) > 0.1


def test_apply_updates_low_precision_and_bad_input():
  params = {"w": jnp.asarray([1.0, 0.0, -3.0]), "n": jnp.asarray([2.0])}
  updates = {"w": jnp.asarray([1e-4, 2.0 ** 20, 1e-9]), "n": jnp.asarray([0.1])}
  fmt = lambda path, leaf: None if path[-1].key == "n" else FP16_WANG
  new = ops.apply_updates_low_precision(params, updates, fmt, key=jax.random.key(0))
  assert bool(jnp.all(ops.is_representable(new["w"], FP16_WANG)))
  np.testing.assert_array_equal(new["n"], params["n"] + updates["n"])
  assert float(new["w"][1]) == 2.0 ** 20
  with pytest.raises(TypeError, match="jax.random.key"):  # A seed is not a key.
    ops.round_to_format(FP16_WANG, key=0)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    ops.round_to_format(FP16_WANG)
  tx = ops.round_to_format(FP16_WANG, mode="nearest")
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(updates, tx.init(params))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    ops.apply_updates_low_precision(params, updates, FP16_WANG)
  with pytest.raises(TypeError, match="must be an optax.GradientTransformation"):
    ops.low_precision_updates("sgd", FP16_WANG)
  with pytest.raises(TypeError, match="weights must be a FixedPoint"):
    QuantConfig(weights="fp8")
  with pytest.raises(ValueError, match="mode must be one of"):
    QuantConfig(mode="up")
  with pytest.raises(ValueError, match="chunk must be a positive int"):
    QuantConfig(chunk=0)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    ops.quantized_dot_general(QuantConfig(weights=FP8_E5M2, mode="stochastic"))
  with pytest.raises(ValueError, match="expected a of shape"):
    ops.chunked_dot(jnp.ones((2, 3)), jnp.ones((4, 2)), FP16_WANG)
  with pytest.raises(TypeError, match="must be a float32"):
    ops.chunked_dot(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2)), FP16_WANG)
  with pytest.raises(ValueError, match="feature_group_count=1"):
    ops.chunked_conv_general_dilated(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=2, acc_fmt=FP16_WANG)
  with pytest.raises(TypeError, match="config must be a QuantConfig"):
    with fnn.quantized({"weights": FP8_E5M2}):
      pass


def test_scale_grad_scales_the_cotangent_only():
  x = {"a": jnp.arange(3.0), "b": jnp.ones((2,), jnp.float16)}
  f = lambda t: jnp.sum(t["a"] ** 2) + jnp.sum(t["b"].astype(jnp.float32))
  out = ops.scale_grad(x, jnp.float32(8.0))
  assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), out, x))
  g = jax.grad(lambda t: f(ops.scale_grad(t, jnp.float32(8.0))))(x)
  np.testing.assert_array_equal(g["a"], 8.0 * 2 * np.arange(3.0))
  assert g["b"].dtype == jnp.float16 and np.all(np.asarray(g["b"], np.float32) == 8.0)
  # Scaling the logits by s and the parameters by 1/s leaves the parameter gradient unchanged.
  w = jnp.array([0.5, -1.5])
  loss = lambda w, s: jnp.sum(ops.scale_grad(ops.scale_grad(w, 1 / s) * 3.0, s) ** 2)
  np.testing.assert_array_equal(jax.grad(loss)(w, jnp.float32(1024.0)),
                                jax.grad(lambda w: jnp.sum((w * 3.0) ** 2))(w))
  with pytest.raises(ValueError, match="scale"):
    ops.scale_grad(x, jnp.ones(2))
