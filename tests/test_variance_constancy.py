"""The variance-constancy loss (ops), its tap (nn) and its loss function for fit (train)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops, train


class TapMLP(nn.Module):
  taps: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    for width in (8, 6):
      x = nn.elu(nn.Dense(width)(x))
      if self.taps:
        x = fnn.VarianceConstancy()(x, train)
    return nn.Dense(3)(x)


def test_zero_when_sub_batches_have_equal_variances():
  x_a = jax.random.normal(jax.random.key(0), (6, 4, 3))
  x_b = 2.0 - x_a[::-1]  # a reflection: the same variance per element
  assert float(ops.variance_ratio_loss(x_a, x_b, 0.0, min_beta=0.0)) == pytest.approx(0, abs=1e-10)
  # ... and positive otherwise (the test can fail).
  assert float(ops.variance_ratio_loss(x_a, 3.0 * x_b, 0.0, min_beta=0.0)) > 0.5


def test_matches_the_formula():
  x_a = jax.random.normal(jax.random.key(1), (5, 4))
  x_b = jax.random.normal(jax.random.key(2), (5, 4)) * 2
  beta = jnp.array([0.5, 1.0, 2.0, 0.0])
  va, vb = np.var(np.asarray(x_a), 0, ddof=1), np.var(np.asarray(x_b), 0, ddof=1)
  want = np.mean((1 - va / (vb + np.maximum(np.asarray(beta), ops.MIN_BETA))) ** 2)
  assert float(ops.variance_ratio_loss(x_a, x_b, beta)) == pytest.approx(want, rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(shift=st.floats(-50, 50), seed=st.integers(0, 2**16))
def test_invariant_to_a_common_shift(shift, seed):
  x = jax.random.normal(jax.random.key(seed), (12, 3))
  key = jax.random.key(seed + 1)
  a = ops.variance_constancy_loss(key, x, jnp.ones(3), sub_batch=4)
  b = ops.variance_constancy_loss(key, x + shift, jnp.ones(3), sub_batch=4)
  assert float(a) == pytest.approx(float(b), rel=1e-3, abs=1e-5)


def test_gradients_float64():
  with jax.enable_x64(True):
    x_a = jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)
    x_b = jax.random.normal(jax.random.key(4), (4, 3), jnp.float64)
    beta = jnp.array([0.3, 0.7, 1.1], jnp.float64)
    check_grads(lambda a, b, c: ops.variance_ratio_loss(a, b, c), (x_a, x_b, beta), order=1,
                modes=("rev",))


def test_sub_batches_are_disjoint_and_keyed():
  a, b = ops.sub_batch_indices(jax.random.key(0), 10, 5)
  assert not set(np.asarray(a)) & set(np.asarray(b))
  a2, _ = ops.sub_batch_indices(jax.random.key(1), 10, 5)
  assert not np.array_equal(np.asarray(a), np.asarray(a2))


def test_bad_input():
  x = jnp.ones((8, 3))
  with pytest.raises(ValueError, match="sub_batch"):
    ops.variance_constancy_loss(jax.random.key(0), x, 1.0, sub_batch=5)  # > half of 8
  with pytest.raises(ValueError, match="sub_batch"):
    ops.variance_constancy_loss(jax.random.key(0), x, 1.0, sub_batch=1)
  with pytest.raises(TypeError, match="key"):
    ops.variance_constancy_loss(0, x, 1.0, sub_batch=2)
  with pytest.raises(ValueError, match="activations"):
    ops.variance_constancy_total(jax.random.key(0), [], [], 2)
  with pytest.raises(ValueError, match="weight"):
    train.variance_constancy_loss_fn(TapMLP(), weight=0.0)


def _batch(n=16):
  images = jax.random.normal(jax.random.key(5), (n, 4, 4, 1))
  return {"image": images, "label": jnp.arange(n) % 3}


def test_tap_is_identity_and_sows_only_in_training():
  model = TapMLP()
  x = _batch()["image"]
  variables = model.init(jax.random.key(0), x)
  assert set(variables) == {"params"}
  betas = [v for k, v in jax.tree_util.tree_leaves_with_path(variables)
           if "beta" in jax.tree_util.keystr(k)]
  assert [b.shape for b in betas] == [(8,), (6,)] and all(np.all(np.asarray(b) == 1) for b in betas)
  out_eval, state = model.apply(variables, x, mutable=["vcl"])
  assert not state  # nothing sown at evaluation
  out_train, state = model.apply(variables, x, train=True, mutable=["vcl"])
  np.testing.assert_array_equal(out_eval, out_train)
  acts, bs = ops.sown_pairs(state["vcl"])
  assert [a.shape for a in acts] == [(16, 8), (16, 6)] and len(bs) == 2


def test_loss_fn_under_jit_trains_beta():
  model = TapMLP()
  batch = _batch()
  params = model.init(jax.random.key(0), batch["image"])["params"]
  loss_fn = train.variance_constancy_loss_fn(model, weight=1.0, sub_batch=4)
  grad_fn = jax.jit(jax.grad(lambda p, r: loss_fn(p, {}, batch, r)[0]))
  grads = grad_fn(params, jax.random.key(1))
  beta_grads = [v for k, v in jax.tree_util.tree_leaves_with_path(grads)
                if "beta" in jax.tree_util.keystr(k)]
  assert beta_grads and all(float(jnp.abs(g).sum()) > 0 for g in beta_grads)
  loss, (state, metrics) = jax.jit(loss_fn)(params, {}, batch, jax.random.key(1))
  assert state == {} and float(metrics["vcl"]) > 0
  assert float(loss) == pytest.approx(
      float(ops.cross_entropy_loss(model.apply({"params": params}, batch["image"]),
                                   batch["label"]) + metrics["vcl"]), rel=1e-5)
  # A different step key draws different sub-batches.
  _, (_, other) = jax.jit(loss_fn)(params, {}, batch, jax.random.key(2))
  assert float(other["vcl"]) != float(metrics["vcl"])


def test_model_without_taps_is_refused():
  model = TapMLP(taps=False)
  batch = _batch()
  params = model.init(jax.random.key(0), batch["image"])["params"]
  with pytest.raises(ValueError, match="model.*sowed no activations"):
    train.variance_constancy_loss_fn(model)(params, {}, batch, jax.random.key(0))
