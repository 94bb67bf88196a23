"""K-TanH (bit-exact against an integer re-implementation written here), ABC-Net bases and
activations (against least squares and their definitions), packed XNOR + popcount products
(against float products of +-1 vectors), ABC layers and models on the packed path (identical to
the float evaluation, under jit, on 4 forced host devices), and bad input."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import models, ops
from fastnets import nn as fnn
from tests.conftest import run_python

# The table again, typed in independently of fastnets.ops.binary (Kundu et al. 2019).
LUT = [(126, 2, 119), (126, 4, 122), (126, 4, 123), (126, 4, 123), (126, 6, 126), (126, 6, 126),
       (126, 6, 126), (126, 6, 126), (125, 1, 1), (125, 0, -4), (125, 0, -6), (125, 0, -7),
       (125, 0, -10), (125, 0, -12), (125, 0, -15), (125, 0, -18), (125, 0, 112), (126, 1, -4),
       (126, 1, -1), (126, 1, 2), (126, 1, 3), (126, 1, 4), (126, 1, 4), (126, 1, 4),
       (126, 0, 65), (126, 1, 72), (126, 1, 73), (126, 1, 73), (126, 2, 88), (126, 2, 89),
       (126, 2, 89), (126, 4, 110)]


def ktanh_bf16_reference(h: int) -> int:
  """K-TanH on one bfloat16 bit pattern (16-bit int), step by step as the paper describes."""
  sign, exponent, mantissa = h >> 15, (h >> 7) & 0xFF, h & 0x7F
  value = float(np.array([h], np.uint16).view(ml_dtypes.bfloat16)[0])
  if np.isnan(value):
    return h
  if abs(value) < 0.25:
    return h
  if abs(value) > 3.75:
    return (sign << 15) | 0x3F80
  t = ((exponent & 0x3) << 3) | (mantissa >> 4)
  e_t, r_t, b_t = LUT[t]
  out_mantissa = (mantissa >> r_t) + b_t
  assert 0 <= out_mantissa < 128
  return (sign << 15) | (e_t << 7) | out_mantissa


def all_bf16_in(lo: float, hi: float) -> np.ndarray:
  patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  values = patterns.view(ml_dtypes.bfloat16).astype(np.float32)
  keep = np.isfinite(values) & (values >= lo) & (values <= hi)
  return patterns[keep]


def test_ktanh_reference_values_exact():
  x = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
  want = np.array([0.46875, 0.75390625, 0.96484375, 0.99609375], np.float32)
  for dtype in (jnp.float32, jnp.bfloat16):
    got = ops.ktanh(jnp.asarray(x, dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    np.testing.assert_array_equal(np.asarray(ops.ktanh(jnp.asarray(-x, dtype)), np.float32),
                                  -want)


def test_ktanh_bit_exact_on_every_bf16_in_range():
  patterns = all_bf16_in(-8.0, 8.0)
  want = np.array([ktanh_bf16_reference(int(h)) for h in patterns], np.uint16)
  x = jnp.asarray(patterns.view(ml_dtypes.bfloat16))
  got = np.asarray(jax.jit(ops.ktanh)(x)).view(np.uint16)
  np.testing.assert_array_equal(got, want)
  # The same inputs as float32 give the same values (bfloat16 inputs have zero low bits).
  got32 = np.asarray(ops.ktanh(x.astype(jnp.float32))).view(np.uint32)
  np.testing.assert_array_equal(got32, want.astype(np.uint32) << 16)
  err = np.max(np.abs(want.view(ml_dtypes.bfloat16).astype(np.float64)
                      - np.tanh(np.asarray(x, np.float64))))
  assert err <= 0.0090, err


def test_ktanh_float32_reads_its_own_bits_without_rounding():
  rng = np.random.default_rng(0)
  x = rng.uniform(-5, 5, 4000).astype(np.float32)
  bits = x.view(np.uint32)
  want = []
  for b, v in zip(bits, x):
    if abs(v) < 0.25:
      want.append(int(b))
    elif abs(v) > 3.75:  # the thresholds compare the float32 value itself
      want.append((int(b) & 0x80000000) | 0x3F800000)
    else:  # index and mantissa are the top 16 bits: truncation, not rounding
      want.append(ktanh_bf16_reference(int(b) >> 16) << 16)
  got = np.asarray(ops.ktanh(jnp.asarray(x))).view(np.uint32)
  np.testing.assert_array_equal(got, np.array(want, np.uint32))
  # Rounding to bfloat16 first would differ on some inputs: the test can tell the two apart.
  rounded = np.asarray(ops.ktanh(jnp.asarray(x).astype(jnp.bfloat16)), np.float32)
  assert np.any(rounded.view(np.uint32) != got)


def test_ktanh_odd_special_values_and_dtypes():
  patterns = all_bf16_in(-8.0, 8.0)
  x = jnp.asarray(patterns.view(ml_dtypes.bfloat16))
  pos, neg = np.asarray(ops.ktanh(x)), np.asarray(ops.ktanh(-x))
  np.testing.assert_array_equal(pos.view(np.uint16) ^ np.uint16(0x8000), neg.view(np.uint16))
  special = jnp.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30], jnp.float32)
  got = np.asarray(ops.ktanh(special))
  assert np.isnan(got[0]) and got[1] == 1.0 and got[2] == -1.0
  np.testing.assert_array_equal(got[3:].view(np.uint32), np.asarray(special[3:]).view(np.uint32))
  for dtype in (jnp.float16, jnp.float64):
    with jax.enable_x64(dtype == jnp.float64):
      y = ops.ktanh(jnp.ones((3,), dtype))
      assert y.dtype == dtype and float(y[0]) == 0.75390625


def test_ktanh_jit_vmap_and_as_activation():
  x = jax.random.normal(jax.random.key(0), (4, 33)) * 2
  np.testing.assert_array_equal(jax.vmap(ops.ktanh)(x), ops.ktanh(x))
  np.testing.assert_array_equal(jax.jit(ops.ktanh)(x), ops.ktanh(x))
  cell = nn.LSTMCell(8, activation_fn=ops.ktanh)
  carry = cell.initialize_carry(jax.random.key(1), (4, 33))
  variables = jax.jit(cell.init)(jax.random.key(2), carry, x)
  (_, h), _ = jax.jit(cell.apply)(variables, carry, x)
  assert h.shape == (4, 8) and bool(jnp.all(jnp.isfinite(h)))


def test_ktanh_straight_through_gradient():
  x = jnp.linspace(-5, 5, 101, dtype=jnp.float32)
  g = jax.grad(lambda x: jnp.sum(jnp.sin(x) * ops.ktanh(x)))(x)
  y = ops.ktanh(x)
  np.testing.assert_allclose(g, jnp.cos(x) * y + jnp.sin(x) * (1 - y * y), rtol=1e-6, atol=1e-6)
  gb = jax.grad(lambda x: ops.ktanh(x).astype(jnp.float32).sum())(x.astype(jnp.bfloat16))
  assert gb.dtype == jnp.bfloat16
  with jax.enable_x64(True):
    # Finite differences see the true slope only where K-TanH is smooth: the identity range (slope
    # 1, the straight-through 1 - x^2 is within 4e-4 for |x| <= 0.02) and saturation (0 both).
    xs = jnp.array([-0.02, -0.011, 0.003, 0.017, -6.0, 4.5, 7.0], jnp.float64)
    check_grads(lambda x: ops.ktanh(x) * jnp.exp(x / 10), (xs,), order=1, modes=["rev"],
                eps=1e-4, atol=1e-3, rtol=1e-3)
    xg = jnp.linspace(-3, 3, 13, dtype=jnp.float64)
    yg = ops.ktanh(xg)
    np.testing.assert_allclose(jax.grad(lambda v: ops.ktanh(v).sum())(xg), 1 - yg * yg,
                               rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# ABC-Net


@pytest.mark.parametrize("m", [1, 5])
def test_binary_bases_and_least_squares_alpha(m):
  w = jax.random.normal(jax.random.key(m), (3, 3, 4, 6)) * 0.1 + 0.02
  bases, alpha = jax.jit(ops.binary_bases, static_argnums=1)(w, m)
  wn = np.asarray(w, np.float64)
  shifts = [0.0] if m == 1 else [-1 + 2 * i / (m - 1) for i in range(m)]
  want = np.stack([np.where(wn - wn.mean() + u * wn.std() >= 0, 1.0, -1.0) for u in shifts])
  assert bases.shape == (m,) + w.shape and set(np.unique(bases)) <= {-1.0, 1.0}
  np.testing.assert_array_equal(bases, want)
  lstsq = np.linalg.lstsq(want.reshape(m, -1).T, wn.ravel(), rcond=None)[0]
  np.testing.assert_allclose(alpha, lstsq, rtol=2e-4, atol=1e-6)


def test_approximation_error_decreases_and_repeated_bases():
  w = jax.random.normal(jax.random.key(0), (64, 32))
  errors = [float(ops.binary_approximation_error(w, m)) for m in (1, 2, 3, 5)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # A two-valued tensor: every shift gives the same base; the pseudo-inverse shares the weight.
  w2 = jnp.array([0.3, -0.3, 0.3, -0.3])
  bases, alpha = ops.binary_bases(w2, 3)
  np.testing.assert_allclose(jnp.tensordot(alpha, bases, axes=1), w2, atol=1e-6)


def test_binary_weights_and_activations_straight_through():
  w = jax.random.normal(jax.random.key(0), (20, 7))
  bases, alpha = ops.binary_bases(w, 3)
  approx = ops.binary_weights(w, 3)
  np.testing.assert_array_equal(approx, jnp.tensordot(alpha, bases, axes=1))
  g = jax.random.normal(jax.random.key(1), w.shape)
  grad = jax.grad(lambda w: jnp.sum(g * ops.binary_weights(w, 3)))(w)
  np.testing.assert_allclose(grad, jnp.sum(alpha) * g, rtol=1e-6)

  x = jnp.linspace(-2, 2, 41) + 0.013  # off the clip boundaries, where the slope is ambiguous
  shifts = jnp.array([0.5, 0.0, 1.2])
  h = ops.binary_activations(x, shifts)
  np.testing.assert_array_equal(h, jnp.where(x[None] + shifts[:, None] >= 0.5, 1.0, -1.0))
  dx, dv = jax.grad(lambda x, v: ops.binary_activations(x, v).sum(), argnums=(0, 1))(x, shifts)
  inside = ((x[None] + shifts[:, None] >= 0) & (x[None] + shifts[:, None] <= 1)).astype(float)
  np.testing.assert_allclose(dx, 2 * inside.sum(0))
  np.testing.assert_allclose(dv, 2 * inside.sum(1))


# ------------------------------------------------------------------------------------------------
# Packed products


@pytest.mark.parametrize("length", [1, 33, 129])
def test_packed_dot_equals_float_dot(length):
  key_a, key_b = jax.random.split(jax.random.key(length))
  a = jnp.where(jax.random.bernoulli(key_a, 0.5, (6, length)), 1.0, -1.0)
  b = jnp.where(jax.random.bernoulli(key_b, 0.5, (9, length)), 1.0, -1.0)
  pa, pb = ops.pack_bits(a), ops.pack_bits(b)
  assert pa.dtype == jnp.uint32 and pa.shape == (6, ops.packed_words(length))
  want = np.asarray(a, np.int64) @ np.asarray(b, np.int64).T
  np.testing.assert_array_equal(ops.packed_matmul(pa, pb, length), want)
  np.testing.assert_array_equal(ops.packed_matmul(pa, pb, length, block=4), want)  # blocked rows
  np.testing.assert_array_equal(ops.packed_dot(pa[:, None], pb[None], length), want)
  # With zeros (padding) masked out: the float product of {-1, 0, +1} vectors.
  zeros = jax.random.bernoulli(jax.random.key(7), 0.3, a.shape)
  az = jnp.where(zeros, 0.0, a)
  mask = ops.pack_bits(jnp.where(az != 0, 1.0, -1.0))
  np.testing.assert_array_equal(ops.packed_matmul(ops.pack_bits(az), pb, length, mask=mask),
                                np.asarray(az, np.int64) @ np.asarray(b, np.int64).T)


# ------------------------------------------------------------------------------------------------
# Layers, models, packed inference


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = fnn.ABCConv(6, (3, 3), padding="SAME", weight_bases=3, activation_bases=2)(x)
    x = fnn.ABCConv(5, (3, 3), strides=(2, 2), padding="VALID", weight_bases=2,
                    activation_bases=3)(x)
    x = fnn.ABCDense(7, weight_bases=3, activation_bases=2)(x.reshape(x.shape[0], -1))
    return nn.Dense(4)(x)


def test_layers_packed_equal_float_evaluation():
  net, x = _Net(), 2 * jax.random.normal(jax.random.key(0), (3, 9, 9, 3))
  variables = jax.jit(net.init)(jax.random.key(1), x)
  bases = {"ABCConv_0": 3, "ABCConv_1": 2, "ABCDense_0": 3}
  packed = fnn.pack_binary_variables(variables, bases)
  assert isinstance(packed["params"]["ABCConv_0"]["kernel"], fnn.PackedBinaryKernel)
  assert fnn.binary_layer_paths(variables["params"]) == [("ABCConv_0",), ("ABCConv_1",),
                                                          ("ABCDense_0",)]
  reference = jax.jit(lambda v, x: fnn.binary_apply(net, v, x, impl="float"))(variables, x)
  packed_out = jax.jit(lambda v, x: fnn.binary_apply(net, v, x))(packed, x)
  np.testing.assert_array_equal(packed_out, reference)
  # The training-time evaluation (combined activations and weights) differs by rounding only.
  single = fnn.ABCConv(4, (3, 3), weight_bases=2, activation_bases=2)
  v1 = jax.jit(single.init)(jax.random.key(2), x)
  packed1 = fnn.pack_binary_variables(v1, 2)
  np.testing.assert_allclose(jax.jit(single.apply)(v1, x),
                             jax.jit(lambda v, x: fnn.binary_apply(single, v, x))(packed1, x),
                             rtol=1e-5, atol=1e-5)


def test_abc_model_gradients_reach_every_binary_parameter():
  model = models.create_model("abc_cnn", 10, channels=(4, 8), hidden=16, weight_bases=2,
                              activation_bases=2)
  x = jax.random.normal(jax.random.key(0), (8, 12, 12, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(logits ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for layer in ("ABCConv_0", "ABCDense_0"):
    for name in ("kernel", "act_shifts", "act_scales"):
      assert float(jnp.abs(grads[layer][name]).sum()) > 0, (layer, name)
  # Packed == float evaluation on this model: test_packed_model_on_four_host_devices.
  float_model = models.create_model("abc_cnn_float", 10, channels=(4, 8), hidden=16)
  params = jax.eval_shape(float_model.init, jax.random.key(0), x)["params"]
  assert params.keys().isdisjoint({"ABCConv_0", "ABCDense_0"}) and "Conv_1" in params


def test_packed_model_on_four_host_devices():
  out = run_python(textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from fastnets import models, nn as fnn
      assert jax.device_count() == 4
      model = models.create_model("abc_cnn", 10, channels=(4, 8), hidden=16, weight_bases=3,
                                  activation_bases=3)
      x = jax.random.normal(jax.random.key(0), (8, 12, 12, 1))
      variables = model.init(jax.random.key(1), x)
      packed = fnn.pack_binary_variables(variables, 3)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      xs = jax.device_put(x, NamedSharding(mesh, P("data")))
      f = jax.jit(lambda v, x: fnn.binary_apply(model, v, x))
      g = jax.jit(lambda v, x: fnn.binary_apply(model, v, x, impl="float"))
      y, ref = f(packed, xs), g(variables, x)
      assert len(y.sharding.device_set) == 4
      np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
      print("ok")
      """), devices=4)
  assert "ok" in out


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input():
  with pytest.raises(TypeError, match="x must be a real floating"):
    ops.ktanh(jnp.arange(3))
  with pytest.raises(TypeError, match="x must be a real floating"):
    ops.ktanh(jnp.ones(3, jnp.complex64))
  with pytest.raises(ValueError, match="num_bases must be >= 1"):
    ops.binary_bases(jnp.ones((3, 3)), 0)
  with pytest.raises(TypeError, match="num_bases"):
    ops.binary_bases(jnp.ones((3, 3)), 1.5)
  with pytest.raises(ValueError, match="weight_bases"):
    fnn.ABCDense(3, weight_bases=0).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="shifts must be"):
    ops.binary_activations(jnp.ones(3), jnp.ones((2, 2)))
  a = ops.pack_bits(jnp.ones((2, 40)))
  with pytest.raises(ValueError, match="b has 1"):
    ops.packed_matmul(a, ops.pack_bits(jnp.ones((3, 20))), 40)
  with pytest.raises(ValueError, match="length 70 needs 3 words"):
    ops.packed_matmul(a, a, 70)
  with pytest.raises(TypeError, match="a must be uint32"):
    ops.packed_dot(jnp.ones((2, 2)), a, 40)
  with pytest.raises(ValueError, match="mask must have"):
    ops.packed_matmul(a, a, 40, mask=a[:1])

  dense = nn.Dense(3)
  dv = jax.jit(dense.init)(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="no binary"):
    fnn.pack_binary_variables(dv, 1)
  net, x = _Net(), jnp.ones((2, 9, 9, 3))
  v = jax.jit(net.init)(jax.random.key(1), x)
  with pytest.raises(ValueError, match="'Dense_0' is not binary"):
    fnn.pack_binary_variables(v, 3, layers=[("Dense_0",)])
  # Model-level errors are raised while tracing: jit them so that nothing runs op by op.
  apply = lambda variables, x, impl="packed": jax.jit(
      lambda v, x: fnn.binary_apply(net, v, x, impl=impl))(variables, x)
  with pytest.raises(ValueError, match="no packed binary layer"):
    apply(v, x)
  bases = {"ABCConv_0": 3, "ABCConv_1": 2, "ABCDense_0": 3}
  packed = fnn.pack_binary_variables(v, bases)
  with pytest.raises(ValueError, match="fan-in"):
    apply(packed, jnp.ones((2, 9, 9, 4)))
  wrong = fnn.pack_binary_variables(v, {**bases, "ABCDense_0": 2})
  with pytest.raises(ValueError, match="weight_bases=3"):
    apply(wrong, x)
  with pytest.raises(ValueError, match="impl must be"):
    apply(packed, x, "fast")
  with pytest.raises(ValueError, match="is packed"):
    apply(packed, x, "float")
  # A packed kernel smuggled into a layer that is not binary.
  smuggled = {**v, "params": {**v["params"], "Dense_0": {
      **v["params"]["Dense_0"], "kernel": packed["params"]["ABCDense_0"]["kernel"]}}}
  with pytest.raises(ValueError, match="not binary"):
    apply(smuggled, x)
