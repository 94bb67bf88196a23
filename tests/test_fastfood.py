"""Tests of the Fastfood transform, Fastfood RBF features, FastfoodDense and DeepFriedConvnet."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops
from fastnets.models.deep_fried import DeepFriedConvnet, fc_param_count


def _dense_fastfood(S, G, B, perm):
  """Explicit V = [S_j Hn G_j P_j Hn B_j]_j with (P x)_i = x[perm_i], in float64 numpy."""
  S, G, B, perm = (np.asarray(a) for a in (S, G, B, perm))
  nb, d = S.shape
  hn = scipy.linalg.hadamard(d) / np.sqrt(d)
  blocks = []
  for j in range(nb):
    p = np.eye(d)[perm[j]]
    blocks.append(np.diag(S[j]) @ hn @ np.diag(G[j]) @ p @ hn @ np.diag(B[j]))
  return np.concatenate(blocks, axis=0)


def test_transform_matches_explicit_product_float64():
  with jax.enable_x64(True):
    p = ops.fastfood_params_init(jax.random.key(0), 16, 3, scale=0.7, dtype=jnp.float64)
    assert p.S.shape == p.G.shape == p.B.shape == p.perm.shape == (3, 16)
    assert p.perm.dtype == jnp.int32 and set(np.unique(np.asarray(p.B))) == {-1.0, 1.0}
    for j in range(3):
      assert sorted(np.asarray(p.perm[j]).tolist()) == list(range(16))
    x = np.random.default_rng(0).standard_normal((2, 5, 16))
    y = ops.fastfood_transform(jnp.asarray(x), *p)
    v = _dense_fastfood(*p)
    assert y.shape == (2, 5, 48)
    np.testing.assert_allclose(np.asarray(y), x @ v.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ops.fastfood_matrix(*p)), v, rtol=1e-12, atol=1e-12)


def test_rows_have_gaussian_row_lengths():
  # Row i of V has length scale * s_i with s_i ~ chi_d (Le et al.): mean ~ scale * sqrt(d - 1/2).
  d, nb, scale = 64, 16, 0.5
  v = np.asarray(ops.fastfood_matrix(*ops.fastfood_params_init(jax.random.key(1), d, nb,
                                                                 scale=scale)))
  norms = np.linalg.norm(v, axis=1) / scale
  assert abs(norms.mean() - np.sqrt(d - 0.5)) < 0.05 * np.sqrt(d)
  assert abs(norms.std() - np.sqrt(0.5)) < 0.2


def test_transform_gradients_float64():
  with jax.enable_x64(True):
    p = ops.fastfood_params_init(jax.random.key(2), 8, 2, dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8)))
    f = lambda x, s, g, b: ops.fastfood_transform(x, s, g, b, p.perm, impl="xla")
    check_grads(f, (x, p.S, p.G, p.B), order=1, modes=["rev"])
    # The permutation's custom VJP against autodiff of the explicit dense product.
    ct = jnp.asarray(np.random.default_rng(2).standard_normal((3, 16)))
    v = jnp.asarray(_dense_fastfood(*p))
    (gx,) = jax.vjp(lambda x: f(x, p.S, p.G, p.B), x)[1](ct)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(ct @ v), rtol=1e-12, atol=1e-12)


def test_rbf_approximation_error_shrinks_with_features():
  x = jax.random.normal(jax.random.key(3), (24, 10))
  sigma = 2.0
  exact = ops.rbf_kernel(x, x, sigma)
  errors = []
  params = ops.fastfood_rbf_params(jax.random.key(4), 10, 4096)  # one draw; m <= 4096 rows used
  for m in (16, 256, 4096):
    phi = ops.fastfood_rbf_features(params, x, m, sigma)
    assert phi.shape == (24, 2 * m)
    errors.append(float(jnp.abs(phi @ phi.T - exact).mean()))
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < errors[0] / 4 and errors[2] < 0.02
  # Diagonal is exactly 1 (cos^2 + sin^2).
  np.testing.assert_allclose(np.diag(np.asarray(phi @ phi.T)), 1.0, rtol=1e-5)


def test_rbf_features_with_params_and_bad_input():
  x = jnp.ones((3, 5))
  params = ops.fastfood_rbf_params(jax.random.key(5), 5, 20)
  assert params.S.shape == (3, 8)
  a = ops.fastfood_rbf_features(params, x, 20, sigma=1.5)
  b = ops.fastfood_rbf_features(params, x, 20, sigma=1.5)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="do not fit"):
    ops.fastfood_rbf_features(params, x, 100)
  with pytest.raises(ValueError, match="sigma must be a positive"):
    ops.fastfood_rbf_features(jax.random.key(0), x, 8, sigma=0.0)
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    ops.fastfood_rbf_features("seed", x, 8)


def test_transform_bad_input():
  p = ops.fastfood_params_init(jax.random.key(0), 8, 2)
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 8\)"):
    ops.fastfood_transform(jnp.ones((2, 6)), *p)
  with pytest.raises(ValueError, match="must all have shape"):
    ops.fastfood_transform(jnp.ones((2, 8)), p.S, p.G[:1], p.B, p.perm)
  with pytest.raises(TypeError, match="perm must be an integer"):
    ops.fastfood_transform(jnp.ones((2, 8)), p.S, p.G, p.B, p.perm.astype(jnp.float32))
  with pytest.raises(TypeError, match="x must be floating"):
    ops.fastfood_transform(jnp.ones((2, 8), jnp.int32), *p)
  with pytest.raises(ValueError, match="d must be a power of two"):
    ops.fastfood_params_init(jax.random.key(0), 12, 2)
  with pytest.raises(ValueError, match="n_blocks must be a positive int"):
    ops.fastfood_params_init(jax.random.key(0), 8, 0)


# ---- FastfoodDense -------------------------------------------------------------------------


@pytest.mark.parametrize("in_features,features", [(100, 300), (100, 10), (64, 64)])
def test_fastfood_dense_shapes_and_param_counts(in_features, features):
  x = jax.random.normal(jax.random.key(0), (2, 3, in_features))
  d = ops.next_power_of_two(in_features)
  nb = -(-features // d)
  for adaptive in (True, False):
    layer = fnn.FastfoodDense(features, adaptive=adaptive)
    v = layer.init(jax.random.key(1), x)
    y = layer.apply(v, x)
    assert y.shape == (2, 3, features)
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(v["params"]))
    consts = v[fnn.FASTFOOD_CONSTANTS]
    if adaptive:
      assert set(v["params"]) == {"S", "G", "B", "bias"} and set(consts) == {"perm"}
      assert n_params == 3 * nb * d + features
    else:
      assert set(v["params"]) == {"bias"} and set(consts) == {"S", "G", "B", "perm"}
      assert n_params == features
    # The layer is fastfood_transform of the zero-padded input, truncated, plus the bias.
    p = {**v["params"], **consts}
    ref = ops.fastfood_transform(ops.pad_to_power_of_two(x), p["S"], p["G"], p["B"],
                                 p["perm"])[..., :features] + p["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_fastfood_dense_param_count_is_linear():
  x = jnp.ones((1, 4096))
  v = fnn.FastfoodDense(4096).init(jax.random.key(0), x)
  n_ff = sum(a.size for a in jax.tree_util.tree_leaves(v["params"]))
  assert n_ff == 4 * 4096 and 4096 * 4096 / n_ff > 100


def test_fastfood_dense_init_scale_like_dense():
  x = jax.random.normal(jax.random.key(0), (256, 200))
  ff = fnn.FastfoodDense(512)
  y = ff.apply(ff.init(jax.random.key(1), x), x)
  dense = nn.Dense(512)
  yd = dense.apply(dense.init(jax.random.key(1), x), x)
  assert 0.8 < float(y.std()) / float(yd.std()) < 1.25


def test_adaptive_gradients_and_nonadaptive_constants_not_trained():
  x = jax.random.normal(jax.random.key(0), (8, 30))
  target = jax.random.normal(jax.random.key(1), (8, 40))
  for adaptive in (True, False):
    layer = fnn.FastfoodDense(40, adaptive=adaptive)
    v = layer.init(jax.random.key(2), x)
    params, consts = v["params"], {fnn.FASTFOOD_CONSTANTS: v[fnn.FASTFOOD_CONSTANTS]}

    def loss(p):
      return jnp.mean((layer.apply({"params": p, **consts}, x) - target) ** 2)

    grads = jax.grad(loss)(params)
    for name, g in grads.items():
      assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0, name
    opt = optax.sgd(0.1)
    state = opt.init(params)
    before = loss(params)
    for _ in range(3):
      updates, state = opt.update(jax.grad(loss)(params), state)
      params = optax.apply_updates(params, updates)
    assert loss(params) < before
    if not adaptive:
      assert set(params) == {"bias"}  # S, G, B, perm are outside the optimizer's reach


def test_fastfood_dense_bad_input():
  with pytest.raises(ValueError, match="features must be a positive int"):
    fnn.FastfoodDense(0).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="x must have shape"):
    fnn.FastfoodDense(4).init(jax.random.key(0), jnp.ones(()))
  layer = fnn.FastfoodDense(8)
  v = layer.init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(Exception, match="shape"):  # flax's ScopeParamShapeError
    layer.apply(v, jnp.ones((2, 16)))


# ---- DeepFriedConvnet ----------------------------------------------------------------------


def test_deep_fried_convnet_variants():
  x = jnp.zeros((2, 28, 28, 1))
  counts = {}
  for fc in ("dense", "fastfood_adaptive", "fastfood_nonadaptive"):
    model = DeepFriedConvnet(num_classes=10, fc=fc)
    v = model.init(jax.random.key(0), x, train=False)
    assert model.apply(v, x, train=True).shape == (2, 10)
    counts[fc] = fc_param_count(v["params"])
  assert counts["dense"] == 800 * 1024 + 1024
  assert counts["fastfood_adaptive"] == 4 * 1024 and counts["fastfood_nonadaptive"] == 1024
  assert counts["dense"] / counts["fastfood_adaptive"] >= 10
  with pytest.raises(ValueError, match="fc must be one of"):
    DeepFriedConvnet(fc="sparse").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="NHWC"):
    DeepFriedConvnet().init(jax.random.key(0), jnp.zeros((2, 28, 28)))


def test_deep_fried_convnet_trains_a_few_steps():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((16, 12, 12, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 16))
  model = DeepFriedConvnet(num_classes=3, channels=(4,), kernel_size=3, hidden=(32, 16))
  v = model.init(jax.random.key(0), x)
  params, rest = v["params"], {k: a for k, a in v.items() if k != "params"}

  def loss(p):
    logits = model.apply({"params": p, **rest}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  opt = optax.adam(1e-2)
  state = opt.init(params)
  step = jax.jit(lambda p, s: (lambda g: opt.update(g, s, p))(jax.grad(loss)(p)))
  first = float(loss(params))
  for _ in range(10):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < first


class _TwoFastfood(nn.Module):
  constants_seed: object = None

  @nn.compact
  def __call__(self, x):
    x = fnn.FastfoodDense(20, constants_seed=self.constants_seed, name="adaptive")(x)
    return fnn.FastfoodDense(5, adaptive=False, constants_seed=self.constants_seed,
                             name="fixed")(x)


def test_constants_seed_gives_the_plain_flax_idiom():
  x = jax.random.normal(jax.random.key(1), (3, 12))
  model = _TwoFastfood(constants_seed=7)
  variables = model.init(jax.random.key(0), x)
  assert list(variables) == ["params"]  # No constants collection to carry around.
  params = variables["params"]
  y = model.apply({"params": params}, x)
  np.testing.assert_array_equal(y, model.apply({"params": params}, x))
  # The seed decides the constants: another seed, another function of the same params.
  other = _TwoFastfood(constants_seed=8).apply({"params": params}, x)
  assert not np.allclose(y, other)
  # Two layers of one model draw different permutations (their paths differ).
  grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(params)
  assert set(grads["adaptive"]) == {"S", "G", "B", "bias"} and set(grads["fixed"]) == {"bias"}


def test_missing_constants_collection_is_a_clear_error():
  x = jnp.ones((2, 12))
  model = _TwoFastfood()
  variables = model.init(jax.random.key(0), x)
  model.apply(variables, x)  # Every collection passed: fine.
  with pytest.raises(ValueError, match="'fastfood_constants' collection is missing"):
    model.apply({"params": variables["params"]}, x)
  with pytest.raises(ValueError, match="constants_seed must be None or an int"):
    _TwoFastfood(constants_seed=1.5).init(jax.random.key(0), x)


def test_scale_fastfood_updates_scales_only_the_diagonals():
  x = jnp.ones((2, 12))
  params = _TwoFastfood().init(jax.random.key(0), x)["params"]
  params = {**params, "other": {"S": jnp.ones(3)}}  # An S without G and B is no Fastfood layer.
  tx = optax.chain(optax.sgd(1.0), fnn.scale_fastfood_updates(10.0))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  first = jax.tree.map(lambda u: float(u.ravel()[0]), updates)
  assert first["adaptive"] == {"S": -10.0, "G": -10.0, "B": -10.0, "bias": -1.0}
  assert first["fixed"] == {"bias": -1.0} and first["other"] == {"S": -1.0}
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  mask = fnn.fastfood_diagonal_mask(params)
  assert mask["adaptive"] == {"S": True, "G": True, "B": True, "bias": False}
  assert mask["other"] == {"S": False}
  # Bit-identical to multiplying the diagonals' updates by hand (what deep_fried did before).
  u = jax.tree.map(lambda p: 0.37 * p + 0.01, params)
  scale = fnn.scale_fastfood_updates(10.0)
  scaled, _ = scale.update(u, scale.init(params))
  by_hand = jax.tree.map(lambda v, m: v * 10.0 if m else v, u, mask)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), scaled, by_hand))
  for bad in (0.0, -1.0, float("nan"), "2", True):
    with pytest.raises(ValueError, match="mult must be a positive finite number"):
      fnn.scale_fastfood_updates(bad)
