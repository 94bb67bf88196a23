"""Optax wrappers over pruning masks: keep pruned weights at zero, or prune during training.

* `masked_updates(tx, masks)`: fine-tuning a pruned model; pruned weights get no gradient (so no
  momentum builds up on them) and no update.
* `gradual_magnitude_pruning(tx, schedule)`: magnitude pruning during training following the
  gradual schedule of Zhu & Gupta (2017) (`pruning_schedules.ZhuGuptaSchedule`), masks in the
  optimizer state.
* `pruning_masks(opt_state)`: the masks held by either wrapper.

Masks are the pytrees of `fastnets.ops.pruning` (bool on prunable leaves, None elsewhere).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fastnets.ops.pruning import (
  Prunable,
  PyTree,
  default_prunable,
  magnitude_masks,
  mask_tree,
  prunable_leaves,
)
from fastnets.ops.pruning_schedules import ZhuGuptaSchedule

__all__ = [
  "GradualPruningState",
  "MaskedUpdatesState",
  "gradual_magnitude_pruning",
  "masked_inner_update",
  "masked_updates",
  "pruning_masks",
]


class MaskedUpdatesState(NamedTuple):
  masks: PyTree
  inner_state: Any


class GradualPruningState(NamedTuple):
  count: jax.Array
  masks: PyTree
  inner_state: Any


def masked_inner_update(tx: optax.GradientTransformation, masks: PyTree, updates: PyTree,
                        inner_state: Any, params: PyTree | None):
  """`tx.update` with pruned entries held at zero: gradients masked before `tx` (so no momentum
  builds up on them) and its updates masked after. Returns `(updates, inner_state)`."""
  u, inner = tx.update(mask_tree(masks, updates), inner_state, params)
  return mask_tree(masks, u), inner


def _masks_from_params(params, prunable):
  leaves, treedef, flags = prunable_leaves(params, prunable)
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
    u, inner = masked_inner_update(tx, state.masks, updates, state.inner_state, params)
    return u, MaskedUpdatesState(state.masks, inner)

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
    leaves, treedef, flags = prunable_leaves(params, prunable)
    m = [jnp.ones(x.shape, bool) if f else None for (_, x), f in zip(leaves, flags)]
    return GradualPruningState(
      count=jnp.zeros((), jnp.int32), masks=jax.tree_util.tree_unflatten(treedef, m),
      inner_state=tx.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("gradual_magnitude_pruning needs params: call update(grads, state, params).")
    u, inner = masked_inner_update(tx, state.masks, updates, state.inner_state, params)
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
