"""Covariance pooling, the iSQRT-COV square root and its custom VJP, the GM-SOP gate and heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import models, nn, ops, train


def _spd(seed, d, batch=(), ridge=0.5):
  b = np.random.default_rng(seed).standard_normal(batch + (d, d))
  return np.einsum("...ij,...kj->...ik", b, b) / d + ridge * np.eye(d)


def test_covariance_pool_matches_numpy():
  with jax.enable_x64(True):
    x = np.random.default_rng(0).standard_normal((2, 11, 4))
    ref = np.stack([np.cov(xi, rowvar=False, bias=True) for xi in x])
    np.testing.assert_allclose(np.asarray(ops.covariance_pool(x)), ref, atol=1e-12)


def test_sqrtm_converges_to_eigh_square_root():
  with jax.enable_x64(True):
    a = _spd(1, 6, (3,))
    s = ops.sqrtm_newton_schulz(a, 12)
    np.testing.assert_allclose(np.asarray(s), np.asarray(ops.sqrtm_eigh(a)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(s @ s), a, atol=1e-4)
  # float32 too.
  s32 = ops.sqrtm_newton_schulz(jnp.asarray(a, jnp.float32), 12)
  assert s32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(s32), np.asarray(ops.sqrtm_eigh(a)), atol=1e-4)


def test_sqrtm_one_iteration_closed_form():
  # N = 1: Y_1 = Y_0 (3I - Y_0) / 2 with Y_0 = A / tr(A), output sqrt(tr A) Y_1.
  with jax.enable_x64(True):
    a = _spd(2, 4)
    tr = np.trace(a)
    y0 = a / tr
    ref = np.sqrt(tr) * y0 @ (3 * np.eye(4) - y0) / 2
    np.testing.assert_allclose(np.asarray(ops.sqrtm_newton_schulz(a, 1)), ref, atol=1e-12)


@pytest.mark.parametrize("num_iters", [1, 4])
def test_sqrtm_check_grads_float64_spd_and_nonsymmetric(num_iters):
  with jax.enable_x64(True):
    a = _spd(3, 4)
    check_grads(lambda m: ops.sqrtm_newton_schulz(m, num_iters), (a,), order=1,
                modes=["rev"])
    nonsym = a + 0.3 * np.random.default_rng(4).standard_normal((4, 4))
    check_grads(lambda m: ops.sqrtm_newton_schulz(m, num_iters), (nonsym,), order=1,
                modes=["rev"])


def test_sqrtm_gradient_equals_eigendecomposition_autodiff_on_spd():
  with jax.enable_x64(True):
    a = _spd(5, 5, (2,))
    w = np.random.default_rng(6).standard_normal((2, 5, 5))
    ours = jax.grad(lambda m: jnp.sum(w * ops.sqrtm_newton_schulz(m, 14)))(a)
    ref = jax.grad(lambda m: jnp.sum(w * ops.sqrtm_eigh(m)))(a)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-4)
    # A non-symmetric input's gradient is that of its symmetric part (the function symmetrises).
    g = jax.grad(lambda m: jnp.sum(w[0] * ops.sqrtm_newton_schulz(m, 3)))(a[0] + np.triu(a[0]))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g).T, atol=1e-12)


def test_top_k_gates_exactly_k_and_balance_loss():
  logits = jax.random.normal(jax.random.key(0), (32, 6))
  for k in (1, 3, 6):
    g = jax.jit(ops.top_k_gates, static_argnums=1)(logits, k)
    assert bool(jnp.all(jnp.sum(g > 0, axis=-1) == k))
    np.testing.assert_allclose(np.asarray(jnp.sum(g, -1)), 1.0, rtol=1e-6)
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    assert np.all(np.take_along_axis(np.asarray(g), top, axis=-1) > 0)
  # Ties: still exactly K.
  assert int(jnp.sum(ops.top_k_gates(jnp.zeros((1, 5)), 2) > 0)) == 2
  assert float(ops.gate_balance_loss(jnp.full((8, 4), 0.25))) == 0.0
  uniform_load = jnp.eye(4)[jnp.arange(8) % 4]  # every component chosen equally often
  assert float(ops.gate_balance_loss(uniform_load)) == 0.0
  skewed = jnp.eye(4)[jnp.zeros(8, jnp.int32)]
  assert abs(float(ops.gate_balance_loss(skewed)) - 3.0) < 1e-6  # var 12 / mean^2 4


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="a must be a .* square"):
    ops.sqrtm_newton_schulz(jnp.ones((3, 4)), 3)
  with pytest.raises(ValueError, match="a must be finite"):
    ops.sqrtm_newton_schulz(jnp.full((3, 3), jnp.nan), 3)
  with pytest.raises(ValueError, match="num_iters"):
    ops.sqrtm_newton_schulz(jnp.eye(3), 0)
  with pytest.raises(ValueError, match="k must be"):
    ops.top_k_gates(jnp.zeros((2, 3)), 4)
  with pytest.raises(ValueError, match="at least 2 locations"):
    ops.covariance_pool(jnp.zeros((2, 1, 3)))
  with pytest.raises(ValueError, match="k must satisfy"):
    nn.GMSOP(num_components=3, k=4).init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))


@pytest.mark.parametrize("head", models.POOLING_HEADS)
def test_pooling_cnn_heads_shapes_jit_and_grads(head):
  model = models.create_model("pooling_cnn", 10, head=head, channels=(4, 8), sop_dim=4,
                              num_components=3, k=2)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((6, 12, 12, 1)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert "losses" not in variables  # nothing sown at init (it would grow in the train state)
  loss_fn = train.with_sown_losses(model, weight=0.1)

  @jax.jit
  def everything(params):
    (logits, feats), sown = model.apply({"params": params}, x, train=True, return_features=True,
                                        rngs={"dropout": jax.random.key(2)},
                                        mutable=["losses", "intermediates"])
    grad_out = jax.value_and_grad(loss_fn, has_aux=True)(
        params, {}, {"image": x, "label": jnp.arange(6)}, jax.random.key(1))
    return logits, feats, sown, grad_out

  logits, feats, sown, ((loss, (state, metrics)), grads) = everything(variables["params"])
  width = {"gap": 8, "covariance": 10, "gm_sop": 10}[head]
  assert logits.shape == (6, 10) and feats.shape == (6, width)
  assert state == {} and bool(jnp.isfinite(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  if head == "gm_sop":
    gates = sown["intermediates"]["GMSOP_0"]["gates"][0]
    assert bool(jnp.all(jnp.sum(gates > 0, axis=-1) == 2))
    balance = sown["losses"]["GMSOP_0"]["gate_balance"][0]
    assert bool(jnp.isfinite(balance)) and float(metrics["aux_loss"]) >= 0
    # The components' reductions are trained through the gated output.
    assert float(jnp.abs(grads["GMSOP_0"]["reduce"]).sum()) > 0
  else:
    assert float(metrics["aux_loss"]) == 0.0


def test_distillation_loss_fn_pkt_kd_and_handcrafted_teacher():
  student = models.PoolingCNN(num_classes=10, channels=(4, 8))
  x = jnp.asarray(np.random.default_rng(8).standard_normal((6, 12, 12, 1)), jnp.float32)
  batch = {"image": x, "label": jnp.arange(6) % 10}
  params = jax.jit(student.init)(jax.random.key(0), x)["params"]
  proj = jax.random.normal(jax.random.key(1), (12 * 12, 16))

  def handcrafted(images):  # a fixed projection: features only, no logits
    return None, images.reshape((images.shape[0], -1)) @ proj

  def teacher(images):
    return jnp.ones((images.shape[0], 10)), handcrafted(images)[1]

  pkt_only = train.distillation_loss(student, handcrafted, pkt_weight=1.0)
  (loss, (_, m)), grads = jax.jit(jax.value_and_grad(pkt_only, has_aux=True))(
      params, {}, batch, jax.random.key(2))
  assert abs(float(loss) - float(m["ce"] + m["pkt"])) < 1e-5 and float(m["pkt"]) > 0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  both = train.distillation_loss(student, teacher, pkt_weight=0.5, kd_weight=2.0)
  loss, (_, m) = both(params, {}, batch, jax.random.key(2))
  assert abs(float(loss) - float(m["ce"] + 0.5 * m["pkt"] + 2.0 * m["kd"])) < 1e-5
  with pytest.raises(ValueError, match="teacher logits"):
    train.distillation_loss(student, handcrafted, kd_weight=1.0)(params, {}, batch,
                                                                 jax.random.key(0))
