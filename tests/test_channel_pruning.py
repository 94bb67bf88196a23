"""Gate Decorator: gated batch norm, Taylor scores, global ranking, tick-tock, channel surgery."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnets import data, models, nn, ops, train
from tests.conftest import run_python

X_SHAPE = (3, 12, 12, 2)


def _trained_like(model, seed=0):
  """Variables with non-trivial gates, scales, biases and batch statistics."""
  rs = np.random.RandomState(seed)
  x = jnp.asarray(rs.normal(size=X_SHAPE), jnp.float32)
  v = jax.jit(model.init)(jax.random.key(seed), x)
  params = jax.tree.map(
      lambda a: jnp.asarray(a * (1 + 0.3 * rs.normal(size=a.shape)) + 0.1 * rs.normal(
          size=a.shape), jnp.float32), v["params"])
  _, stats = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      {**v, "params": params}, 2 * x + 1)
  return x, {**v, "params": params, **stats}


def _random_masks(variables, seed):
  rs = np.random.RandomState(seed)
  masks = {}
  for name, m in nn.gate_masks(variables).items():
    keep = rs.rand(m.size) < 0.5
    keep[rs.randint(m.size)] = True
    masks[name] = keep
  return masks


@pytest.mark.parametrize("layout", models.PRUNABLE_LAYOUTS)
def test_surgery_equals_gating(layout):
  model = models.PrunableConvNet(layout=layout, widths=(4, 6), stem_width=6, pool_after=(1,))
  x, v = _trained_like(model)
  masked = nn.with_gate_masks(v, _random_masks(v, 1))
  snapshot = copy.deepcopy(jax.tree.map(np.asarray, masked))
  small, sv = models.channel_surgery(model, masked)
  assert small.widths == model.widths_for(nn.gate_masks(masked)) and small.widths != model.widths
  assert not small.gated and model.gated  # the model passed in is unchanged
  jax.tree.map(np.testing.assert_array_equal, snapshot, jax.tree.map(np.asarray, masked))
  assert nn.GATE_COLLECTION not in sv
  # Inference and training mode (batch statistics), under jit.
  both = lambda m: jax.jit(lambda v, x: (m.apply(v, x), m.apply(v, x, train=True,
                                                                 mutable=["batch_stats"])[0]))
  for got, want in zip(both(small)(sv, x), both(model)(masked, x)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # The parameter count fell, and the FLOP count is that of the small model.
  count = lambda t: sum(a.size for a in jax.tree.leaves(t["params"]))
  assert count(sv) < count(v)
  flops = models.pruned_conv_flops(model, nn.gate_masks(masked), X_SHAPE)
  assert flops == ops.conv_flops_of(lambda v, x: small.apply(v, x), sv, x)
  assert flops < models.pruned_conv_flops(model, nn.gate_masks(v), X_SHAPE)


def test_surgery_rejects_models_without_gates():
  model = models.PrunableConvNet(widths=(3, 4), gated=False)
  v = model.init(jax.random.key(0), jnp.zeros(X_SHAPE))
  with pytest.raises(ValueError, match="gated"):
    models.channel_surgery(model, v)
  gated = model.clone(gated=True)
  with pytest.raises(ValueError, match="channel_mask"):
    models.channel_surgery(gated, v)
  with pytest.raises(ValueError, match="channel_mask"):
    nn.gate_masks(v)
  gv = gated.init(jax.random.key(0), jnp.zeros(X_SHAPE))
  with pytest.raises(ValueError, match="keeps no channel"):
    models.channel_surgery(gated, nn.with_gate_masks(gv, {"gbn0": np.zeros(3, bool)}))
  with pytest.raises(ValueError, match="unknown gates"):
    nn.with_gate_masks(gv, {"nope": np.ones(3, bool)})


def test_gated_batch_norm_mask_zeroes_channel_and_its_gate_gradient():
  layer = nn.GatedBatchNorm()
  x = jax.random.normal(jax.random.key(0), (4, 5, 3))
  v = layer.init(jax.random.key(1), x)
  v = nn.with_gate_masks(v, {"": np.array([True, False, True])})
  y = layer.apply(v, x)
  assert np.all(y[..., 1] == 0) and np.all(y[..., 0] != 0)
  g = jax.grad(lambda p: jnp.sum(layer.apply({**v, "params": p}, x) ** 2))(v["params"])
  assert g["gate"][1] == 0 and g["gate"][0] != 0


def test_taylor_scores_and_bad_input():
  s = ops.taylor_scores({"a": jnp.array([2.0, -1.0])}, {"a": jnp.array([0.5, 3.0])})
  np.testing.assert_allclose(s["a"], [1.0, 3.0])
  with pytest.raises(ValueError, match="same gates"):
    ops.taylor_scores({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
  with pytest.raises(ValueError, match="shape"):
    ops.taylor_scores({"a": jnp.ones(2)}, {"a": jnp.ones(3)})


def test_global_ranking_prunes_lowest_and_keeps_layer_minimum():
  scores = {"a": np.array([0.1, 5.0, 0.2, 0.3]), "b": np.array([0.05, 4.0])}
  alive = {"a": np.ones(4, bool), "b": np.ones(2, bool)}
  out = ops.global_channel_ranking(scores, alive, 2, min_keep=0.5)
  # b keeps ceil(0.5 * 2) = 1: its 0.05 goes first, then a's 0.1.
  np.testing.assert_array_equal(out["a"], [False, True, True, True])
  np.testing.assert_array_equal(out["b"], [False, True])
  assert alive["a"].all() and alive["b"].all()  # inputs untouched
  # Only 2 + 1 channels can go at min_keep 0.5.
  ops.global_channel_ranking(scores, alive, 3, min_keep=0.5)
  with pytest.raises(ValueError, match="per-layer minimum"):
    ops.global_channel_ranking(scores, alive, 4, min_keep=0.5)
  with pytest.raises(ValueError, match="min_keep"):
    ops.global_channel_ranking(scores, alive, 1, min_keep=0.0)
  with pytest.raises(ValueError, match="num_prune"):
    ops.global_channel_ranking(scores, alive, -1)
  # Already-removed channels are not removed twice.
  again = ops.global_channel_ranking(scores, out, 1, min_keep=0.5)
  np.testing.assert_array_equal(again["a"], [False, True, False, True])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(0, 10**6),
       st.floats(0.05, 1.0))
def test_global_ranking_counts(sizes, seed, min_keep):
  rs = np.random.RandomState(seed % 2**31)
  scores = {f"l{i}": rs.rand(n) for i, n in enumerate(sizes)}
  alive = {k: rs.rand(v.size) < 0.8 for k, v in scores.items()}
  for k in alive:
    alive[k][0] = True
  removable = sum(max(0, int(a.sum()) - ops.layer_minimum(a.size, min_keep))
                  for a in alive.values())
  n = removable // 2
  out = ops.global_channel_ranking(scores, alive, n, min_keep)
  assert sum(int(a.sum()) for a in alive.values()) - sum(int(a.sum()) for a in out.values()) == n
  for k, a in out.items():
    assert not np.any(a & ~alive[k])  # never revives a channel
    assert a.sum() >= min(alive[k].sum(), ops.layer_minimum(a.size, min_keep))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(0, 10**6),
       st.floats(0.05, 1.0), st.sampled_from([2, 4, 8]), st.floats(0.0, 1.0))
def test_channel_multiple_keeps_multiples_of_the_top_channels(sizes, seed, min_keep, m, frac):
  rs = np.random.RandomState(seed % 2**31)
  scores = {f"l{i}": rs.rand(n) for i, n in enumerate(sizes)}
  alive = {k: np.ones(v.size, bool) for k, v in scores.items()}
  possible = sum(max(0, a.size - ops.layer_minimum(a.size, min_keep, m))
                 for a in alive.values() if a.size > ops.layer_minimum(a.size, min_keep, m))
  n = int(frac * possible)
  out = ops.global_channel_ranking(scores, alive, n, min_keep, channel_multiple=m)
  removed = sum(a.size - int(a.sum()) for a in out.values())
  assert n <= removed <= max(n + m - 1, 0) or (n == 0 and removed == 0)
  for k, a in out.items():
    kept = int(a.sum())
    floor = ops.layer_minimum(a.size, min_keep, m)
    assert kept == a.size or (kept % m == 0 and kept >= floor)
    if kept < a.size:  # the kept channels are the layer's highest-scored ones
      assert scores[k][a].min() >= scores[k][~a].max()
  with pytest.raises(ValueError, match="per-layer minimum"):
    ops.global_channel_ranking(scores, alive, possible + 1, min_keep, channel_multiple=m)


def test_channel_multiple_chunks_and_bad_input():
  scores = {"a": np.arange(12.0), "b": np.array([0.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0])}
  alive = {"a": np.ones(12, bool), "b": np.ones(8, bool)}
  # m = 4: a's chunks are [0..3] (mean 1.5), [4..7] (5.5); b's (8 -> 4) has mean 7.25. Removing
  # one channel takes a whole chunk, a's lowest.
  out = ops.global_channel_ranking(scores, alive, 1, 0.1, channel_multiple=4)
  np.testing.assert_array_equal(out["a"], np.arange(12) >= 4)
  assert out["b"].all()
  out = ops.global_channel_ranking(scores, alive, 5, 0.1, channel_multiple=4)
  np.testing.assert_array_equal(out["a"], np.arange(12) >= 8)
  # An odd alive count first drops to the next multiple (11 -> 8: its 3 lowest).
  odd = {"a": np.arange(12) != 0, "b": alive["b"]}
  out = ops.global_channel_ranking(scores, odd, 1, 0.1, channel_multiple=4)
  assert out["a"].sum() == 8 and not out["a"][:4].any()
  # prune_to_flops in chunks, at least one chunk under a small budget.
  flops = lambda al: sum(int(v.sum()) for v in al.values())
  got, removed = ops.prune_to_flops(scores, alive, flops, 14, 0.1, channel_multiple=4)
  assert flops(got) == 12 and removed == 8
  got, removed = ops.prune_to_flops(scores, alive, flops, 0, 0.1, max_prune=1,
                                    channel_multiple=4)
  assert removed == 4
  # channel_multiple 1 is the per-channel ranking.
  for n in range(6):
    np.testing.assert_equal(ops.global_channel_ranking(scores, alive, n, 0.1),
                            ops.global_channel_ranking(scores, alive, n, 0.1, channel_multiple=1))
  for bad in (0, -8, 2.5, True, "8"):
    with pytest.raises(ValueError, match="channel_multiple"):
      ops.global_channel_ranking(scores, alive, 1, 0.1, channel_multiple=bad)
    with pytest.raises(ValueError, match="channel_multiple"):
      train.OneShotPrune(step=1, score_fn=None, target_flops=1, flops_fn=flops,
                         channel_multiple=bad)
  with pytest.raises(ValueError, match="out of reach"):
    ops.prune_to_flops(scores, alive, flops, 7, 0.1, channel_multiple=8)
  tick = dict(tick_fraction=0.1, target_flops=1, flops_fn=flops, score_batches=list, model=None)
  with pytest.raises(ValueError, match="start_step and tock_steps"):
    train.TickTock(start_step=0, tock_steps=1, **tick)
  with pytest.raises(ValueError, match="min_keep"):
    train.TickTock(start_step=1, tock_steps=1, min_keep=1.5, **tick)
  with pytest.raises(ValueError, match="channel_multiple"):
    train.TickTock(start_step=1, tock_steps=1, channel_multiple=0, **tick)


def test_prune_to_flops_removes_fewest():
  scores = {"a": np.arange(6.0), "b": np.arange(4.0) + 0.5}
  alive = {"a": np.ones(6, bool), "b": np.ones(4, bool)}
  flops = lambda m: 10 * m["a"].sum() * m["b"].sum()
  out, n = ops.prune_to_flops(scores, alive, flops, 120)
  assert flops(out) <= 120
  assert flops(ops.global_channel_ranking(scores, alive, n - 1)) > 120
  out2, n2 = ops.prune_to_flops(scores, alive, flops, 120, max_prune=1)
  assert n2 == 1 and flops(out2) > 120
  with pytest.raises(ValueError, match="out of reach"):
    ops.prune_to_flops(scores, alive, flops, 1)


def test_tick_tock_in_fit_reaches_flops_target(mnist):
  model = models.PrunableConvNet(widths=(4, 6), pool_after=(0, 1))
  shape = (1,) + mnist.image_shape
  full = models.pruned_conv_flops(model, {n: np.ones(w, bool) for n, w in
                                          zip(model.gate_names(), model.widths)}, shape)
  cfg = train.TrainConfig(steps=8, batch_size=16, eval_batch_size=1000, log_every=4,
                          learning_rate=1e-2, checkpoint_every=0)
  tt = train.TickTock(
      start_step=2, tock_steps=2, tick_fraction=0.2, target_flops=0.5 * full,
      flops_fn=lambda alive: models.pruned_conv_flops(model, alive, shape),
      score_batches=lambda tick: data.train_batches(
          mnist, 16, 100 + tick, num_steps=1), model=model)
  plain = train.classification_loss(model)
  res = train.fit(model, mnist, cfg, step_variants={
      "plain": plain, "tock": train.gate_l1_loss(model, 1e-3)}, choose_variant=tt.choose_variant,
      callbacks=[tt], verbose=False)
  assert tt.done and tt.history[-1]["flops"] <= 0.5 * full
  assert [h["step"] for h in tt.history] == list(range(2, 2 + 2 * len(tt.history), 2))
  masks = nn.gate_masks({"params": res.state.params, **res.state.model_state})
  assert tt.history[-1]["alive"] == {k: int(v.sum()) for k, v in masks.items()}
  # Pruned channels keep scoring 0 (their output is masked).
  variables = {"params": res.state.params, **res.state.model_state}
  scores = train.taylor_channel_scores(model, variables, [next(iter(
      data.eval_batches(mnist, mnist.validation, 64)))])
  for k in masks:
    assert np.all(scores[k][~masks[k]] == 0) and np.any(scores[k][masks[k]] > 0)
  with pytest.raises(ValueError, match="tick_fraction"):
    train.TickTock(start_step=1, tock_steps=1, tick_fraction=0.0, target_flops=1,
                   flops_fn=len, score_batches=list, model=model)


def test_surgery_on_four_devices():
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fastnets import models, nn
assert jax.device_count() == 4
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
model = models.PrunableConvNet(layout="residual", widths=(4, 6), stem_width=4, pool_after=(1,))
x = jax.random.normal(jax.random.key(0), (8, 12, 12, 2))
v = model.init(jax.random.key(1), x)
v = nn.with_gate_masks(v, {"block0_gbn": np.array([1, 0, 1, 0], bool),
                           "block1_gbn": np.array([0, 1, 1, 0, 1, 1], bool)})
small, sv = models.channel_surgery(model, v)
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
a = jax.jit(lambda v, x: model.apply(v, x))(v, xs)
b = jax.jit(lambda v, x: small.apply(v, x))(sv, xs)
np.testing.assert_allclose(a, b, atol=1e-5)
print("OK", small.widths)
""", devices=4)
  assert "OK (2, 4)" in out
