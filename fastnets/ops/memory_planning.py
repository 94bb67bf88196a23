"""Cost-aware recomputation and an exact memory planner for a chain of blocks.

SuperNeurons (Wang, Ye, Zhao, Song, Li, Xu, Kraska, PPoPP 2018, "SuperNeurons: Dynamic GPU Memory
Management for Training Deep Neural Networks"), Sec. 3.3, cost-aware recomputation: in the
backward pass, recompute the outputs of cheap layers (normalisation, activations, pooling) and
keep those of expensive ones (convolutions, matrix products), so that most of the memory of
recomputation is saved for a small part of its time. Here "expensive" is decided per primitive
of the jaxpr by its arithmetic intensity against the memory it would occupy: an output is saved
when its producer costs at least `min_flops_per_byte` FLOPs per byte of output
(`fastnets.ops.flops.primitive_flops`). A 3x3 convolution with C input channels costs 18 C / 4
FLOPs per float32 output byte, a matrix product with contraction K costs K / 2, an elementwise
op 1 / 4; reductions (batch-norm statistics) cost their input size for a small output and are
saved as well.

Strategies of one block (a pure function of arrays), `remat(fn, strategy)`:

* "store": plain autodiff, every residual kept;
* "cost_aware": keep the outputs of expensive ops and the block's inputs, recompute the rest;
* "recompute": keep only the block's inputs, recompute the whole block (Chen et al. 2016,
  "Training Deep Nets with Sublinear Memory Cost", per-block checkpointing).

XLA:CPU and `jax.checkpoint`. `jax.checkpoint` marks the recomputation with an
`optimization_barrier`, but XLA:CPU expands optimisation barriers early in its pipeline, after
which common-subexpression elimination merges the recomputed operations with the forward ones:
the forward values are then simply kept, and the compiled program stores what plain autodiff
stores. Under `lax.scan` the backward pass is a separate loop body, which CSE cannot merge with
the forward loop, so there the saving survives. `remat(..., tie=True)` (the default) makes the
saving survive in unrolled code too: the block becomes a `jax.custom_vjp` whose backward rule
first adds `0 * (one element of the incoming cotangent)` to every saved residual. The recomputed
operations then depend on the cotangent, so they can be neither merged with the forward pass nor
scheduled before the cotangent exists. The cost is one elementwise pass over the residuals; the
values are bit-identical (x + 0 = x) unless the cotangent holds an infinity or NaN, in which case
the gradient is NaN as it would be anyway. See docs/MEMORY.md for the measurements.

The planner (`plan_chain`) chooses one option per block of a chain to minimise total cost
subject to a peak-memory budget, exactly (dynamic programming over Pareto fronts, in the spirit
of Griewank's and Chen et al.'s checkpointing of chains): see its docstring for the memory model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.ops.flops import primitive_flops

STRATEGIES = ("store", "cost_aware", "recompute")
DEFAULT_MIN_FLOPS_PER_BYTE = 4.0


# ------------------------------------------------------------------------------------------------
# The cost-aware policy.


def _abstract_outputs(primitive, avals, params):
  try:
    out = primitive.abstract_eval(*avals, **params)
  except Exception:  # noqa: BLE001 - a primitive without a usable abstract rule: unknown cost
    return None
  if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (set, frozenset)):
    out = out[0]  # (avals, effects)
  return list(out) if isinstance(out, (tuple, list)) else [out]


def _aval_bytes(aval) -> int:
  """Bytes of an abstract value; 0 for PRNG keys and other extended dtypes (no plain layout)."""
  dtype = getattr(aval, "dtype", None)
  if dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
    return 0
  return int(math.prod(aval.shape)) * jnp.dtype(dtype).itemsize


def flops_per_byte(primitive, *avals, **params) -> float:
  """FLOPs of one primitive application per byte of its outputs (`primitive_flops` / bytes).

  The arithmetic intensity of recomputing the output: high for convolutions and matrix products
  (keep), low for elementwise ops (recompute). 0.0 when the outputs cannot be derived abstractly.
  """
  outs = _abstract_outputs(primitive, avals, params)
  if not outs:
    return 0.0
  nbytes = sum(_aval_bytes(o) for o in outs)
  if nbytes == 0:
    return 0.0
  return primitive_flops(primitive, avals, outs, **params) / nbytes


def cost_aware_policy(min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE) -> Callable:
  """A `jax.checkpoint` policy that saves outputs costing >= `min_flops_per_byte` to recompute.

  SuperNeurons' cost-aware recomputation (Wang et al. 2018, Sec. 3.3) decided from the jaxpr:
  the policy is called by `jax.checkpoint` once per primitive with its input abstract values
  and parameters, and returns True (save the output for the backward pass) when the primitive's
  FLOPs per output byte (`flops_per_byte`) reach the threshold. The default, 4 FLOPs per byte,
  keeps every convolution and matrix product with more than 8 contracted elements and every
  reduction over more than 4 elements per output, and recomputes all elementwise work.

  Args:
    min_flops_per_byte: the threshold (> 0).

  Returns:
    policy(primitive, *avals, **params) -> bool, usable as `jax.checkpoint(f, policy=...)` or
    `flax.linen.remat(..., policy=...)`.
  """
  threshold = float(min_flops_per_byte)
  if not threshold > 0 or not math.isfinite(threshold):
    raise ValueError(f"min_flops_per_byte must be a positive finite number, got "
                     f"{min_flops_per_byte!r}.")

  def policy(primitive, *avals, **params) -> bool:
    return flops_per_byte(primitive, *avals, **params) >= threshold

  policy.min_flops_per_byte = threshold
  return policy


def strategy_policy(strategy: str, min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE):
  """The `jax.checkpoint` policy of a strategy (None for "store", which is not checkpointed)."""
  check_strategy(strategy)
  if strategy == "store":
    return None
  if strategy == "recompute":
    return jax.checkpoint_policies.nothing_saveable
  return cost_aware_policy(min_flops_per_byte)


def check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")


# ------------------------------------------------------------------------------------------------
# remat: a block with the strategy's backward pass.


def _is_float(leaf) -> bool:
  return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)


def _tie_zero(cotangent) -> jax.Array | None:
  """0 * (first element of the first floating cotangent leaf): a zero that depends on it."""
  for leaf in jax.tree.leaves(cotangent):
    if _is_float(leaf) and leaf.size:
      return jnp.zeros((), leaf.dtype) * jnp.ravel(leaf)[0]
  return None


def remat(fn: Callable[..., Any], strategy: str = "cost_aware", *,
          min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE, tie: bool = True
          ) -> Callable[..., Any]:
  """`fn` with the backward pass of `strategy` ("store", "cost_aware" or "recompute").

  The gradient equals plain autodiff's (the same operations are evaluated on the same values);
  only what is kept between the forward and the backward pass changes. All positional arguments
  may be pytrees; gradients flow to their floating leaves (integer leaves and PRNG keys get the
  usual float0 zero cotangents). Keyword arguments are not supported: bind static ones with
  `functools.partial`.

  Args:
    fn: a pure function of arrays (e.g. `lambda variables, x: block.apply(variables, x)`).
    strategy: see the module docstring.
    min_flops_per_byte: threshold of the cost-aware policy (`cost_aware_policy`).
    tie: make the recomputation depend on the incoming cotangent (default), so that XLA:CPU
      cannot merge it back into the forward pass (module docstring); False gives the bare
      `jax.checkpoint`.

  Returns:
    A function with `fn`'s signature and outputs.
  """
  policy = strategy_policy(strategy, min_flops_per_byte)
  if strategy == "store":
    return fn
  checkpointed = jax.checkpoint(fn, policy=policy)
  if not tie:
    return checkpointed

  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def fwd(*args):
    # The VJP closure is a pytree whose leaves are exactly the residuals the policy keeps.
    return jax.vjp(checkpointed, *args)

  def bwd(vjp_fn, cotangent):
    zero = _tie_zero(cotangent)
    if zero is not None:
      vjp_fn = jax.tree.map(lambda r: r + zero.astype(r.dtype) if _is_float(r) else r, vjp_fn)
    return vjp_fn(cotangent)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def residual_bytes(fn: Callable[..., Any], *args: Any, free_argnums: Sequence[int] = ()) -> int:
  """Bytes `fn`'s VJP keeps from the forward to the backward pass (abstract, nothing runs).

  The estimate counts every residual array of `jax.vjp(fn, *args)` except those that are
  passed-through leaves of the arguments listed in `free_argnums` (parameters, which are held in
  memory anyway). Args may be `jax.ShapeDtypeStruct`s.
  """
  flat, _ = jax.tree.flatten(args)
  free = set()
  offset = 0
  for i, arg in enumerate(args):
    n = len(jax.tree.leaves(arg))
    if i in free_argnums:
      free.update(range(offset, offset + n))
    offset += n

  def residuals(*flat_args):
    _, vjp_fn = jax.vjp(fn, *jax.tree.unflatten(jax.tree.structure(args), list(flat_args)))
    return jax.tree.leaves(vjp_fn)

  closed = jax.make_jaxpr(residuals)(*flat)
  invars = list(closed.jaxpr.invars)
  total = 0
  seen = set()
  for var in closed.jaxpr.outvars:
    if not hasattr(var, "aval") or id(var) in seen:
      continue
    seen.add(id(var))
    if var in invars and invars.index(var) in free:
      continue
    total += _aval_bytes(var.aval)
  return total


# ------------------------------------------------------------------------------------------------
# The planner: exact choice of one option per block of a chain under a peak-memory budget.


@dataclasses.dataclass(frozen=True)
class ChainOption:
  """One way to run one block of a chain.

  Attributes:
    strategy: its name ("store", "cost_aware", "recompute", "reversible", ...).
    saved_bytes: memory the block keeps from its forward to its backward pass (held while every
      later block runs forward and backward).
    peak_bytes: memory the block needs on top of what earlier blocks keep, at the worst moment of
      its own forward and backward pass (its saved bytes, its recomputation and its workspace).
    cost: its time cost (any unit: FLOPs, seconds), forward plus backward plus recomputation.
  """
  strategy: str
  saved_bytes: int
  peak_bytes: int
  cost: float


@dataclasses.dataclass(frozen=True)
class ChainPlan:
  """The planner's answer: one strategy per block and the figures of the memory model."""
  strategies: tuple[str, ...]
  choices: tuple[int, ...]          # index into each block's options
  peak_bytes: int                   # the model's peak: max_i (sum_{j<i} saved_j + peak_i)
  cost: float
  budget_bytes: int
  solve_s: float


def _check_options(options) -> list[list[ChainOption]]:
  blocks = [list(opts) for opts in options]
  if not blocks:
    raise ValueError("options must hold at least one block (a chain of blocks to plan).")
  for i, opts in enumerate(blocks):
    if not opts:
      raise ValueError(f"options[{i}] is empty: every block needs at least one option.")
    for opt in opts:
      if not isinstance(opt, ChainOption):
        raise TypeError(f"options[{i}] must hold ChainOption values, got {type(opt).__name__}.")
      if opt.saved_bytes < 0 or opt.peak_bytes < 0 or not opt.cost >= 0:
        raise ValueError(f"options[{i}] {opt.strategy!r}: bytes and cost must be >= 0, got "
                         f"{opt}.")
  return blocks


def _pareto(mem: np.ndarray, cost: np.ndarray, order_key: np.ndarray) -> np.ndarray:
  """Indices of the (mem, cost) Pareto front, one point per distinct memory, deterministic."""
  order = np.lexsort((order_key, cost, mem))
  mem_s, cost_s = mem[order], cost[order]
  first = np.ones(len(order), bool)
  first[1:] = mem_s[1:] != mem_s[:-1]       # cheapest point for each memory value
  order, mem_s, cost_s = order[first], mem_s[first], cost_s[first]
  best_before = np.minimum.accumulate(np.concatenate([[np.inf], cost_s[:-1]]))
  return order[cost_s < best_before]        # strictly cheaper than any point using less memory


def _solve(blocks: list[list[ChainOption]], budget: float, objective: str):
  """Forward DP over Pareto fronts of (prefix saved bytes, objective value).

  objective "cost": minimise total cost subject to every block's peak <= budget.
  objective "peak": minimise the peak itself (budget ignored); the front's second coordinate is
  the peak so far.
  Returns (best value, choices, peak, cost) or None when infeasible.
  """
  mem = np.zeros(1, np.int64)
  val = np.zeros(1, np.float64)
  peak = np.zeros(1, np.int64)
  cost = np.zeros(1, np.float64)
  parents, picks = [], []
  # Branch and bound (exact): a state whose cost plus the cheapest possible rest exceeds the cost
  # of a known feasible plan cannot be optimal. Known plans: every block on the same option.
  rest = np.cumsum([min(o.cost for o in opts) for opts in blocks][::-1])[::-1].tolist() + [0.0]
  bound = math.inf
  if objective == "cost":
    for k in range(max(len(opts) for opts in blocks)):
      uniform = [min(k, len(opts) - 1) for opts in blocks]
      if _peak_of(blocks, uniform) <= budget:
        bound = min(bound, sum(opts[c].cost for opts, c in zip(blocks, uniform)))
  for i, opts in enumerate(blocks):
    cand_mem, cand_val, cand_peak, cand_cost, cand_parent, cand_pick = [], [], [], [], [], []
    for k, opt in enumerate(opts):
      p = mem + opt.peak_bytes
      new_peak = np.maximum(peak, p)
      if objective == "cost":
        ok = p <= budget
        v = val + opt.cost
      else:
        ok = np.ones(len(mem), bool)
        v = new_peak.astype(np.float64)
      if objective == "cost":
        ok &= v + rest[i + 1] <= bound * (1 + 1e-12)
      idx = np.nonzero(ok)[0]
      cand_mem.append(mem[idx] + opt.saved_bytes)
      cand_val.append(v[idx])
      cand_peak.append(new_peak[idx])
      cand_cost.append(cost[idx] + opt.cost)
      cand_parent.append(idx)
      cand_pick.append(np.full(len(idx), k))
    mem, val = np.concatenate(cand_mem), np.concatenate(cand_val)
    if not len(mem):
      return None
    peak, cost = np.concatenate(cand_peak), np.concatenate(cand_cost)
    parent, pick = np.concatenate(cand_parent), np.concatenate(cand_pick)
    # Ties in (memory, value) go to the lower option index, then the lower parent: deterministic.
    keep = _pareto(mem, val, pick * (len(parent) + 1) + parent)
    mem, val, peak, cost = mem[keep], val[keep], peak[keep], cost[keep]
    parents.append(parent[keep])
    picks.append(pick[keep])
  best = int(np.lexsort((mem, val))[0])
  choices = []
  i = best
  for parent, pick in zip(reversed(parents), reversed(picks)):
    choices.append(int(pick[i]))
    i = int(parent[i])
  return float(val[best]), tuple(reversed(choices)), int(peak[best]), float(cost[best])


def _peak_of(blocks: list[list[ChainOption]], choices: Sequence[int]) -> int:
  prefix, peak = 0, 0
  for opts, k in zip(blocks, choices):
    peak = max(peak, prefix + opts[k].peak_bytes)
    prefix += opts[k].saved_bytes
  return peak


def min_peak_bytes(options: Sequence[Sequence[ChainOption]]) -> int:
  """The smallest peak any choice of options reaches (the least budget `plan_chain` accepts)."""
  blocks = _check_options(options)
  return int(_solve(blocks, math.inf, "peak")[2])


def chain_peak_bytes(options: Sequence[Sequence[ChainOption]], choices: Sequence[int]) -> int:
  """The memory model's peak of a given choice: max_i (sum_{j<i} saved_j + peak_i)."""
  blocks = _check_options(options)
  if len(choices) != len(blocks):
    raise ValueError(f"choices must have one entry per block ({len(blocks)}), got "
                     f"{len(choices)}.")
  return _peak_of(blocks, choices)


def plan_chain(options: Sequence[Sequence[ChainOption]], budget_bytes: int) -> ChainPlan:
  """The cheapest choice of one option per block whose peak memory fits `budget_bytes`.

  Memory model of a chain (forward through blocks 0..n-1, then backward from n-1 to 0): block i's
  saved bytes stay allocated from its forward until its backward; while block i runs (forward or
  backward) it needs its peak bytes on top of the saved bytes of all earlier blocks. The peak of
  a choice is therefore max_i (sum_{j<i} saved_j + peak_i), and the planner solves

      min sum_i cost_i   subject to   sum_{j<i} saved_j + peak_i <= budget for every i,

  exactly: a dynamic program over the chain whose state after block i is the Pareto front of
  (bytes saved so far, cost so far). Dominated states (more memory and no less cost) can never
  lead to a better plan, so the front is exact, and it has at most one point per distinct
  memory value (for n identical blocks with k options, O(n k) points). This is the chain case
  that Checkmate solves as an integer program over general graphs; on a chain the DP is exact
  and takes milliseconds for hundreds of blocks. Ties are broken towards the option listed
  first, so the plan is deterministic.

  Args:
    options: per block, a sequence of `ChainOption`s.
    budget_bytes: the peak-memory budget (> 0).

  Returns:
    A `ChainPlan`.

  Raises:
    ValueError: a non-positive budget, or one below the least peak any plan reaches (the error
      names that minimum).
  """
  start = time.perf_counter()
  blocks = _check_options(options)
  if not (isinstance(budget_bytes, (int, float, np.integer, np.floating))
          and budget_bytes > 0 and math.isfinite(budget_bytes)):
    raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes!r}.")
  solved = _solve(blocks, float(budget_bytes), "cost")
  if solved is None:
    least = min_peak_bytes(blocks)
    raise ValueError(
        f"budget_bytes={int(budget_bytes)} is below what any strategy reaches: the least peak of "
        f"this chain is {least} bytes ({least / 2**20:.2f} MiB). Raise the budget, shrink the "
        "batch, or offer cheaper options (recompute, reversible).")
  _, choices, peak, cost = solved
  return ChainPlan(strategies=tuple(blocks[i][k].strategy for i, k in enumerate(choices)),
                   choices=choices, peak_bytes=peak, cost=cost, budget_bytes=int(budget_bytes),
                   solve_s=time.perf_counter() - start)
