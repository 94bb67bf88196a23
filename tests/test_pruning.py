"""Tests of magnitude pruning, the Zhu & Gupta schedule, masked optimizers, the sparsity report."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnets import ops
from fastnets.ops import pruning


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return {
    "Conv_0": {"kernel": f(3, 3, 2, 4), "bias": f(4)},
    "BatchNorm_0": {"scale": f(4), "bias": f(4)},
    "Conv_1": {"kernel": 10.0 * f(3, 3, 4, 8), "bias": f(8)},
    "Dense_0": {"kernel": 0.1 * f(8, 5), "bias": f(5)},
  }


@settings(max_examples=10, deadline=None)
@given(size=st.integers(1, 300), sparsity=st.floats(0.0, 0.999), seed=st.integers(0, 2**31 - 1),
       ties=st.booleans())
def test_magnitude_mask_prunes_exact_count_of_smallest(size, sparsity, seed, ties):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(size).astype(np.float32)
  if ties:
    w = np.round(w)  # many equal magnitudes
  mask = np.asarray(ops.magnitude_mask(w, sparsity))
  expected_pruned = int(np.floor(sparsity * size + 0.5))
  assert (~mask).sum() == expected_pruned
  if 0 < expected_pruned < size:
    assert np.abs(w[~mask]).max() <= np.abs(w[mask]).min()


def test_magnitude_mask_traced_sparsity_matches_concrete():
  w = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, 6)), jnp.float32)
  f = jax.jit(ops.magnitude_mask)
  for s in (0.0, 0.3, 0.9):
    np.testing.assert_array_equal(f(w, s), ops.magnitude_mask(w, s))


def test_layer_scope_prunes_kernels_only():
  params = _params()
  pruned, masks = ops.magnitude_prune(params, 0.75)
  assert masks["Conv_0"]["bias"] is None and masks["BatchNorm_0"]["scale"] is None
  for name in ("Conv_0", "Conv_1", "Dense_0"):
    k = np.asarray(pruned[name]["kernel"])
    assert (k == 0).sum() == int(np.floor(0.75 * k.size + 0.5))
    np.testing.assert_array_equal(k != 0, np.asarray(masks[name]["kernel"]))
    np.testing.assert_array_equal(pruned[name]["bias"], params[name]["bias"])
  np.testing.assert_array_equal(pruned["BatchNorm_0"]["scale"], params["BatchNorm_0"]["scale"])


def test_global_scope_uses_one_threshold():
  params = _params()
  pruned, masks = ops.magnitude_prune(params, 0.6, scope="global")
  kernels = [np.asarray(params[n]["kernel"]) for n in ("Conv_0", "Conv_1", "Dense_0")]
  keep = [np.asarray(masks[n]["kernel"]) for n in ("Conv_0", "Conv_1", "Dense_0")]
  total = sum(k.size for k in kernels)
  assert sum((~m).sum() for m in keep) == int(np.floor(0.6 * total + 0.5))
  pruned_max = max(np.abs(k[~m]).max() for k, m in zip(kernels, keep) if (~m).any())
  kept_min = min(np.abs(k[m]).min() for k, m in zip(kernels, keep) if m.any())
  assert pruned_max <= kept_min
  # Layers of different scale end up with different sparsities (Conv_1 is 10x, Dense_0 0.1x).
  sp = [1 - m.mean() for m in keep]
  assert sp[1] < 0.6 < sp[2]


def test_per_layer_mapping_and_custom_predicate():
  params = _params()
  masks = ops.magnitude_masks(params, {"Conv_1/kernel": 0.5})
  assert masks["Conv_0"]["kernel"].all() and not masks["Conv_1"]["kernel"].all()
  only_dense = lambda path, leaf: pruning.path_to_str(path) == "Dense_0/kernel"
  masks = ops.magnitude_masks(params, 0.5, prunable=only_dense)
  assert masks["Conv_0"]["kernel"] is None and masks["Dense_0"]["kernel"].mean() == 0.5


def test_pruning_bad_input():
  params = _params()
  for bad in (1.0, -0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="sparsity"):
      ops.magnitude_prune(params, bad)
  with pytest.raises(ValueError, match="scope"):
    ops.magnitude_masks(params, 0.5, scope="channel")
  with pytest.raises(ValueError, match="scope='layer'"):
    ops.magnitude_masks(params, {"Conv_1/kernel": 0.5}, scope="global")
  with pytest.raises(ValueError, match="final_sparsity"):
    ops.ZhuGuptaSchedule(final_sparsity=1.0)
  with pytest.raises(ValueError, match="begin_step"):
    ops.ZhuGuptaSchedule(final_sparsity=0.5, begin_step=10, end_step=5)
  with pytest.raises(ValueError, match="frequency"):
    ops.ZhuGuptaSchedule(final_sparsity=0.5, frequency=0)


def test_zhu_gupta_schedule():
  sched = ops.ZhuGuptaSchedule(final_sparsity=0.9, begin_step=100, end_step=1100,
                               initial_sparsity=0.1, frequency=100)
  assert float(sched(0)) == pytest.approx(0.1)
  assert float(sched(100)) == pytest.approx(0.1)
  assert float(sched(1100)) == pytest.approx(0.9)
  assert float(sched(5000)) == pytest.approx(0.9)
  # Eq. (1) at t0 + n dt / 2: s_f + (s_i - s_f) / 8.
  assert float(sched(600)) == pytest.approx(0.9 - 0.8 / 8, abs=1e-6)
  # Held constant between pruning steps, non-decreasing overall.
  assert float(sched(650)) == float(sched(600))
  values = np.asarray(jax.vmap(sched)(jnp.arange(0, 1300, 10)))
  assert np.all(np.diff(values) >= -1e-7)
  steps = jnp.arange(0, 1300)
  pruning_steps = np.nonzero(np.asarray(jax.vmap(sched.is_pruning_step)(steps)))[0]
  np.testing.assert_array_equal(pruning_steps, np.arange(100, 1101, 100))


def _quadratic_problem(params):
  target = jax.tree.map(lambda p: p + 0.5, params)
  return lambda p: sum(jnp.sum((a - b) ** 2)
                       for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))


def test_masked_updates_keep_pruned_weights_at_zero():
  params = _params()
  pruned, masks = ops.magnitude_prune(params, 0.8)
  loss = _quadratic_problem(params)
  for tx in (ops.masked_updates(optax.sgd(0.1, momentum=0.9), masks),
             ops.masked_updates(optax.adamw(0.05, weight_decay=0.1))):  # masks from params' zeros
    state = tx.init(pruned)
    p = pruned
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(5):
      updates, state = step(p, state)
      p = optax.apply_updates(p, updates)
    for name in ("Conv_0", "Conv_1", "Dense_0"):
      m = np.asarray(masks[name]["kernel"])
      k = np.asarray(p[name]["kernel"])
      assert np.all(k[~m] == 0)
      assert not np.allclose(k[m], np.asarray(pruned[name]["kernel"])[m])  # the rest trains
    assert not np.allclose(p["Conv_0"]["bias"], pruned["Conv_0"]["bias"])
    got = ops.pruning_masks(state)
    np.testing.assert_array_equal(got["Conv_1"]["kernel"], masks["Conv_1"]["kernel"])


def test_gradual_pruning_follows_schedule():
  params = _params()
  loss = _quadratic_problem(params)
  sched = ops.ZhuGuptaSchedule(final_sparsity=0.8, begin_step=2, end_step=10, frequency=2)
  tx = optax.chain(optax.clip_by_global_norm(10.0),
                   ops.gradual_magnitude_pruning(optax.sgd(0.05, momentum=0.9), sched))
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  p = params
  last_zero = None
  for t in range(14):
    p, state = step(p, state)
    k = np.asarray(p["Conv_1"]["kernel"])
    zero = k == 0
    target = float(sched(t))
    assert zero.sum() == int(np.floor(target * k.size + 0.5)), t
    if last_zero is not None:
      assert np.all(zero[last_zero]), t  # pruned weights stay pruned
    last_zero = zero
    masks = ops.pruning_masks(state)
    np.testing.assert_array_equal(np.asarray(masks["Conv_1"]["kernel"]), ~zero)
  report = ops.sparsity_report(p)
  assert report["prunable"]["sparsity"] == pytest.approx(0.8, abs=0.01)
  with pytest.raises(ValueError, match="params"):
    ops.gradual_magnitude_pruning(optax.sgd(0.1), sched).update(params, state[1])


def test_sparsity_report():
  params = _params()
  pruned, masks = ops.magnitude_prune(params, 0.5)
  rep = ops.sparsity_report(pruned)
  rows = {r["path"]: r for r in rep["layers"]}
  assert rows["Conv_1/kernel"]["prunable"] and not rows["Conv_1/bias"]["prunable"]
  assert rows["Conv_1/kernel"]["nonzero"] == 144 and rows["Conv_1/kernel"]["size"] == 288
  size = sum(np.size(a) for a in jax.tree.leaves(params))
  assert rep["total"]["size"] == size
  assert rep["prunable"]["sparsity"] == pytest.approx(0.5, abs=0.01)
  rep_masks = ops.sparsity_report(params, masks)  # counts the masks, not the dense zeros
  assert rep_masks["prunable"]["nonzero"] == rep["prunable"]["nonzero"]
  text = ops.format_sparsity_report(rep)
  assert "Conv_1/kernel" in text and "total" in text and "50.00%" in text
