"""Cramer-Wold distance, PKT loss, distillation KL and retrieval mAP against direct evaluations."""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import ops
from tests.conftest import run_python


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape)


def _slow_cw(x, y, gamma, approximate):
  """The JMLR Theorem 1 formula, one pair at a time (mpmath's 1F1 for the exact kernel)."""
  dim = x.shape[1]

  def phi(s):
    if approximate:
      return (1.0 + 4.0 * s / (2.0 * dim - 3.0)) ** -0.5
    return float(mpmath.hyp1f1(0.5, dim / 2.0, -s))

  def mean_phi(a, b):
    return sum(phi(float(np.sum((ai - bj) ** 2)) / (4 * gamma)) for ai in a for bj in b) / (
        len(a) * len(b))

  total = mean_phi(x, x) + mean_phi(y, y) - 2 * mean_phi(x, y)
  return total / (2 * math.sqrt(math.pi * gamma))


@pytest.mark.parametrize("dim,approximate", [(3, False), (7, False), (24, True)])
def test_cramer_wold_matches_slow_formula_float64(dim, approximate):
  with jax.enable_x64(True):
    x, y = _normal(0, (6, dim)), 0.7 * _normal(1, (5, dim)) + 0.3
    gamma = float(ops.silverman_gamma(jnp.asarray(x), jnp.asarray(y)))
    ours = float(ops.cramer_wold_distance(x, y))  # default phi: exact below D = 20
    assert abs(ours - _slow_cw(x, y, gamma, approximate)) < 1e-6
    assert ours > 0
    assert abs(ours - float(ops.cramer_wold_distance(y, x))) < 1e-12  # symmetric
    assert abs(float(ops.cramer_wold_distance(x, x.copy()))) < 1e-6  # zero for identical


def test_cramer_wold_phi_exact_and_approximation():
  with jax.enable_x64(True):
    s = np.array([0.0, 0.3, 3.0, 39.0, 41.0, 300.0, 1e4])
    for dim in (2, 5, 12, 19):
      ref = np.array([float(mpmath.hyp1f1(0.5, dim / 2, -v)) for v in s])
      np.testing.assert_allclose(np.asarray(ops.cramer_wold_phi(s, dim, approximate=False)),
                                 ref, rtol=1e-10)
    # The closed form is an approximation that improves with D (JMLR Eq. (4)).
    ref = np.array([float(mpmath.hyp1f1(0.5, 10.0, -v)) for v in s])
    approx = np.asarray(ops.cramer_wold_phi(s, 20, approximate=True))
    assert np.max(np.abs(approx - ref)) < 1e-2


def test_cramer_wold_batched_jit_grad_and_separates_distributions():
  x = jnp.asarray(_normal(2, (3, 32, 4)), jnp.float32)
  y = x + jnp.asarray([0.0, 0.5, 2.0])[:, None, None]
  d = jax.jit(ops.cramer_wold_distance)(x, y)
  assert d.shape == (3,) and float(d[0]) < 1e-6 and float(d[1]) < float(d[2])
  single = ops.cramer_wold_distance(x[2], y[2])
  np.testing.assert_allclose(float(d[2]), float(single), rtol=1e-5)
  g = jax.grad(lambda v: ops.cramer_wold_distance(v, y[2], gamma=0.5))(x[2])
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
  # The gradient moves x towards y: the mean of -grad points along +shift.
  assert float(jnp.mean(-g)) > 0


def test_cramer_wold_normality_small_for_normal_samples():
  z = jnp.asarray(_normal(3, (256, 24)), jnp.float32)
  near, far = ops.cramer_wold_normality(z), ops.cramer_wold_normality(z * 3.0 + 1.0)
  assert 0 <= float(near) < float(far)


def _slow_pkt(s, t, eps=1e-7):
  def probs(f):
    n = len(f)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
    k = np.array([[0.0 if i == j else 0.5 * (f[i] @ f[j] + 1) for j in range(n)]
                  for i in range(n)])
    return k / (k.sum(axis=1, keepdims=True) + eps)

  p, q = probs(t), probs(s)
  return np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1))


def test_pkt_loss_matches_slow_formula_and_properties():
  with jax.enable_x64(True):
    s, t = _normal(4, (6, 3)), _normal(5, (6, 17))  # different dimensions
    assert abs(float(ops.pkt_loss(s, t)) - _slow_pkt(s, t)) < 1e-10
    assert float(ops.pkt_loss(s, t)) > 0
    assert abs(float(ops.pkt_loss(t, t))) < 1e-10
    # Invariant to scaling the features (only cosine similarities enter).
    assert abs(float(ops.pkt_loss(3.0 * s, t)) - float(ops.pkt_loss(s, t))) < 1e-6
    p = ops.cosine_affinities(jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(jnp.sum(p, -1)), 1.0, atol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.diag(p)))) == 0.0
    check_grads(lambda v: ops.pkt_loss(v, t), (s,), order=1,
                modes=["rev"])


def test_distillation_kl():
  with jax.enable_x64(True):
    s, t = _normal(6, (5, 4)), _normal(7, (5, 4))
    temp = 3.0
    ps = np.exp(s / temp) / np.exp(s / temp).sum(1, keepdims=True)
    pt = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
    ref = temp**2 * np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    assert abs(float(ops.distillation_kl(s, t, temp)) - ref) < 1e-6
    assert abs(float(ops.distillation_kl(t, t, temp))) < 1e-6


def test_retrieval_map_perfect_random_and_hand_computed():
  labels = np.array([0, 0, 1, 1])
  perfect = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  assert abs(float(ops.retrieval_map(perfect, labels)) - 1.0) < 1e-6
  # Query 0's ranking (others): item 2 (sim 1), item 1 (sim 0.8), item 3 (sim 0) -> relevant item
  # 1 at rank 2: AP = 1/2. By symmetry of this construction every query has AP 1/2.
  feats = np.array([[1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.8, 0.6]])
  feats = np.array([[1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
  sims = feats @ feats.T / np.outer(np.linalg.norm(feats, axis=1), np.linalg.norm(feats, axis=1))
  aps = []
  for q in range(4):
    order = [i for i in np.argsort(-sims[q], kind="stable") if i != q]
    rel = [labels[i] == labels[q] for i in order]
    hits = np.cumsum(rel)
    aps.append(sum(h / (r + 1) for r, (h, ok) in enumerate(zip(hits, rel)) if ok) / sum(rel))
  assert abs(float(ops.retrieval_map(feats, labels)) - np.mean(aps)) < 1e-6


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="same sample dimension"):
    ops.cramer_wold_distance(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="y needs at least 2 samples"):
    ops.cramer_wold_distance(np.zeros((4, 3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match="gamma must be positive"):
    ops.cramer_wold_distance(np.zeros((4, 3)), np.zeros((4, 3)), gamma=0.0)
  with pytest.raises(ValueError, match="dim must be an integer >= 2"):
    ops.cramer_wold_phi(jnp.zeros(3), 1)
  with pytest.raises(ValueError, match="student_features needs at least 2 samples"):
    ops.pkt_loss(np.zeros((1, 3)), np.zeros((1, 5)))
  with pytest.raises(ValueError, match="same samples"):
    ops.pkt_loss(np.zeros((4, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="temperature"):
    ops.distillation_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.0)


def test_four_devices_sharded_batch_ops_and_gm_sop_head():
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fastnets import ops
mesh = Mesh(np.array(jax.devices()), ("data",))
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16, 5)).astype(np.float32)
y = x + 0.5
t = rng.standard_normal((8, 16, 9)).astype(np.float32)
put = lambda v: jax.device_put(jnp.asarray(v), NamedSharding(mesh, P("data")))
cw = jax.jit(ops.cramer_wold_distance)(put(x), put(y))
np.testing.assert_allclose(np.asarray(cw), np.asarray(ops.cramer_wold_distance(x, y)), rtol=1e-4)
pk = jax.jit(ops.pkt_loss)(put(x), put(t))
np.testing.assert_allclose(np.asarray(pk), np.asarray(ops.pkt_loss(x, t)), rtol=1e-5, atol=1e-7)
a = np.einsum("bij,bkj->bik", x[:, :5], x[:, :5]) + np.eye(5)
s = jax.jit(lambda m: ops.sqrtm_newton_schulz(m, 12))(put(a))
np.testing.assert_allclose(np.asarray(s), np.asarray(ops.sqrtm_eigh(a)), atol=1e-4)
g = jax.jit(jax.grad(lambda m: jnp.sum(ops.sqrtm_newton_schulz(m, 3))))(put(a))
assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))
from fastnets import models
model = models.PoolingCNN(head="gm_sop", channels=(4, 8), sop_dim=4, num_components=3, k=2)
img = rng.standard_normal((8, 12, 12, 1)).astype(np.float32)
v = model.init(jax.random.key(0), img)
out = jax.jit(model.apply)(v, put(img))
np.testing.assert_allclose(np.asarray(out), np.asarray(model.apply(v, img)), rtol=1e-4, atol=1e-5)
print("ok", len(jax.devices()))
""", devices=4)
  assert "ok 4" in out
