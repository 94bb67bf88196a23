"""The LCW generator's pieces: the Frechet distance, the Cramer-Wold autoencoder cost, both
training steps (through the GAN loop, replicas vmapped) and the networks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnets import models, ops
from fastnets.train import gan, init_train_state, lcw
from tests.conftest import run_python


def _slow_frechet(x, y):
  mu_x, mu_y = x.mean(0), y.mean(0)
  cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(cx @ cy).real
  return float(np.sum((mu_x - mu_y) ** 2) + np.trace(cx) + np.trace(cy) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_float64():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 5))
  y = 0.7 * rng.standard_normal((40, 5)) + 0.3
  with jax.enable_x64(True):
    ours = float(ops.frechet_distance(jnp.asarray(x), jnp.asarray(y)))
    assert abs(ours - _slow_frechet(x, y)) < 1e-8 * max(1.0, abs(ours))
    assert abs(ours - float(ops.frechet_distance(jnp.asarray(y), jnp.asarray(x)))) < 1e-8
    assert abs(float(ops.frechet_distance(jnp.asarray(x), jnp.asarray(x)))) < 1e-8


@settings(max_examples=15, deadline=None, derandomize=True)
@given(shift=st.floats(-3, 3), scale=st.floats(0.2, 3.0))
def test_frechet_distance_of_gaussian_shift_and_scale(shift, scale):
  # Gaussians N(m1, S) and N(m2, c^2 S) with the sample's own S: |m1 - m2|^2 + (1 - c)^2 tr(S).
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 3))
  y = scale * (x - x.mean(0)) + x.mean(0) + shift
  with jax.enable_x64(True):
    d = float(ops.frechet_distance(jnp.asarray(x), jnp.asarray(y)))
  expected = 3 * shift ** 2 + (1 - scale) ** 2 * np.trace(np.cov(x, rowvar=False))
  assert d >= -1e-9 and abs(d - expected) < 1e-7 * max(1.0, expected)


def test_frechet_distance_bad_input():
  with pytest.raises(ValueError, match="same feature dimension"):
    ops.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="x needs at least 2 samples"):
    ops.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="y must be"):
    ops.frechet_distance(np.zeros((4, 3)), np.zeros(4))


def test_cramer_wold_normality_matches_slow_formula_float64():
  # The CWAE latent cost (JMLR Thm. 3 with the closed-form kernel), term by term in loops.
  rng = np.random.default_rng(3)
  x = rng.standard_normal((7, 5)) * 1.5 + 0.2
  n, d, gamma = 7, 5, 0.37
  k = 1.0 / (2 * d - 3)
  pair = sum((gamma + k * np.sum((x[i] - x[j]) ** 2)) ** -0.5 for i in range(n)
             for j in range(n)) / n ** 2
  cross = sum((gamma + 0.5 + k * np.sum(x[i] ** 2)) ** -0.5 for i in range(n)) / n
  slow = (pair + (1 + gamma) ** -0.5 - 2 * cross) / (2 * np.sqrt(np.pi))
  with jax.enable_x64(True):
    ours = float(ops.cramer_wold_normality(jnp.asarray(x), gamma=gamma))
  assert abs(ours - slow) < 1e-12 and ours > 0


def test_autoencoder_loss_against_direct_formula():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((6, 4, 2)).astype(np.float32)
  r = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
  z = rng.standard_normal((6, 3)).astype(np.float32)
  loss, parts = lcw.autoencoder_loss(r, x, z, "mse", normality_weight=0.5)
  mse = np.mean(np.sum((r - x).reshape(6, -1) ** 2, axis=1))
  norm = float(ops.cramer_wold_normality(z))
  np.testing.assert_allclose(float(parts["reconstruction"]), mse, rtol=1e-5)
  np.testing.assert_allclose(float(loss), mse + 0.5 * np.log(norm), rtol=1e-5)
  loss, parts = lcw.autoencoder_loss(r, x, z, "cw", normality_weight=1.0, approximate=True)
  cw = float(ops.cramer_wold_distance(r.reshape(6, -1), x.reshape(6, -1), approximate=True))
  np.testing.assert_allclose(float(loss), np.log(cw) + np.log(norm), rtol=1e-5)
  with pytest.raises(ValueError, match="reconstruction_cost"):
    lcw.autoencoder_loss(r, x, z, "l1")
  with pytest.raises(ValueError, match="reconstruction and inputs"):
    lcw.autoencoder_loss(r[:, :2], x, z)


def test_autoencoder_shapes_encode_decode_and_bad_input():
  model = models.MLPAutoencoder(sample_shape=(4, 4, 1), latent_dim=3, hidden=8, depth=1)
  x = jnp.ones((5, 4, 4, 1))
  v = model.init(jax.random.key(0), x)
  recon, z = model.apply(v, x)
  assert recon.shape == x.shape and z.shape == (5, 3)
  assert float(jnp.max(jnp.abs(recon))) <= 1.0  # tanh output
  np.testing.assert_allclose(np.asarray(model.apply(v, z, method="decode")), np.asarray(recon),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="x must be"):
    model.apply(v, jnp.ones((5, 16)), method="encode")
  with pytest.raises(ValueError, match="latent_dim"):
    models.MLPAutoencoder(sample_shape=(4,), latent_dim=1).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="output"):
    models.MLPDecoder(sample_shape=(4,), output="relu").init(jax.random.key(0), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="latent_dim"):
    models.latent_generator(0)
  with pytest.raises(ValueError, match="batch_size"):
    lcw.make_latent_generator_step(models.latent_generator(2), optax.adam(1e-3), 1, 2)
  with pytest.raises(ValueError, match="noise_dim"):
    lcw.make_latent_generator_step(models.latent_generator(2), optax.adam(1e-3), 8, 0)


def test_latent_trick_moves_generator_to_targets_in_vmapped_loop():
  # Two replicas (seeds) in one program: each generator learns a shifted, scaled Gaussian; the
  # Cramer-Wold distance to the targets must fall far below its initial value.
  gen = models.latent_generator(2, hidden=16, depth=1)
  tx = optax.adam(1e-2)
  keys = jax.random.split(jax.random.key(0), 2)
  states = jax.vmap(lambda k: init_train_state(gen, tx, k, jnp.zeros((2, 2))))(keys)
  targets = jax.random.normal(jax.random.key(1), (2, 512, 2)) * 0.5 + jnp.array([2.0, -1.0])
  step = lcw.make_latent_generator_step(gen, tx, 32, 2, approximate=True)
  probe = jax.vmap(lambda s, k: lcw.generate_latents(gen, s, k, 256, 2))
  before = jax.vmap(ops.cramer_wold_distance)(probe(states, keys), targets[:, :256])
  states, history = gan.train_gan(step, states, targets, keys, 120, chunk_size=60,
                                  replicas=2, verbose=False)
  after = jax.vmap(ops.cramer_wold_distance)(probe(states, keys), targets[:, :256])
  assert np.all(np.asarray(after) < 0.2 * np.asarray(before)), (before, after)
  assert int(states.step[0]) == 120 and len(history) == 2 and len(history[0]["loss"]) == 2


def test_autoencoder_step_updates_and_nan_data_is_flagged():
  model = models.MLPAutoencoder(sample_shape=(6,), latent_dim=2, hidden=8, depth=1)
  tx = optax.adam(1e-3)
  state = init_train_state(model, tx, jax.random.key(0), jnp.zeros((2, 6)))
  data = jax.random.normal(jax.random.key(1), (32, 6))
  step = lcw.make_autoencoder_step(model, tx, 8, reconstruction_cost="cw", approximate=True)
  chunk = jax.jit(gan.make_train_chunk(step, 1))  # the GAN loop's chunk, one step
  new, metrics, finite = chunk(state, data, jax.random.key(2))
  assert int(new.step) == 1 and set(metrics) == {"loss", "reconstruction", "normality"}
  assert bool(finite) and all(np.isfinite(float(v)) for v in metrics.values())
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.model_state, state.model_state)
  assert all(jax.tree.leaves(moved))  # BatchNorm running statistics were updated.
  _, _, finite = chunk(state, data.at[:, 3].set(jnp.nan), jax.random.key(2))
  assert not bool(finite)  # train_gan raises NonFiniteLossError on this flag


def test_latent_generator_step_on_four_devices():
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fastnets import models, ops
from fastnets.train import init_train_state, lcw
mesh = Mesh(np.array(jax.devices()), ("data",))
gen = models.latent_generator(3, hidden=8, depth=1)
tx = optax.adam(1e-3)
state = init_train_state(gen, tx, jax.random.key(0), jnp.zeros((2, 3)))
targets = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
step = jax.jit(lcw.make_latent_generator_step(gen, tx, 16, 3))
ref, m_ref = step(state, targets, jax.random.key(1))
put = jax.device_put(jnp.asarray(targets), NamedSharding(mesh, P("data")))
out, m = step(state, put, jax.random.key(1))
np.testing.assert_allclose(float(m["loss"]), float(m_ref["loss"]), rtol=1e-5)
feats = jax.device_put(jnp.asarray(targets), NamedSharding(mesh, P("data")))
np.testing.assert_allclose(float(jax.jit(ops.frechet_distance)(feats, feats + 1.0)), 3.0,
                           rtol=1e-4)
print("ok", len(jax.devices()))
""", devices=4)
  assert "ok 4" in out
