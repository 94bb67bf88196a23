"""Memory planning for Flax models: cost-aware recomputation and a per-block planner.

`remat_apply(model, strategy)` gives an unmodified Linen model's `apply` the backward pass of a
recomputation strategy (`fastnets.ops.remat`: "store", "cost_aware" after SuperNeurons, Wang et
al. 2018, Sec. 3.3, or "recompute"), with gradients equal to plain autodiff.

`plan_memory(chain, variables, x, budget_bytes)` chooses one strategy per block of a chain model
to minimise the step's cost under a memory budget (`fastnets.ops.plan_chain`, an exact dynamic
program over the chain), and `planned_apply(chain, strategies)` runs the chain with the chosen
strategies. The figures the planner uses come from the blocks themselves:

* saved bytes: the residuals of the block's VJP under the strategy (`fastnets.ops.residual_bytes`,
  from the jaxpr; parameters and state excluded, they are held anyway);
* peak bytes: the compiled temp memory of the block's own gradient
  (`fastnets.benchmarking.compiled_memory`, i.e. `memory_analysis()`), plus its input and the
  cotangent of its output;
* cost: the analytic FLOPs of the block's gradient with its recomputation
  (`fastnets.ops.flops_of`), a deterministic stand-in for time, so plans are reproducible.

The plan reports the model's estimate of the peak and, compiled, the whole step's temp memory;
the two differ (XLA reuses and fuses buffers; the model adds per-block figures), and the compiled
figure is the one to trust.

Strategies per block: "store", "cost_aware", "recompute"; "reversible" for blocks with a
`backprop` attribute taking "reversible" (`fastnets.nn.RevBlock`, `fastnets.nn.ReversibleStack`:
RevNet, Gomez et al. 2017, Algorithm 1); "offload" (keeping residuals in host memory) only where
the backend has a separate host memory kind, which XLA:CPU does not (its device memory is host
memory): `offload_support()` says why it is not offered.

A chain is a module whose blocks run one after another: a `Chain` (below) or a
`flax.linen.Sequential`.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import benchmarking
from fastnets.ops.flops import flops_of
from fastnets.ops.memory_planning import (
  DEFAULT_MIN_FLOPS_PER_BYTE,
  ChainOption,
  ChainPlan,
  chain_peak_bytes,
  plan_chain,
  remat,
  residual_bytes,
)

PLANNER_STRATEGIES = ("store", "cost_aware", "recompute", "reversible")


def _accepts_train(module: nn.Module) -> bool:
  try:
    return "train" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def offload_support(device: Any = None) -> tuple[bool, str]:
  """(available, reason): can residuals be offloaded to a host memory kind on `device`?

  Offload needs a device memory and a separate host memory ("pinned_host") between which XLA
  moves buffers. On XLA:CPU the device memory is host memory, so there is nothing to offload to;
  on accelerators with a host memory kind this planner does not implement offload yet.
  """
  device = device or jax.devices()[0]
  try:
    kinds = sorted({m.kind for m in device.addressable_memories()})
  except Exception:  # noqa: BLE001 - backends without memory kinds
    kinds = []
  if device.platform == "cpu":
    return False, (f"unavailable on the CPU backend: its memory kinds {kinds} are all host "
                   "memory, so offloading saves no memory")
  if "pinned_host" not in kinds:
    return False, f"unavailable: the {device.platform} backend has memory kinds {kinds}"
  return False, ("not implemented: the backend has a pinned_host memory kind, but this planner "
                 "does not offer offload yet")


# ------------------------------------------------------------------------------------------------
# Whole-model recomputation of an unmodified Linen model.


def remat_apply(model: nn.Module, strategy: str = "cost_aware", *,
                min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE, tie: bool = True
                ) -> Callable[..., Any]:
  """`model.apply` with the backward pass of `strategy`, for an unmodified Linen model.

  Call it as `model.apply`: `apply(variables, *args, rngs=None, **kwargs)` (kwargs such as
  `train=True`, `mutable=["batch_stats"]` are static). The gradient with respect to the
  variables and the floating args equals plain autodiff's; what is kept for the backward pass
  follows the strategy (`fastnets.ops.remat`). With "cost_aware" the outputs of convolutions and
  matrix products (and normalisation statistics) are kept and batch norm, activations, pooling
  and additions are recomputed (SuperNeurons, Wang et al. 2018, Sec. 3.3).
  """

  def apply(variables, *args, rngs=None, **kwargs):
    def fn(v, r, *a):
      return model.apply(v, *a, rngs=r, **kwargs)
    return remat(fn, strategy, min_flops_per_byte=min_flops_per_byte, tie=tie)(
        variables, rngs, *args)

  return apply


# ------------------------------------------------------------------------------------------------
# Chains.


class Chain(nn.Module):
  """Blocks applied one after another: the model form the planner can split.

  Attributes:
    blocks: Linen modules; block i maps block i-1's output to its own. A block whose `__call__`
      has a `train` argument receives the chain's.

  Call: `__call__(x, train=False)`; the variables of block i live under "blocks_i".
  """
  blocks: Sequence[nn.Module]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for block in self.blocks:
      x = block(x, train=train) if _accepts_train(block) else block(x)
    return x


def chain_blocks(model: Any) -> tuple[str, tuple[nn.Module, ...]]:
  """(attribute name, blocks) of a chain model (`Chain` or `flax.linen.Sequential`).

  Raises:
    TypeError: the planner cannot split `model` into blocks; the message says what it needs.
  """
  if isinstance(model, Chain):
    name, blocks = "blocks", model.blocks
  elif isinstance(model, nn.Sequential):
    name, blocks = "layers", model.layers
  else:
    raise TypeError(
        f"the planner cannot split a {type(model).__name__} into blocks: it needs a chain, a "
        "fastnets.nn.Chain(blocks=[...]) or flax.linen.Sequential([...]) whose blocks are Linen "
        "modules run one after another (each block's output is the next block's only input). "
        "Rewrite the model as such a chain, or use remat_apply(model, strategy) for one "
        "strategy over the whole model.")
  blocks = tuple(blocks)
  if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
    raise TypeError(f"the chain's {name} must be a non-empty sequence of Linen modules, got "
                    f"{[type(b).__name__ for b in blocks]}.")
  return name, blocks


def block_strategies(block: nn.Module) -> tuple[str, ...]:
  """The strategies `planned_apply` can run `block` with (reversible only for reversible
  blocks)."""
  if getattr(block, "backprop", None) is not None:
    return PLANNER_STRATEGIES
  return PLANNER_STRATEGIES[:3]


def _block_fn(block: nn.Module, strategy: str, train: bool, cols: tuple[str, ...],
              min_flops_per_byte: float):
  """Block i as a pure function (variables, x) -> (y, updated state) under `strategy`."""
  if strategy not in block_strategies(block):
    raise ValueError(f"strategy {strategy!r} is not available for block {type(block).__name__}; "
                     f"it supports {block_strategies(block)}.")
  if getattr(block, "backprop", None) is not None:
    block = block.clone(backprop="reversible" if strategy == "reversible" else "store")
    strategy = "store" if strategy == "reversible" else strategy
  kw = {"train": train} if _accepts_train(block) else {}

  def fn(variables, x):
    if cols:
      return block.apply(variables, x, mutable=list(cols), **kw)
    return block.apply(variables, x, **kw), {}

  return remat(fn, strategy, min_flops_per_byte=min_flops_per_byte)


def planned_apply(chain: Any, strategies: Sequence[str], *,
                  min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE) -> Callable[..., Any]:
  """The chain's `apply` with block i run under `strategies[i]`.

  Returns `apply(variables, x, train=False, mutable=False)`, equal in value and gradient to
  `chain.apply(variables, x, train=train, mutable=mutable)` (returns `(y, updated state)` when
  `mutable` names collections, as Flax does). Rng streams (dropout) are not supported.
  """
  name, blocks = chain_blocks(chain)
  strategies = tuple(strategies)
  if len(strategies) != len(blocks):
    raise ValueError(f"strategies must name one strategy per block ({len(blocks)}), got "
                     f"{len(strategies)}.")
  for block, strategy in zip(blocks, strategies):
    if strategy not in block_strategies(block):
      raise ValueError(f"strategy {strategy!r} is not available for {type(block).__name__}; "
                       f"it supports {block_strategies(block)}.")

  def apply(variables, x, train: bool = False, mutable: Any = False):
    cols = tuple(mutable) if isinstance(mutable, (list, tuple)) else (
        tuple(c for c in variables if c != "params") if mutable is True else ())
    state = {c: {} for c in cols}
    h = x
    for i, (block, strategy) in enumerate(zip(blocks, strategies)):
      key = f"{name}_{i}"
      own = {col: tree[key] for col, tree in variables.items() if key in tree}
      own_cols = tuple(c for c in cols if c in own)
      h, new = _block_fn(block, strategy, train, own_cols, min_flops_per_byte)(own, h)
      for col, tree in new.items():
        state[col][key] = tree
    if mutable:
      return h, state
    return h

  return apply


# ------------------------------------------------------------------------------------------------
# The planner.


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """A plan for a chain: the strategies, the model's figures and the compiled one.

  Attributes:
    strategies: one per block.
    estimate_bytes: the memory model's peak (`fastnets.ops.plan_chain`).
    compiled_temp_bytes: temp memory of the compiled training step (`memory_analysis()`).
    cost: analytic FLOPs of the step under the plan (recomputation included).
    budget_bytes: the budget.
    options: per block, the calibrated `ChainOption`s the planner chose from.
    block_figures: the same before calibration (`block_options`).
    unavailable: {strategy: why it was not offered}.
    solve_s: seconds the (last) dynamic program took.
    calibration: {strategy: compiled / estimated bytes} applied to the options.
    uniform_temp_bytes: {strategy: compiled temp bytes with every block on it} (calibration).
    refinements: re-plans after a compiled overshoot.
    uniform_fallback: the uniform strategy used when no refined plan compiled within the budget
      but that strategy's measured compiled figure did (None otherwise).
    executable: the compiled training step (`training_step` of `planned_apply`), callable as
      `executable(variables, x)` when `variables` and `x` were arrays.
  """
  strategies: tuple[str, ...]
  estimate_bytes: int
  compiled_temp_bytes: int
  cost: float
  budget_bytes: int
  options: tuple[tuple[ChainOption, ...], ...]
  block_figures: tuple[tuple[ChainOption, ...], ...]
  unavailable: dict
  solve_s: float
  calibration: dict
  uniform_temp_bytes: dict
  refinements: int = 0
  uniform_fallback: str | None = None
  executable: Any = dataclasses.field(default=None, compare=False, repr=False)


def _nbytes(tree) -> int:
  return int(sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)))


def _sum_outputs(out):
  y = out[0]
  return jnp.sum(jnp.square(y.astype(jnp.float32)))


def _step_fn(fn):
  """The gradient of a block (w.r.t. params and input): what the planner measures."""

  def step(variables, x):
    def loss(params, x):
      return _sum_outputs(fn({**variables, "params": params}, x))
    return jax.grad(loss, argnums=(0, 1))(variables.get("params", {}), x)

  return step


def block_options(chain: Any, variables: Any, x: Any, *, train: bool = True,
                  strategies: Sequence[str] | None = None,
                  min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE
                  ) -> tuple[tuple[ChainOption, ...], ...]:
  """Per block, the `ChainOption` of every available strategy (module docstring: the figures).

  Identical blocks at identical input shapes are measured once. `x` and `variables` may be
  `jax.ShapeDtypeStruct`s (only the block gradients are compiled, nothing runs).
  """
  name, blocks = chain_blocks(chain)
  wanted = tuple(strategies or PLANNER_STRATEGIES)
  unknown = sorted(set(wanted) - set(PLANNER_STRATEGIES))
  if unknown:
    raise ValueError(f"strategies must be among {PLANNER_STRATEGIES}, got {unknown}.")
  state_cols = tuple(c for c in variables if c != "params") if train else ()
  cache: dict = {}
  out = []
  h = jax.ShapeDtypeStruct(x.shape, x.dtype)
  for i, block in enumerate(blocks):
    key = f"{name}_{i}"
    own = {col: tree[key] for col, tree in variables.items() if key in tree}
    own = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), own)
    cols = tuple(c for c in state_cols if c in own)
    sig = (repr(block.clone(parent=None, name=None)), h.shape, str(h.dtype),
           jax.tree.structure(own), tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(own)))
    if sig not in cache:
      options = []
      y = None
      for strategy in wanted:
        if strategy not in block_strategies(block):
          continue
        fn = _block_fn(block, strategy, train, cols, min_flops_per_byte)
        y = jax.eval_shape(fn, own, h)[0]
        saved = residual_bytes(fn, own, h, free_argnums=(0,))
        step = _step_fn(fn)
        temp = benchmarking.compiled_memory(step, own, h)["temp_bytes"]
        options.append(ChainOption(strategy, saved, temp + _nbytes(h) + _nbytes(y),
                                   float(flops_of(step, own, h))))
      cache[sig] = (tuple(options), y)
    options, y = cache[sig]
    out.append(options)
    h = jax.ShapeDtypeStruct(y.shape, y.dtype)
  return tuple(out)


def _scaled(options, factors):
  return tuple(tuple(dataclasses.replace(
      o, saved_bytes=int(round(o.saved_bytes * factors.get(o.strategy, 1.0))),
      peak_bytes=int(round(o.peak_bytes * factors.get(o.strategy, 1.0)))) for o in opts)
      for opts in options)


def plan_memory(chain: Any, variables: Any, x: Any, budget_bytes: int, *, train: bool = True,
                strategies: Sequence[str] | None = None,
                min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE,
                calibrate: bool | dict = True, max_refinements: int = 3,
                options: Sequence[Sequence[ChainOption]] | None = None,
                loss_fn: Callable[[jax.Array], jax.Array] | None = None) -> MemoryPlan:
  """Chooses a strategy per block of `chain` minimising FLOPs with compiled memory <= budget.

  Three steps, each reading the compiler where it can:
  1. per-block options (`block_options`): jaxpr residuals, compiled block workspaces, FLOPs;
  2. calibration (`calibrate`): XLA fuses cheap elementwise work into the backward pass on its
     own, so plain autodiff keeps fewer bytes than its jaxpr residuals; the whole chain is
     compiled once under each uniform strategy s, and s's byte figures are scaled by
     compiled / estimated (pass a dict {strategy: compiled temp bytes} to reuse measurements);
  3. the exact chain DP (`fastnets.ops.plan_chain`) on the calibrated figures, then the planned
     step is compiled; while its temp memory exceeds the budget (the model is an estimate), the
     DP is re-run with the budget lowered by the overshoot, up to `max_refinements` times; if
     it still overshoots, the cheapest uniform strategy whose measured compiled figure fits is
     used (`uniform_fallback`).

  Args:
    chain: a `Chain` or `flax.linen.Sequential` (else TypeError saying what is needed).
    variables: its variables (arrays or ShapeDtypeStructs).
    x: an input batch (array or ShapeDtypeStruct).
    budget_bytes: budget for the compiled training step's temp memory (> 0; below the least
      reachable peak: a ValueError naming that minimum).
    train: plan the training step (batch norm in training mode, "batch_stats" updated).
    strategies: the strategies to offer (default all of `PLANNER_STRATEGIES`; "reversible" only
      where a block is reversible).
    min_flops_per_byte: threshold of the cost-aware policy.
    calibrate: True (compile uniform strategies), False (the jaxpr model as is) or a dict
      {strategy: compiled temp bytes of the chain with every block on it} (e.g. a previous
      plan's `uniform_temp_bytes`).
    max_refinements: re-plans after a compiled overshoot (0: plan once, report the figure).
    options: the uncalibrated `block_options` of this chain, to skip measuring them again (a
      previous plan's `block_figures`).
    loss_fn: the loss of the training step that is compiled (`training_step`; default the sum
      of squares of the output).

  Returns:
    A `MemoryPlan` (its `compiled_temp_bytes` may exceed the budget only if refinement ran out;
    check it).
  """
  if not (isinstance(budget_bytes, numbers.Real) and budget_bytes > 0):
    raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes!r}.")
  if options is None:
    options = block_options(chain, variables, x, train=train, strategies=strategies,
                            min_flops_per_byte=min_flops_per_byte)
  elif len(options) != len(chain_blocks(chain)[1]):
    raise ValueError(f"options must hold one entry per block ({len(chain_blocks(chain)[1])}), "
                     f"got {len(options)}.")
  options = tuple(tuple(opts) for opts in options)
  factors, measured = {}, {}
  if calibrate:
    offered = sorted({o.strategy for opts in options for o in opts})
    measured = dict(calibrate) if isinstance(calibrate, dict) else {}
    measured = {k: int(v) for k, v in measured.items()}
    for strategy in offered:
      if not all(strategy in [o.strategy for o in opts] for opts in options):
        continue  # only strategies every block offers can be compiled uniformly
      if strategy not in measured:
        measured[strategy] = planned_step_memory(
            chain, [strategy] * len(options), variables, x, train=train,
            min_flops_per_byte=min_flops_per_byte)["temp_bytes"]
      est = estimate_bytes(options, [strategy] * len(options))
      factors[strategy] = min(1.0, measured[strategy] / est) if est else 1.0
  model = _scaled(options, factors)
  target = budget_bytes
  plan: ChainPlan = plan_chain(model, target)
  refinements = 0
  for attempt in range(max_refinements + 1):
    if attempt:
      try:
        plan = plan_chain(model, target)
      except ValueError:  # the model cannot go lower: keep the last plan and its figure
        break
      refinements = attempt
    apply = planned_apply(chain, plan.strategies, min_flops_per_byte=min_flops_per_byte)
    executable = jax.jit(training_step(apply, train, loss_fn)).lower(variables, x).compile()
    compiled = benchmarking.memory_of(executable)["temp_bytes"]
    if compiled <= budget_bytes or attempt == max_refinements:
      break
    target = int(target * budget_bytes / compiled) - 1
    if target <= 0:
      break
  fallback = None
  if compiled > budget_bytes:
    # The model could not get the compiled step under the budget, but a uniform strategy whose
    # compiled figure (measured for the calibration) fits is a valid plan: take the cheapest.
    fitting = [st for st, t in measured.items() if t <= budget_bytes]
    if fitting:
      names = [[o.strategy for o in opts] for opts in model]
      fallback = min(fitting, key=lambda st: (sum(
          opts[n.index(st)].cost for opts, n in zip(model, names)), st))
      choices = tuple(n.index(fallback) for n in names)
      plan = ChainPlan(strategies=(fallback,) * len(model), choices=choices,
                       peak_bytes=chain_peak_bytes(model, choices),
                       cost=sum(opts[k].cost for opts, k in zip(model, choices)),
                       budget_bytes=int(budget_bytes), solve_s=plan.solve_s)
      apply = planned_apply(chain, plan.strategies, min_flops_per_byte=min_flops_per_byte)
      executable = jax.jit(training_step(apply, train, loss_fn)).lower(variables, x).compile()
      compiled = benchmarking.memory_of(executable)["temp_bytes"]
  return MemoryPlan(strategies=plan.strategies, estimate_bytes=plan.peak_bytes,
                    compiled_temp_bytes=compiled, cost=plan.cost, budget_bytes=int(budget_bytes),
                    options=model, block_figures=options,
                    unavailable={"offload": offload_support()[1]}, solve_s=plan.solve_s,
                    calibration=factors, uniform_temp_bytes=measured,
                    refinements=refinements, executable=executable,
                    uniform_fallback=fallback)


def training_step(apply_fn: Callable[..., Any], train: bool = True,
                  loss_fn: Callable[[jax.Array], jax.Array] | None = None) -> Callable[..., Any]:
  """`step(variables, x) -> (gradient w.r.t. params, updated state)` for a chain's apply
  (`chain.apply` or `planned_apply(...)`): what the planner's memory figures refer to.

  `loss_fn(output) -> scalar` (default: the sum of squares of the output).
  """

  def step(variables, x):
    cols = [c for c in variables if c != "params"] if train else []

    def loss(params):
      out = apply_fn({**variables, "params": params}, x, train=train, mutable=cols)
      value = _sum_outputs(out) if loss_fn is None else loss_fn(out[0])
      return value, out[1]
    return jax.grad(loss, has_aux=True)(variables["params"])

  return step


def planned_step_memory(chain: Any, strategies: Sequence[str], variables: Any, x: Any, *,
                        train: bool = True,
                        min_flops_per_byte: float = DEFAULT_MIN_FLOPS_PER_BYTE) -> dict:
  """`benchmarking.compiled_memory` of the chain's training step under `strategies`."""
  apply = planned_apply(chain, strategies, min_flops_per_byte=min_flops_per_byte)
  return benchmarking.compiled_memory(training_step(apply, train), variables, x)


def estimate_bytes(options: Sequence[Sequence[ChainOption]], strategies: Sequence[str]) -> int:
  """The memory model's peak for given per-block strategies (as `plan_memory` estimates)."""
  choices = []
  for i, (opts, s) in enumerate(zip(options, strategies)):
    names = [o.strategy for o in opts]
    if s not in names:
      raise ValueError(f"block {i} has no option {s!r} (options: {names}).")
    choices.append(names.index(s))
  return chain_peak_bytes(options, choices)


__all__ = ["Chain", "block_options", "block_strategies", "chain_blocks", "estimate_bytes",
           "MemoryPlan", "offload_support", "plan_memory", "planned_apply",
           "planned_step_memory", "PLANNER_STRATEGIES", "remat_apply", "training_step"]

