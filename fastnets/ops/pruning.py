"""Magnitude pruning of parameter pytrees, a gradual pruning schedule and masked optimizers.

Pruned (sparse) networks are the input of direct sparse convolution (Escort; Chen, 2018, whose
models are magnitude-pruned to 80-95% sparsity). This module provides:

* `magnitude_mask` / `magnitude_masks` / `magnitude_prune`: keep the largest-|w| weights, per layer
  or globally over all prunable leaves, pruning exactly `round(sparsity * size)` weights (ties
  broken by position, so the count is exact even with repeated magnitudes).
* `ZhuGuptaSchedule`: the gradual schedule of Zhu & Gupta (2017), "To prune, or not to prune",
  Eq. (1): `s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3` for `t = t_0, t_0 + dt, ...,
  t_0 + n dt`.
* `masked_updates(tx, masks)`: an optax wrapper that keeps pruned weights at zero (fine-tuning a
  pruned model); `gradual_magnitude_pruning(tx, schedule)`: an optax wrapper that prunes during
  training following the schedule (masks in the optimizer state).
* `sparsity_report` / `format_sparsity_report`: nonzeros per leaf and in total.

Masks are pytrees with the structure of the parameters in which each prunable leaf is a bool
array (True = kept) and every other leaf is `None`. Which leaves are prunable is decided by a
predicate `prunable(path, leaf) -> bool`; the default selects conv and dense kernels (leaves named
"kernel" with at least 2 dimensions), not biases, BatchNorm scales or embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

__all__ = [
  "GradualPruningState",
  "MaskedUpdatesState",
  "ZhuGuptaSchedule",
  "apply_masks",
  "default_prunable",
  "format_sparsity_report",
  "gradual_magnitude_pruning",
  "magnitude_mask",
  "mask_tree",
  "magnitude_masks",
  "magnitude_prune",
  "masked_updates",
  "path_to_str",
  "pruning_masks",
  "sparsity_report",
  "zhu_gupta_sparsity",
]

PyTree = Any
Prunable = Callable[[tuple, Any], bool]


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_to_str(path) -> str:
  """'/'-joined names of a `jax.tree_util` key path, e.g. 'params/Conv_0/kernel'."""
  return "/".join(_key_name(k) for k in path)


def default_prunable(path, leaf) -> bool:
  """True for conv and dense kernels: a leaf named 'kernel' with ndim >= 2 (Flax Linen naming)."""
  return bool(path) and _key_name(path[-1]) == "kernel" and getattr(leaf, "ndim", 0) >= 2


def _check_sparsity(sparsity, name="sparsity"):
  if isinstance(sparsity, jax.core.Tracer):
    return
  s = np.asarray(sparsity)
  if s.ndim != 0 or not np.isfinite(s) or not 0.0 <= float(s) < 1.0:
    raise ValueError(f"{name} must be a number in [0, 1); got {sparsity!r}.")


def _num_pruned(sparsity, size):
  """round(sparsity * size) as int (Python) or int32 (traced), half rounded up."""
  if isinstance(sparsity, jax.core.Tracer):
    return jnp.floor(sparsity * size + 0.5).astype(jnp.int32)
  return int(math.floor(float(sparsity) * size + 0.5))


def _keep_by_rank(mag_flat, n_pruned):
  """Bool keep-mask pruning the n_pruned smallest entries of mag_flat (stable: earlier first)."""
  n = mag_flat.shape[0]
  order = jnp.argsort(mag_flat, stable=True)
  keep_sorted = jnp.arange(n) >= n_pruned
  return jnp.zeros((n,), bool).at[order].set(keep_sorted)


def magnitude_mask(w: jax.Array, sparsity) -> jax.Array:
  """Keep-mask of one array: prunes exactly round(sparsity * w.size) smallest-|w| entries.

  Args:
    w: any-shape float array.
    sparsity: fraction in [0, 1) to prune; may be traced (then it is not range-checked).

  Returns:
    bool array of `w.shape`, True where the weight is kept.

  Raises:
    ValueError: concrete `sparsity` outside [0, 1).
  """
  _check_sparsity(sparsity)
  w = jnp.asarray(w)
  return _mask_jit(w, jnp.asarray(_num_pruned(sparsity, w.size), jnp.int32))


@jax.jit  # one compilation per leaf shape, whatever the sparsity (eager callers stay fast)
def _mask_jit(w, n_pruned):
  mag = jnp.abs(w).reshape(-1).astype(jnp.promote_types(w.dtype, jnp.float32))
  return _keep_by_rank(mag, n_pruned).reshape(w.shape)


def _prunable_leaves(params, prunable):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  flags = [bool(prunable(p, x)) for p, x in leaves]
  return leaves, treedef, flags


def magnitude_masks(params: PyTree, sparsity, *, scope: str = "layer",
                    prunable: Prunable = default_prunable) -> PyTree:
  """Magnitude-pruning masks of a parameter pytree.

  Args:
    params: pytree of arrays.
    sparsity: fraction in [0, 1) to prune. With scope "layer", also a mapping from leaf path
      ('params/Conv_0/kernel', see `path_to_str`) to its fraction (prunable leaves not in the
      mapping are kept dense). May be traced (scalar) for use inside jit.
    scope: "layer" (each prunable leaf to the same sparsity) or "global" (one magnitude threshold
      over all prunable leaves together, so layers end up with different sparsities).
    prunable: predicate `(path, leaf) -> bool`.

  Returns:
    masks: the structure of `params` with bool arrays (True = kept) on prunable leaves and None
    elsewhere.

  Raises:
    ValueError: sparsity outside [0, 1), unknown scope, or a mapping with scope "global".
  """
  if scope not in ("layer", "global"):
    raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}.")
  leaves, treedef, flags = _prunable_leaves(params, prunable)
  if isinstance(sparsity, Mapping):
    if scope != "layer":
      raise ValueError("sparsity as a per-layer mapping needs scope='layer'.")
    for k, v in sparsity.items():
      _check_sparsity(v, f"sparsity[{k!r}]")
  else:
    _check_sparsity(sparsity)
  out = [None] * len(leaves)
  if scope == "layer":
    for i, ((path, x), f) in enumerate(zip(leaves, flags)):
      if not f:
        continue
      if isinstance(sparsity, Mapping):
        s = sparsity.get(path_to_str(path))
        out[i] = jnp.ones(x.shape, bool) if s is None else magnitude_mask(x, s)
      else:
        out[i] = magnitude_mask(x, sparsity)
  else:
    idx = [i for i, f in enumerate(flags) if f]
    if idx:
      mags = [jnp.abs(leaves[i][1]).reshape(-1).astype(jnp.float32) for i in idx]
      allmag = jnp.concatenate(mags)
      keep = _keep_by_rank(allmag, _num_pruned(sparsity, allmag.shape[0]))
      start = 0
      for i, m in zip(idx, mags):
        out[i] = keep[start:start + m.shape[0]].reshape(leaves[i][1].shape)
        start += m.shape[0]
  return jax.tree_util.tree_unflatten(treedef, out)


def _is_none(x):
  return x is None


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the pruned weights: `where(mask, w, 0)` on masked leaves, others unchanged."""
  return jax.tree.map(
    lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)),
    masks, params, is_leaf=_is_none)


def magnitude_prune(params: PyTree, sparsity, *, scope: str = "layer",
                    prunable: Prunable = default_prunable) -> tuple[PyTree, PyTree]:
  """One-shot magnitude pruning: `(apply_masks(params, masks), masks)`; see `magnitude_masks`."""
  masks = magnitude_masks(params, sparsity, scope=scope, prunable=prunable)
  return apply_masks(params, masks), masks


# ------------------------------------------------------------------------------------------------
# Gradual schedule (Zhu & Gupta, 2017, Eq. 1).


def zhu_gupta_sparsity(step, *, final_sparsity: float, begin_step: int, end_step: int,
                       initial_sparsity: float = 0.0, frequency: int = 1, power: float = 3.0):
  """Target sparsity at `step` of the Zhu & Gupta (2017) schedule, Eq. (1).

  `s_t = s_f + (s_i - s_f) (1 - (t_q - t_0) / (t_end - t_0))^power`, where t_q is `step` rounded
  down to the last pruning step `t_0 + m * frequency`; `s_i` before `t_0`, `s_f` after `t_end`.
  Jit-compatible (`step` may be traced).

  Returns:
    float32 scalar.

  Raises:
    ValueError: sparsities outside [0, 1), a non-positive frequency, end_step before begin_step.
  """
  _check_sparsity(final_sparsity, "final_sparsity")
  _check_sparsity(initial_sparsity, "initial_sparsity")
  if isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer)) or frequency < 1:
    raise ValueError(f"zhu_gupta_sparsity: frequency must be a positive int, got {frequency!r}.")
  if end_step < begin_step:
    raise ValueError(f"zhu_gupta_sparsity: end_step ({end_step}) must not precede begin_step "
                     f"({begin_step}).")
  t = jnp.asarray(step, jnp.float32)
  t0 = float(begin_step)
  tq = t0 + jnp.floor((t - t0) / frequency) * frequency
  frac = jnp.clip((tq - t0) / max(1.0, float(end_step - begin_step)), 0.0, 1.0)
  s = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** power
  return jnp.where(t < t0, initial_sparsity, s).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ZhuGuptaSchedule:
  """Gradual pruning schedule of Zhu & Gupta (2017), Eq. (1); call it with a step.

  Attributes:
    final_sparsity: s_f in [0, 1).
    begin_step: t_0, first pruning step.
    end_step: t_0 + n dt, last step at which sparsity increases.
    initial_sparsity: s_i in [0, 1).
    frequency: dt, steps between mask updates.
    power: exponent (3 in the paper).
  """

  final_sparsity: float
  begin_step: int = 0
  end_step: int = 1000
  initial_sparsity: float = 0.0
  frequency: int = 100
  power: float = 3.0

  def __post_init__(self):
    _check_sparsity(self.final_sparsity, "final_sparsity")
    _check_sparsity(self.initial_sparsity, "initial_sparsity")
    if self.begin_step < 0 or self.end_step < self.begin_step:
      raise ValueError(
        f"need 0 <= begin_step <= end_step; got begin_step={self.begin_step}, "
        f"end_step={self.end_step}.")
    if self.frequency < 1:
      raise ValueError(f"frequency must be a positive int; got {self.frequency}.")

  def __call__(self, step):
    return zhu_gupta_sparsity(
      step, final_sparsity=self.final_sparsity, begin_step=self.begin_step,
      end_step=self.end_step, initial_sparsity=self.initial_sparsity, frequency=self.frequency,
      power=self.power)

  def is_pruning_step(self, step):
    """True at t_0, t_0 + dt, ... up to end_step (jit-compatible)."""
    step = jnp.asarray(step)
    return ((step >= self.begin_step) & (step <= self.end_step)
            & ((step - self.begin_step) % self.frequency == 0))


# ------------------------------------------------------------------------------------------------
# Optimizer wrappers.


class MaskedUpdatesState(NamedTuple):
  masks: PyTree
  inner_state: Any


class GradualPruningState(NamedTuple):
  count: jax.Array
  masks: PyTree
  inner_state: Any


def mask_tree(masks, tree, fill=None):
  """where(mask, tree, fill or 0) leafwise on masked leaves (a None mask keeps the leaf); `fill`
  a tree of the same structure, or None for zeros."""
  if fill is None:
    return jax.tree.map(
      lambda m, u: u if m is None else jnp.where(m, u, jnp.zeros((), u.dtype)),
      masks, tree, is_leaf=_is_none)
  return jax.tree.map(
    lambda m, u, f: u if m is None else jnp.where(m, u, f.astype(u.dtype)),
    masks, tree, fill, is_leaf=_is_none)


def _masks_from_params(params, prunable):
  leaves, treedef, flags = _prunable_leaves(params, prunable)
  out = [(x != 0) if f else None for (_, x), f in zip(leaves, flags)]
  return jax.tree_util.tree_unflatten(treedef, out)


def masked_updates(tx: optax.GradientTransformation, masks: PyTree | None = None, *,
                   prunable: Prunable = default_prunable) -> optax.GradientTransformation:
  """Wraps an optimizer so that pruned weights get zero updates (and stay exactly zero).

  Gradients of pruned weights are zeroed before `tx` (so no momentum builds up on them) and the
  updates of pruned weights are zeroed after it. With `masks=None` the masks are taken at `init`
  from the parameters themselves (`params != 0` on prunable leaves): wrap the optimizer of an
  already-pruned model and it keeps its zeros. Masks live in the state (`MaskedUpdatesState`,
  read them with `pruning_masks`).

  Args:
    tx: the inner optax transformation.
    masks: masks pytree (see `magnitude_masks`), or None to derive them at init.
    prunable: predicate used when `masks` is None.

  Returns:
    An `optax.GradientTransformation`; `update` accepts `params` (unused when masks are given).
  """

  def init(params):
    m = _masks_from_params(params, prunable) if masks is None else masks
    return MaskedUpdatesState(masks=m, inner_state=tx.init(params))

  def update(updates, state, params=None):
    g = mask_tree(state.masks, updates)
    u, inner = tx.update(g, state.inner_state, params)
    return mask_tree(state.masks, u), MaskedUpdatesState(state.masks, inner)

  return optax.GradientTransformation(init, update)


def gradual_magnitude_pruning(
  tx: optax.GradientTransformation,
  schedule: ZhuGuptaSchedule,
  *,
  scope: str = "layer",
  prunable: Prunable = default_prunable,
) -> optax.GradientTransformation:
  """Wraps an optimizer to prune during training with the Zhu & Gupta gradual schedule.

  At update number t (0-based; the state counts them), gradients of pruned weights are zeroed and
  `tx` runs. If `schedule.is_pruning_step(t)`, new masks are computed by magnitude on the
  parameters that the step would produce (`params + updates`) at sparsity `schedule(t)`; the
  returned update of a newly or still pruned weight is `-params`, so after
  `optax.apply_updates` it is exactly zero, and the kept weights get `tx`'s update. Mask updates
  run under `lax.cond`, so steps that do not prune pay no sort.

  Args:
    tx: the inner optax transformation.
    schedule: a `ZhuGuptaSchedule` (begin/end step and frequency of mask updates).
    scope: "layer" or "global" (see `magnitude_masks`).
    prunable: predicate selecting the prunable leaves.

  Returns:
    An `optax.GradientTransformation` whose `update(grads, state, params)` requires `params`.
    The state is a `GradualPruningState(count, masks, inner_state)`.

  Raises:
    ValueError: unknown scope; `update` called without params.
  """
  if scope not in ("layer", "global"):
    raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}.")

  def init(params):
    leaves, treedef, flags = _prunable_leaves(params, prunable)
    m = [jnp.ones(x.shape, bool) if f else None for (_, x), f in zip(leaves, flags)]
    return GradualPruningState(
      count=jnp.zeros((), jnp.int32), masks=jax.tree_util.tree_unflatten(treedef, m),
      inner_state=tx.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("gradual_magnitude_pruning needs params: call update(grads, state, params).")
    g = mask_tree(state.masks, updates)
    u, inner = tx.update(g, state.inner_state, params)
    u = mask_tree(state.masks, u)
    candidate = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, u)
    new_masks = lax.cond(
      schedule.is_pruning_step(state.count),
      lambda: magnitude_masks(candidate, schedule(state.count), scope=scope, prunable=prunable),
      lambda: state.masks)
    neg = jax.tree.map(lambda p: -p, params)
    u = mask_tree(new_masks, u, neg)
    return u, GradualPruningState(state.count + 1, new_masks, inner)

  return optax.GradientTransformation(init, update)


def pruning_masks(opt_state) -> PyTree | None:
  """The masks of the first `MaskedUpdatesState` / `GradualPruningState` in an optimizer state."""
  if isinstance(opt_state, MaskedUpdatesState | GradualPruningState):
    return opt_state.masks
  if isinstance(opt_state, tuple | list):
    for s in opt_state:
      m = pruning_masks(s)
      if m is not None:
        return m
  return None


# ------------------------------------------------------------------------------------------------
# Report.


def sparsity_report(params: PyTree, masks: PyTree | None = None, *,
                    prunable: Prunable = default_prunable) -> dict:
  """Sizes, nonzeros and sparsity of every leaf of a parameter pytree (concrete arrays).

  Args:
    params: pytree of arrays.
    masks: optional masks; when given, a masked leaf counts its kept entries instead of nonzeros.
    prunable: predicate marking the prunable leaves.

  Returns:
    {"layers": [{"path", "shape", "size", "nonzero", "sparsity", "prunable"}, ...],
     "total": {"size", "nonzero", "sparsity"}, "prunable": {"size", "nonzero", "sparsity"}}.
  """
  leaves, _, flags = _prunable_leaves(params, prunable)
  mask_of = {}
  if masks is not None:
    for path, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)[0]:
      if m is not None:
        mask_of[path_to_str(path)] = m
  rows = []
  for (path, x), f in zip(leaves, flags):
    name = path_to_str(path)
    arr = np.asarray(mask_of[name]) if name in mask_of else (np.asarray(x) != 0)
    size = int(arr.size)
    nz = int(np.count_nonzero(arr))
    rows.append(dict(path=name, shape=list(np.shape(x)), size=size, nonzero=nz,
                     sparsity=1.0 - nz / size if size else 0.0, prunable=f))

  def total(rs):
    size = sum(r["size"] for r in rs)
    nz = sum(r["nonzero"] for r in rs)
    return dict(size=size, nonzero=nz, sparsity=1.0 - nz / size if size else 0.0)

  return dict(layers=rows, total=total(rows), prunable=total([r for r in rows if r["prunable"]]))


def format_sparsity_report(report: dict) -> str:
  """A plain-text table of `sparsity_report`'s output."""
  lines = [f"{'parameter':<48} {'shape':<20} {'nonzero':>10} {'size':>10} {'sparsity':>9}"]
  for r in report["layers"]:
    mark = "*" if r["prunable"] else " "
    lines.append(f"{mark}{r['path']:<47} {str(tuple(r['shape'])):<20} {r['nonzero']:>10} "
                 f"{r['size']:>10} {r['sparsity']:>9.2%}")
  for key in ("prunable", "total"):
    t = report[key]
    lines.append(f"{key:<69} {t['nonzero']:>10} {t['size']:>10} {t['sparsity']:>9.2%}")
  return "\n".join(lines)
