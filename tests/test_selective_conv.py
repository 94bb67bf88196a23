"""Selective convolutional units: ECDS, bilinear shifts (gradients), re-allocation, the module."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import nn, ops, train
from tests.conftest import run_python


def test_bilinear_shift_integer_and_half_pixel():
  x = jnp.arange(2 * 5 * 4 * 2, dtype=jnp.float32).reshape(2, 5, 4, 2)
  out = ops.bilinear_shift(x, jnp.array([[1.0, 0.0], [0.0, -1.0]]))
  np.testing.assert_array_equal(out[:, 1:, :, 0], x[:, :-1, :, 0])
  np.testing.assert_array_equal(out[:, 0, :, 0], 0)
  np.testing.assert_array_equal(out[:, :, :-1, 1], x[:, :, 1:, 1])
  np.testing.assert_array_equal(out[:, :, -1, 1], 0)
  half = ops.bilinear_shift(x, jnp.array([[0.5, 0.0], [0.0, 0.0]]))
  np.testing.assert_allclose(half[:, 1:, :, 0], 0.5 * (x[:, 1:, :, 0] + x[:, :-1, :, 0]))
  np.testing.assert_array_equal(ops.bilinear_shift(x, jnp.zeros((2, 2))), x)
  with pytest.raises(ValueError, match="shifts"):
    ops.bilinear_shift(x, jnp.zeros((3, 2)))


def test_bilinear_shift_gradients_float64():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3), jnp.float64)
    shifts = jnp.array([[0.3, -1.4], [1.7, 0.2], [-0.6, 0.55]], jnp.float64)
    check_grads(ops.bilinear_shift, (x, shifts), order=1, modes=("rev",), eps=1e-4)
    check_grads(jax.jit(ops.bilinear_shift), (x, shifts), order=1, modes=("fwd",), eps=1e-4)


def test_expected_channel_damage_matches_monte_carlo():
  gamma, beta = jnp.array([1.0, 0.5, 2.0]), jnp.array([0.0, -1.0, 0.3])
  kernel = jnp.ones((1, 1, 3, 2)) * jnp.array([1.0, 2.0, 0.5])[:, None]
  score = ops.expected_channel_damage(gamma, beta, kernel)
  z = jax.random.normal(jax.random.key(0), (200_000, 1))
  mc = jnp.mean(jax.nn.relu(gamma * z + beta), axis=0) * jnp.array([2.0, 4.0, 1.0])
  np.testing.assert_allclose(score, mc, rtol=2e-2)
  with pytest.raises(ValueError, match="kernel"):
    ops.expected_channel_damage(gamma, beta, jnp.ones((1, 1, 4, 2)))


def test_reallocate_moves_low_slots_to_high_channels():
  index, mask = np.arange(6), np.ones(6, bool)
  ecds = np.array([5.0, 0.1, 3.0, 0.2, 9.0, 1.0])
  new, _, moved = ops.reallocate(index, mask, ecds, 2)
  assert sorted(moved.tolist()) == [1, 3]
  assert new[1] == 4 and new[3] == 0 and index[1] == 1  # input untouched
  with pytest.raises(ValueError, match="half the active slots"):
    ops.reallocate(index, mask, ecds, 4)


def test_selection_reallocation_bad_input():
  ok = dict(units=["u"], start=1, every=1, end=10)
  for bad in ({"start": 0}, {"every": 0}):
    with pytest.raises(ValueError, match="start and every"):
      train.SelectionReallocation(**{**ok, **bad})
  for fraction in (0.0, 0.6, -0.1):
    with pytest.raises(ValueError, match="fraction"):
      train.SelectionReallocation(**ok, fraction=fraction)


def test_selective_conv_starts_as_bn_relu_conv_and_trains_its_shifts():
  unit = nn.SelectiveConv(features=4)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  v = unit.init(jax.random.key(1), x)

  class Plain(fnn.Module):
    @fnn.compact
    def __call__(self, x):
      y = fnn.relu(fnn.BatchNorm(use_running_average=True, name="bn")(x))
      return fnn.Conv(4, (1, 1), use_bias=False, name="conv")(y)

  plain = {"params": {k: v["params"][k] for k in ("bn", "conv")},
           "batch_stats": v["batch_stats"]}
  np.testing.assert_allclose(jax.jit(unit.apply)(v, x), Plain().apply(plain, x), atol=1e-6)
  # Re-allocated slot 0 reads channel 2; a shift changes the output and gets a gradient.
  sel = dict(v[nn.SELECTION_COLLECTION])
  sel["index"] = jnp.array([2, 1, 2], jnp.int32)
  params = dict(v["params"])
  params["shifts"] = jnp.array([[0.4, -0.3], [0.0, 0.0], [0.0, 0.0]])
  v2 = {**v, "params": params, nn.SELECTION_COLLECTION: sel}
  g = jax.grad(lambda p: jnp.sum(unit.apply({**v2, "params": p}, x) ** 2))(params)
  assert np.all(np.asarray(g["shifts"][0]) != 0)
  scores = nn.selection_scores(v2["params"], sel)
  assert scores.shape == (3,) and float(scores[0]) == pytest.approx(float(scores[2]), rel=0.5)


def test_bilinear_shift_on_four_devices():
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fastnets import ops
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.random.normal(jax.random.key(0), (8, 5, 5, 3))
s = jnp.array([[0.5, 1.0], [-1.2, 0.0], [0.0, 2.5]])
ref = ops.bilinear_shift(x, s)
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
got = jax.jit(ops.bilinear_shift)(xs, s)
g = jax.jit(jax.grad(lambda s: jnp.sum(ops.bilinear_shift(xs, s) ** 2)))(s)
np.testing.assert_allclose(got, ref, atol=1e-6)
print("OK", bool(np.all(np.isfinite(g))))
""", devices=4)
  assert "OK True" in out
