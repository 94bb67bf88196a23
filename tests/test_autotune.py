"""Tests of the G-BFS tile search, its on-disk cache and the sparse-conv autotuner."""

import dataclasses
import itertools
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from fastnets import ops
from fastnets.kernels import autotune
from fastnets.kernels.sparse_conv import SparseConvConfig, default_config


def _grid_neighbors(lo=0, hi=9):
  def neighbors(c):
    for d in range(len(c)):
      for step in (-1, 1):
        v = c[d] + step
        if lo <= v <= hi:
          yield c[:d] + (v,) + c[d + 1:]
  return neighbors


def test_gbfs_finds_optimum_of_toy_cost_with_few_measurements():
  opt = (7, 2, 5)
  calls = []

  def cost(c):
    calls.append(c)
    return sum((a - b) ** 2 for a, b in zip(c, opt)) + 1.0

  res = autotune.gbfs((0, 0, 0), _grid_neighbors(), cost, budget=200)
  assert res.best == opt and res.best_cost == 1.0
  assert len(set(calls)) == len(calls) == res.num_evaluated  # nothing measured twice
  assert res.num_evaluated < 10**3 // 4  # a small part of the 1000-point space


def test_gbfs_budget_infeasible_and_all_failing():
  def cost(c):
    if c[0] == 1:
      raise RuntimeError("does not compile")
    return -sum(c) if c[0] < 5 else math.inf

  res = autotune.gbfs((0, 0), _grid_neighbors(), cost, budget=3)
  assert res.num_evaluated == 3
  assert dict(res.history)[(1, 0)] == math.inf  # a failure is infeasible, not an error
  assert res.best == (0, 1)
  # Infeasible states are not expanded: from (0,) the only neighbour fails, the search stops.
  res = autotune.gbfs((0,), _grid_neighbors(), cost, budget=10)
  assert res.num_evaluated == 2 and res.best == (0,)
  with pytest.raises(ValueError, match="finite"):
    autotune.gbfs((0,), _grid_neighbors(), lambda c: math.inf, budget=5)
  with pytest.raises(ValueError, match="budget"):
    autotune.gbfs((0,), _grid_neighbors(), lambda c: 0.0, budget=0)


def test_cache_round_trip_and_default_path(tmp_path, monkeypatch):
  path = tmp_path / "sub" / "tune.json"
  cache = autotune.AutotuneCache(path)
  assert cache.get("k") is None
  cache.put("k", {"config": {"block_h": 2}, "cost": 1.5})
  cache.put("j", {"config": {}, "cost": 2.0})
  assert autotune.AutotuneCache(path).get("k") == {"config": {"block_h": 2}, "cost": 1.5}
  assert set(json.loads(path.read_text())) == {"j", "k"}
  path.write_text("{not json")
  assert autotune.AutotuneCache(path).load() == {}
  monkeypatch.setenv("FASTNETS_AUTOTUNE_CACHE", str(tmp_path / "env.json"))
  assert autotune.AutotuneCache().path == str(tmp_path / "env.json")
  monkeypatch.delenv("FASTNETS_AUTOTUNE_CACHE")
  assert autotune.default_cache_path().endswith(".cache/fastnets/autotune.json")


def test_sparsity_bucket_and_key():
  assert autotune.sparsity_bucket(0.93) == 0.9
  assert autotune.sparsity_bucket(0.95) == 0.95
  assert autotune.sparsity_bucket(0.0) == 0.0
  with pytest.raises(ValueError, match="sparsity"):
    autotune.sparsity_bucket(1.2)
  k = lambda s, dev="gpu:H100": autotune.cache_key(
    (1, 8, 8, 4), (3, 3, 4, 8), (1, 1), "SAME", s, jnp.float32, device_kind=dev)
  assert k(0.91) == k(0.94) != k(0.96)
  assert k(0.91) != k(0.91, dev="gpu:A100")


def test_neighbors_respect_bounds():
  nb = autotune.sparse_conv_neighbors((5, 20), 6, max_elems=512)
  seen = set()
  frontier = [SparseConvConfig(1, 1, 1, 1)]
  while frontier:  # the whole reachable space
    c = frontier.pop()
    if c in seen:
      continue
    seen.add(c)
    frontier.extend(nb(c))
  for c in seen:
    assert c.block_h <= 8 and c.block_w <= 32 and c.block_o <= 8 and c.num_warps <= 8
    assert c.block_h * c.block_w * c.block_o <= 512
  assert SparseConvConfig(8, 32, 2, 8) in seen


def _problem(seed=0, sparsity=0.9, shape=(3, 3, 8, 16)):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(shape).astype(np.float32)
  w[rng.random(shape) < sparsity] = 0
  return ops.to_sparse_kernel(w)


def test_cost_model_is_sane_and_search_beats_worst():
  sk = _problem()
  x_shape = (8, 56, 56, 8)
  cost = autotune.sparse_conv_cost_model(x_shape, sk)
  space = [SparseConvConfig(bh, bw, bo, nw) for bh, bw, bo, nw in itertools.product(
    [1, 2, 4, 8, 16], [4, 8, 16, 32, 64], [1, 2, 4, 8, 16], [1, 2, 4, 8])]
  costs = {c: cost(c) for c in space}
  assert all(math.isfinite(v) and v > 0 for v in costs.values())
  res = autotune.gbfs(default_config((56, 56), 16), autotune.sparse_conv_neighbors((56, 56), 16),
                      cost, budget=40)
  best = min(costs.values())
  assert res.best_cost <= 1.5 * best  # near the exhaustive optimum with 40 of 500 measurements
  assert res.best_cost < max(costs.values()) / 4
  # More nonzeros cost more.
  denser = autotune.sparse_conv_cost_model(x_shape, _problem(sparsity=0.5))
  assert denser(res.best) > res.best_cost


def test_autotune_caches_best_config(tmp_path):
  sk = _problem()
  calls = []

  def toy(cfg):
    calls.append(cfg)
    return abs(math.log2(cfg.block_h) - 1) + abs(math.log2(cfg.block_w) - 3) + abs(
      math.log2(cfg.block_o) - 2) + abs(math.log2(cfg.num_warps) - 1)

  path = tmp_path / "cache.json"
  best = autotune.autotune_sparse_conv((2, 16, 16, 8), sk, cost=toy, cache=path, budget=64)
  assert best == SparseConvConfig(2, 8, 4, 2)
  n = len(calls)
  assert 0 < n <= 64
  again = autotune.autotune_sparse_conv((2, 16, 16, 8), sk, cost=toy, cache=path)
  assert again == best and len(calls) == n  # served from the cache
  entry = next(iter(json.loads(path.read_text()).values()))
  assert entry["config"] == dataclasses.asdict(best) and entry["evaluated"] == n
  model_best = autotune.autotune_sparse_conv((2, 16, 16, 8), sk, cost="model", cache=path)
  # The cached result is the cost model's G-BFS optimum: the same search run by hand agrees, and
  # it costs no more than the starting (default) configuration.
  model_cost = autotune.sparse_conv_cost_model((2, 16, 16, 8), sk)
  co = sk.kernel_shape[3]
  by_hand = autotune.gbfs(default_config((16, 16), co),
                          autotune.sparse_conv_neighbors((16, 16), co), model_cost, budget=24)
  assert model_best == by_hand.best
  assert model_cost(model_best) == pytest.approx(by_hand.best_cost)
  assert model_cost(model_best) <= model_cost(default_config((16, 16), co))
  assert len(json.loads(path.read_text())) == 2  # different cost kind, different key
  with pytest.raises(ValueError, match="cost"):
    autotune.autotune_sparse_conv((2, 16, 16, 8), sk, cost="guess", cache=path)


def test_autotune_times_interpreted_kernel(tmp_path):
  sk = _problem(shape=(3, 3, 2, 4))
  best = autotune.autotune_sparse_conv((1, 6, 6, 2), sk, cost="time", interpret=True, budget=2,
                                       cache=tmp_path / "c.json")
  assert isinstance(best, SparseConvConfig)
  entry = next(iter(json.loads((tmp_path / "c.json").read_text()).values()))
  assert entry["evaluated"] == 2 and 0 < entry["cost"] < 60
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 6, 2)), jnp.float32)
  y = ops.sparse_conv2d(x, sk, impl="pallas", config=best, interpret=True)
  np.testing.assert_allclose(y, ops.sparse_conv2d(x, sk, impl="xla"), rtol=1e-5, atol=1e-5)
