"""Dynamic sparse training: ERK, SET / RigL prune-regrow, the optax wrapper, EDST, ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnets import models, ops
from fastnets import nn as fnn
from tests.conftest import run_python


def _params(shapes, seed=0):
  rs = np.random.RandomState(seed)
  return {"params": {f"layer{i}": {"kernel": jnp.asarray(rs.normal(size=s), jnp.float32),
                                   "bias": jnp.zeros(s[-1])}
                     for i, s in enumerate(shapes)}}


SHAPES = [(3, 3, 2, 8), (3, 3, 8, 16), (64, 32), (32, 10)]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 40)), min_size=1, max_size=4),
       st.floats(0.01, 1.0))
def test_erk_counts_sum_exactly(shapes, density):
  params = _params(shapes)
  counts = ops.erk_counts(params, density)
  total = sum(a * b for a, b in shapes)
  assert sum(counts.values()) == int(np.floor(density * total + 0.5))
  for i, (a, b) in enumerate(shapes):
    assert 0 <= counts[f"params/layer{i}/kernel"] <= a * b


def test_erk_prefers_small_layers_and_rejects_bad_density():
  d = ops.erk_densities(_params(SHAPES), 0.2)
  assert d["params/layer0/kernel"] > d["params/layer1/kernel"]
  assert d["params/layer3/kernel"] > d["params/layer2/kernel"]
  for bad in (0.0, -0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="density"):
      ops.erk_counts(_params(SHAPES), bad)
  assert sum(ops.erk_counts(_params(SHAPES), 1.0).values()) == sum(
      int(np.prod(s)) for s in SHAPES)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_prune_regrow_keeps_counts_exactly(method):
  params = _params(SHAPES)
  counts = ops.erk_counts(params, 0.3)
  masks = ops.random_sparse_masks(jax.random.key(0), params, counts)
  grads = _params(SHAPES, seed=1)
  update = jax.jit(lambda k, p, g, m, r: ops.prune_regrow_masks(k, p, g, m, r, method))
  new = update(jax.random.key(1), params, grads, masks, 0.5)
  for path, m in jax.tree_util.tree_flatten_with_path(new)[0]:
    name = ops.pruning.path_to_str(path)
    old = dict((ops.pruning.path_to_str(p), x)
               for p, x in jax.tree_util.tree_flatten_with_path(masks)[0])[name]
    assert int(m.sum()) == counts[name]
    changed = int((m & ~old).sum())
    assert changed >= 1  # the topology moved
  if method == "rigl":  # Grown weights are the largest-|grad| inactive ones.
    m0, n0 = masks["params"]["layer2"]["kernel"], new["params"]["layer2"]["kernel"]
    g = np.abs(np.asarray(grads["params"]["layer2"]["kernel"]))
    grown = np.asarray(n0 & ~m0)
    assert g[grown].min() >= np.median(g[~np.asarray(m0)])


def test_dst_masked_weights_get_no_update():
  params = _params([(16, 8), (8, 4)])
  counts = ops.erk_counts(params, 0.4)
  masks = ops.random_sparse_masks(jax.random.key(0), params, counts)
  sched = ops.DSTSchedule(update_every=3, death_rate=0.5, end_step=100)
  tx = ops.dynamic_sparse_training(optax.adam(0.1), masks, sched, "rigl")
  state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (32, 16))

  def loss(p):
    h = jnp.tanh(x @ p["params"]["layer0"]["kernel"] + p["params"]["layer0"]["bias"])
    return jnp.mean((h @ p["params"]["layer1"]["kernel"]) ** 2)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s, u

  moved = False
  for t in range(7):
    before = state.masks
    params, state, u = step(params, state)
    for name in ("layer0", "layer1"):
      w = np.asarray(params["params"][name]["kernel"])
      m_new = np.asarray(state.masks["params"][name]["kernel"])
      m_old = np.asarray(before["params"][name]["kernel"])
      assert np.all(w[~m_new] == 0)  # inactive weights are exactly zero
      assert int(m_new.sum()) == counts[f"params/{name}/kernel"]
      if t not in (3, 6):  # no topology update: masked weights get no update at all
        assert np.all(np.asarray(u["params"][name]["kernel"])[~m_old] == 0) or t == 0
        np.testing.assert_array_equal(m_new, m_old)
      else:
        moved |= bool(np.any(m_new != m_old))
        assert np.all(w[m_new & ~m_old] == 0)  # grown weights start at exactly zero
      if t < 3:  # before any regrowth: gradients are masked before the optimizer sees them
        mu = np.asarray(state.inner_state[0].mu["params"][name]["kernel"])
        assert np.all(mu[~m_old] == 0)
  assert moved
  with pytest.raises(ValueError, match="method"):
    ops.dynamic_sparse_training(optax.sgd(1.0), masks, sched, "magic")


def test_edst_schedule_and_bad_ticket_count():
  s = ops.EDSTSchedule(total_steps=100, exploration_steps=40, num_tickets=3, update_every=5,
                       death_rate=0.5, refine_death_rate=0.8)
  assert s.ticket_steps() == [60, 80, 100]
  rates = np.asarray(jax.vmap(s.death_rate_at)(jnp.arange(101)))
  assert rates[60] == pytest.approx(0.8) and rates[80] == pytest.approx(0.8)
  assert rates[40] != pytest.approx(0.8) and rates[100] == 0
  assert np.all(rates[[1, 2, 3, 4, 41, 61]] == 0) and rates[5] > 0 and rates[45] > 0
  with pytest.raises(ValueError, match="num_tickets=13 is more than the schedule allows"):
    ops.EDSTSchedule(total_steps=100, exploration_steps=40, num_tickets=13, update_every=5)
  with pytest.raises(ValueError, match="death_rate"):
    ops.DSTSchedule(update_every=5, death_rate=1.5)


def test_ensemble_and_disagreement():
  logits = jnp.array([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 3.0]]])
  probs = ops.ensemble_probabilities(logits)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(probs[0], [0.5, 0.5], rtol=1e-6)
  preds = jnp.array([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
  assert float(ops.pairwise_disagreement(preds)) == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3)
  with pytest.raises(ValueError, match="members >= 2"):
    ops.pairwise_disagreement(preds[:1])


def test_dst_on_four_devices():
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from fastnets import models, ops
from fastnets import nn as fnn
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
params = {"params": {"d": {"kernel": jnp.ones((8, 4)) * jnp.arange(32.).reshape(8, 4)}}}
masks = ops.random_sparse_masks(jax.random.key(0), params, ops.erk_counts(params, 0.5))
tx = ops.dynamic_sparse_training(optax.sgd(0.1), masks, ops.DSTSchedule(update_every=1), "set")
x = jax.device_put(jax.random.normal(jax.random.key(1), (16, 8)), NamedSharding(mesh, P("data")))
@jax.jit
def step(p, s):
  g = jax.grad(lambda p: jnp.mean((x @ p["params"]["d"]["kernel"]) ** 2))(p)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s
s = tx.init(params)
for _ in range(3):
  params, s = step(params, s)
m = np.asarray(s.masks["params"]["d"]["kernel"])
w = np.asarray(params["params"]["d"]["kernel"])
print("OK", int(m.sum()), bool(np.all(w[~m] == 0)))
""", devices=4)
  assert "OK 16 True" in out


def test_dst_ticket_runs_through_the_sparse_inference_path():
  """A RigL ticket of a small CNN: its masks from the optimizer state, its convolutions through
  `nn.sparse_apply` (the sparse conv path), outputs equal to the masked dense model's."""
  model = models.SmallCNN(channels=(8, 16), hidden=16, dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (6, 12, 12, 1))
  labels = jnp.arange(6) % 10
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  counts = ops.erk_counts(params, 0.3)
  masks = ops.random_sparse_masks(jax.random.key(2), params, counts)
  sched = ops.DSTSchedule(update_every=1, death_rate=0.5, end_step=100)
  tx = optax.chain(optax.identity(),  # dst_masks finds the DST state inside a chain
                   ops.dynamic_sparse_training(optax.sgd(0.5), masks, sched, "rigl"))
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda p: ops.cross_entropy_loss(model.apply({"params": p}, x), labels))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(2):
    params, state = step(params, state)
  ticket = ops.dst_masks(state)
  assert ticket is not masks and not all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ticket), jax.tree.leaves(masks)))
  variables = {"params": params}
  sparse_vars = fnn.sparsify_variables(variables, masks=ticket)
  is_sparse = lambda a: isinstance(a, ops.SparseKernel)
  kernels = [a for a in jax.tree.leaves(sparse_vars, is_leaf=is_sparse) if is_sparse(a)]
  assert len(kernels) == 2  # both convs; the dense layers stay dense
  for k, name in zip(kernels, ("Conv_0", "Conv_1")):
    assert int(np.sum(np.asarray(k.values) != 0)) <= counts[f"{name}/kernel"]
  dense = jax.jit(model.apply)({"params": ops.apply_masks(params, ticket)}, x)
  got = jax.jit(lambda v, x: fnn.sparse_apply(model, v, x, impl="auto"))(sparse_vars, x)
  np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)
  # The variables passed in are not modified.
  assert not any(is_sparse(a) for a in jax.tree.leaves(variables, is_leaf=is_sparse))


def test_dst_masks_and_sparsify_bad_input():
  params = _params([(3, 3, 2, 4)])
  with pytest.raises(ValueError, match="DSTState"):
    ops.dst_masks(optax.adam(0.1).init(params))
  masks = ops.random_sparse_masks(jax.random.key(0), params, ops.erk_counts(params, 0.5))
  two = (ops.dynamic_sparse_training(optax.sgd(0.1), masks, ops.DSTSchedule(2, 0.5, 10))
         .init(params),) * 2
  with pytest.raises(ValueError, match="exactly one"):
    ops.dst_masks(two)
  with pytest.raises(ValueError, match="masks must be"):
    fnn.sparsify_variables(params, masks={"other": None})
