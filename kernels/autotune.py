"""Greedy best-first search (G-BFS) over kernel tile configurations, with an on-disk cache.

G-BFS is the configuration-space search of Zhang et al. (2019), "Compiler-level matrix
multiplication optimization for deep learning" (Sec. 4.1, Alg. 1): configurations are the nodes of
a graph whose edges change one tiling parameter by one step (here: double or halve a power of 2);
starting from an initial configuration, the search keeps a priority queue of measured
configurations, repeatedly pops the cheapest one and measures all its unvisited neighbours, until a
measurement budget (the paper's fraction rho of the space) is spent. It exploits the smoothness of
the cost over the tiling graph and measures a small fraction of the space.

The cost function is pluggable:

* `timing_cost(build)`: wall-clock median of the compiled candidate on the current device (the
  real thing on a GPU; on a CPU it times the Pallas interpreter, which tests the machinery but says
  nothing about GPU speed);
* `sparse_conv_cost_model(...)`: an analytical model of the Escort-style kernel on a GPU (work,
  32-byte memory sectors, loop overhead, occupancy, register pressure), so the search runs and is
  tested on a CPU;
* any `Callable[[config], float]` (e.g. a toy function in tests).

`autotune_sparse_conv` ties them to `fastnets.kernels.sparse_conv` and caches the best
configuration per (input shape, kernel shape, strides, padding, sparsity bucket, dtype, device
kind, cost kind) in a JSON file: the `path` argument, else `$FASTNETS_AUTOTUNE_CACHE`, else
`~/.cache/fastnets/autotune.json`.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.checks import next_power_of_two, pair
from fastnets.kernels.sparse_conv import SparseConvConfig, default_config, sparse_conv2d_pallas
from fastnets.sparse_format import SparseKernel, conv_output_geometry

__all__ = [
  "AutotuneCache",
  "SearchResult",
  "autotune_sparse_conv",
  "cache_key",
  "default_cache_path",
  "gbfs",
  "sparse_conv_cost_model",
  "sparse_conv_neighbors",
  "sparsity_bucket",
  "timing_cost",
]

ENV_VAR = "FASTNETS_AUTOTUNE_CACHE"


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """Outcome of `gbfs`.

  Attributes:
    best: the cheapest configuration measured.
    best_cost: its cost.
    history: [(config, cost), ...] in measurement order (length = number of measurements).
  """

  best: Any
  best_cost: float
  history: tuple

  @property
  def num_evaluated(self) -> int:
    return len(self.history)


def gbfs(initial: Hashable, neighbors: Callable[[Any], Iterable[Hashable]],
         cost_fn: Callable[[Any], float], *, budget: int = 32) -> SearchResult:
  """Greedy best-first search over a configuration graph (Zhang et al. 2019, Alg. 1).

  Args:
    initial: the starting configuration (hashable).
    neighbors: `config -> iterable of configs` one step away (invalid ones must not be returned).
    cost_fn: `config -> float`, lower is better; an exception or a non-finite value marks the
      configuration infeasible (cost inf; it is not expanded).
    budget: maximum number of `cost_fn` calls (>= 1).

  Returns:
    `SearchResult` with the best configuration, its cost and the measurement history.

  Raises:
    ValueError: budget < 1, or no configuration had a finite cost.
  """
  if budget < 1:
    raise ValueError(f"budget must be >= 1; got {budget}.")
  history = []

  def measure(c):
    try:
      v = float(cost_fn(c))
    except Exception:  # a candidate that fails to compile or run is infeasible
      v = math.inf
    if not math.isfinite(v):
      v = math.inf
    history.append((c, v))
    return v

  visited = {initial}
  tie = 0
  queue = []
  c0 = measure(initial)
  if math.isfinite(c0):
    heapq.heappush(queue, (c0, tie, initial))
  while queue and len(history) < budget:
    _, _, state = heapq.heappop(queue)
    for nb in neighbors(state):
      if nb in visited:
        continue
      if len(history) >= budget:
        break
      visited.add(nb)
      v = measure(nb)
      if math.isfinite(v):
        tie += 1
        heapq.heappush(queue, (v, tie, nb))
  best, best_cost = min(history, key=lambda cv: cv[1])
  if not math.isfinite(best_cost):
    raise ValueError("gbfs: no configuration had a finite cost (all candidates failed).")
  return SearchResult(best=best, best_cost=best_cost, history=tuple(history))


# ------------------------------------------------------------------------------------------------
# Cache.


def default_cache_path() -> str:
  """`$FASTNETS_AUTOTUNE_CACHE`, else `~/.cache/fastnets/autotune.json`."""
  return os.environ.get(ENV_VAR) or os.path.join(
    os.path.expanduser("~"), ".cache", "fastnets", "autotune.json")


class AutotuneCache:
  """A JSON file mapping cache keys to {"config": {...}, "cost": float, ...} entries.

  Writes are read-modify-write with an atomic rename, so concurrent tuners lose at most an entry,
  never the file. A missing or corrupt file reads as empty.
  """

  def __init__(self, path: str | os.PathLike | None = None):
    self.path = os.fspath(path) if path is not None else default_cache_path()

  def load(self) -> dict:
    try:
      with open(self.path, encoding="utf-8") as f:
        data = json.load(f)
      return data if isinstance(data, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError):
      return {}

  def get(self, key: str) -> dict | None:
    return self.load().get(key)

  def put(self, key: str, entry: dict) -> None:
    data = self.load()
    data[key] = entry
    d = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".autotune.", suffix=".json")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
      os.replace(tmp, self.path)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise


def sparsity_bucket(sparsity: float, width: float = 0.05) -> float:
  """Rounds a sparsity down to its bucket (5% wide by default): 0.93 -> 0.9."""
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity must be in [0, 1]; got {sparsity!r}.")
  return round(math.floor(sparsity / width + 1e-9) * width, 6)


def _device_kind() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind}"


def cache_key(x_shape, kernel_shape, strides, padding, sparsity: float, dtype, *,
              device_kind: str | None = None, cost: str = "time") -> str:
  """The cache key of a sparse convolution problem (shape, sparsity bucket, device, cost kind)."""
  fmt = lambda s: "x".join(str(int(v)) for v in s)
  pad = padding.upper() if isinstance(padding, str) else str(padding)
  return (f"sparse_conv2d|x={fmt(x_shape)}|w={fmt(kernel_shape)}|s={fmt(pair(strides, 'strides'))}"
          f"|p={pad}|sparsity={sparsity_bucket(sparsity):.2f}|dtype={jnp.dtype(dtype).name}"
          f"|device={device_kind or _device_kind()}|cost={cost}")


# ------------------------------------------------------------------------------------------------
# Search space and costs of the sparse convolution kernel.


def sparse_conv_neighbors(out_hw, out_channels, *, max_elems: int = 16384):
  """Neighbour function: double or halve one of block_h/block_w/block_o/num_warps.

  Bounds: block_h <= next_pow2(Ho), block_w <= next_pow2(Wo), block_o <= next_pow2(O),
  block_h * block_w * block_o <= max_elems (register budget), num_warps in [1, 8].
  """
  ho, wo = out_hw
  caps = dict(block_h=next_power_of_two(ho), block_w=next_power_of_two(wo),
              block_o=next_power_of_two(out_channels), num_warps=8)

  def neighbors(cfg: SparseConvConfig):
    out = []
    for f, cap in caps.items():
      v = getattr(cfg, f)
      for nv in (v * 2, v // 2):
        if 1 <= nv <= cap:
          c = dataclasses.replace(cfg, **{f: nv})
          if c.block_h * c.block_w * c.block_o <= max_elems:
            out.append(c)
    return out

  return neighbors


def sparse_conv_cost_model(x_shape, w: SparseKernel, strides=(1, 1), padding="SAME", *,
                           num_sms: int = 132, max_threads_per_sm: int = 2048):
  """Analytical cost (arbitrary units, ~ns on an H100-class GPU) of the sparse conv kernel.

  For tile config (BH, BW, BO, warps): program (n, i, j, t) runs nnz_t = max nnz of its BO
  channels slots; each slot costs a fixed issue overhead, its gathered elements spread over the
  program's threads, and its 32-byte memory sectors (BH * BO * ceil(BW / 8) for float32).
  Programs run `resident` at a time per SM (threads and registers permitting); the time is the
  larger of the total work over all resident slots and the longest program (tail). Accumulators
  beyond 64 per thread spill (penalty). A model, not a measurement: good enough to test the search
  and to pick a sane default without a GPU; on a GPU use `timing_cost`.

  Returns:
    `config -> float`.
  """
  n, h, wd, _ = x_shape
  kh, kw, _, co = w.kernel_shape
  _, (ho, wo) = conv_output_geometry((h, wd), (kh, kw), strides, padding)
  nnz = np.asarray(w.nnz)

  def cost(cfg: SparseConvConfig) -> float:
    bh, bw, bo, warps = cfg.block_h, cfg.block_w, cfg.block_o, cfg.num_warps
    nh, nw, no = -(-ho // bh), -(-wo // bw), -(-co // bo)
    padded = np.pad(nnz, (0, no * bo - co))
    tile_nnz = padded.reshape(no, bo).max(axis=1).astype(np.float64)
    threads = 32 * warps
    elems = bh * bw * bo
    per_thread = max(1.0, elems / threads)
    sectors = bh * bo * math.ceil(bw / 8)
    spill = 1.0 + max(0.0, per_thread - 64) / 16.0
    slot = (20.0 + 2.0 * per_thread * spill + 4.0 * sectors / warps) * 1.0
    prog = tile_nnz * slot + 200.0  # (no,) time of one program per o-tile, plus launch/store
    programs = n * nh * nw * no
    registers = int(65536 // (threads * (32 + per_thread)))
    resident = max(1, min(32, max_threads_per_sm // threads, registers))
    slots = num_sms * resident
    total = float(prog.sum()) * n * nh * nw
    return max(total / min(slots, programs), float(prog.max()))

  return cost


def timing_cost(build: Callable[[Any], Callable[[], Any]], *, warmup: int = 1, iters: int = 5):
  """Cost = median wall-clock seconds of `build(config)()` after compilation and warm-up.

  Args:
    build: `config -> thunk`; the thunk runs the candidate once (e.g. a jitted call on fixed
      arguments) and returns its output, which is blocked on.
    warmup: untimed calls (the first compiles).
    iters: timed calls; the median is returned.
  """

  def cost(cfg) -> float:
    fn = build(cfg)
    for _ in range(max(1, warmup)):
      jax.block_until_ready(fn())
    ts = []
    for _ in range(max(1, iters)):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

  return cost


def autotune_sparse_conv(
  x_shape, w: SparseKernel, strides=(1, 1), padding="SAME", *,
  dtype=jnp.float32, bias: bool = False, relu: bool = False, cost: str | Callable = "auto",
  budget: int = 24, cache: AutotuneCache | str | os.PathLike | None = None,
  use_cache: bool = True, interpret: bool = False, seed: int = 0,
) -> SparseConvConfig:
  """Best `SparseConvConfig` for a sparse convolution problem, searched with G-BFS and cached.

  Args:
    x_shape: (N, H, W, I) input shape.
    w: the `SparseKernel` (its nnz per channel enter the model and the timing).
    strides, padding: as in `sparse_conv2d`.
    dtype: input dtype used for timing and in the key.
    bias, relu: time the fused variant.
    cost: "auto" ("time" on GPU, "model" elsewhere), "time" (device timing of the Pallas kernel;
      with `interpret=True` the interpreter is timed), "model" (`sparse_conv_cost_model`), or a
      callable `config -> float` (keyed as "custom").
    budget: G-BFS measurement budget.
    cache: an `AutotuneCache`, a path, or None for the default path.
    use_cache: read and write the cache.
    interpret: run timed candidates in the Pallas interpreter.
    seed: seed of the random input used for timing.

  Returns:
    The best configuration found (from the cache when present).
  """
  kh, kw, ci, co = w.kernel_shape
  _, (ho, wo) = conv_output_geometry(tuple(x_shape[1:3]), (kh, kw), strides, padding)
  if cost == "auto":
    cost = "time" if jax.default_backend() == "gpu" else "model"
  if callable(cost):
    cost_name, cost_fn = "custom", cost
  elif cost == "model":
    cost_name, cost_fn = "model", sparse_conv_cost_model(x_shape, w, strides, padding)
  elif cost == "time":
    cost_name = "interpret" if interpret else "time"
    key = jax.random.key(seed)
    x = jax.random.normal(key, tuple(x_shape), dtype)
    b = jnp.zeros((co,), dtype) if bias else None

    def build(cfg):
      f = jax.jit(lambda x, w, b: sparse_conv2d_pallas(
        x, w, strides, padding, b, relu, config=cfg, interpret=interpret))
      return lambda: f(x, w, b)

    cost_fn = timing_cost(build)
  else:
    raise ValueError(f"cost must be 'auto', 'time', 'model' or a callable; got {cost!r}.")
  if not isinstance(cache, AutotuneCache):
    cache = AutotuneCache(cache)
  key = cache_key(x_shape, w.kernel_shape, strides, padding, w.sparsity(), dtype, cost=cost_name)
  if use_cache:
    hit = cache.get(key)
    if hit is not None:
      return SparseConvConfig.from_dict(hit["config"])
  res = gbfs(default_config((ho, wo), co), sparse_conv_neighbors((ho, wo), co), cost_fn,
             budget=budget)
  if use_cache:
    cache.put(key, dict(config=res.best.to_dict(), cost=res.best_cost,
                        evaluated=res.num_evaluated, time=time.strftime("%Y-%m-%dT%H:%M:%S")))
  return res.best
