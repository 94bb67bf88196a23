"""Dynamic sparse training: ERK densities, SET / RigL prune-and-regrow, EDST tickets, ensembles.

FreeTickets (Liu et al., ICLR 2022, "Deep Ensembling with No Overhead for either Training or
Testing: The All-Round Blessings of Dynamic Sparsity") trains sparse networks whose connectivity
changes during training (dynamic sparse training, DST) and collects several sparse "tickets" from
one run (EDST) whose ensemble is accurate at a fraction of the dense training FLOPs:

* `erk_counts` / `erk_densities`: Erdos-Renyi-Kernel allocation (Evci et al. 2020, RigL, Sec. 3):
  a layer of shape (d_1, ..., d_k) gets density proportional to sum(d_i) / prod(d_i), scaled so
  that the kept weights add up to `density` of all prunable weights (exactly, in integers), layers
  whose density would exceed 1 being dense.
* `random_sparse_masks`: masks with exactly those counts, positions uniform at random.
* `prune_regrow_masks`: one topology update: in every layer drop the `death_rate` fraction of the
  active weights with the smallest magnitude and regrow as many inactive ones, at random (SET,
  Mocanu et al. 2018) or where the dense gradient is largest (RigL). The count is unchanged.
* `DSTSchedule`, `EDSTSchedule`: when to update and with which death rate (cosine-decayed as in
  RigL); EDST's refinement phases each start with a large-death-rate global exploration step
  (0.8 in FreeTickets) and end in one ticket.
* `dynamic_sparse_training(tx, masks, schedule, method, key)`: an optax wrapper: pruned weights
  get no gradient, no update and stay exactly zero; at update steps the masks change.
* `ensemble_probabilities`, `pairwise_disagreement`: the ensemble's softmax average and the mean
  fraction of examples on which two members' predictions differ.

Masks are the pytrees of `fastnets.ops.pruning` (bool on prunable leaves, None elsewhere), so
`apply_masks`, `masked_updates` and `sparsity_report` apply to them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fastnets.ops.pruning import default_prunable, mask_tree, path_to_str
from fastnets.ops.pruning_optim import masked_inner_update

__all__ = [
    "DSTSchedule",
    "DSTState",
    "EDSTSchedule",
    "dst_masks",
    "dynamic_sparse_training",
    "ensemble_probabilities",
    "erk_counts",
    "erk_densities",
    "pairwise_disagreement",
    "prune_regrow_masks",
    "random_sparse_masks",
]

PyTree = Any
METHODS = ("set", "rigl")


def _check_density(density, name="density"):
  d = np.asarray(density)
  if d.ndim != 0 or not np.isfinite(d) or not 0.0 < float(d) <= 1.0:
    raise ValueError(f"{name} must be a number in (0, 1]; got {density!r}.")


def _prunable(params, prunable):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return leaves, treedef, [bool(prunable(p, x)) for p, x in leaves]


def erk_counts(params: PyTree, density: float, *, prunable=default_prunable,
               kernel_dims: bool = True) -> dict:
  """Kept weights per prunable leaf under the Erdos-Renyi(-Kernel) allocation.

  Args:
    params: pytree of arrays (only shapes are read).
    density: overall fraction of prunable weights kept, in (0, 1].
    prunable: predicate `(path, leaf) -> bool` (default: conv and dense kernels).
    kernel_dims: ERK (True: all dims enter sum/prod) or ER (False: only the last two).

  Returns:
    {leaf path ('params/Dense_0/kernel'): kept count}; the counts add up to
    `round(density * total)` exactly, no count exceeds its leaf's size.

  Raises:
    ValueError: density outside (0, 1], or no prunable leaf.
  """
  _check_density(density)
  leaves, _, flags = _prunable(params, prunable)
  shapes = {path_to_str(p): tuple(x.shape) for (p, x), f in zip(leaves, flags) if f}
  if not shapes:
    raise ValueError("params have no prunable leaf (see the prunable predicate).")
  size = {k: math.prod(s) for k, s in shapes.items()}
  dims = {k: (s if kernel_dims else s[-2:]) for k, s in shapes.items()}
  raw = {k: sum(d) / math.prod(d) for k, d in dims.items()}
  total = sum(size.values())
  target = int(math.floor(float(density) * total + 0.5))
  dense: set = set()
  while True:
    sparse = [k for k in shapes if k not in dense]
    budget = target - sum(size[k] for k in dense)
    denom = sum(raw[k] * size[k] for k in sparse)
    eps = budget / denom if denom else 0.0
    over = [k for k in sparse if eps * raw[k] > 1.0]
    if not over:
      break
    dense.add(max(over, key=lambda k: raw[k]))
  real = {k: (size[k] if k in dense else eps * raw[k] * size[k]) for k in shapes}
  counts = {k: min(size[k], int(math.floor(v))) for k, v in real.items()}
  # Largest remainders get the leftover weights, so that the total is exact.
  left = target - sum(counts.values())
  order = sorted((k for k in shapes if counts[k] < size[k]), key=lambda k: real[k] - counts[k],
                 reverse=True)
  while left > 0:
    for k in order:
      if left and counts[k] < size[k]:
        counts[k] += 1
        left -= 1
  return counts


def erk_densities(params: PyTree, density: float, **kwargs) -> dict:
  """{leaf path: density} of `erk_counts` (kept / size)."""
  counts = erk_counts(params, density, **kwargs)
  sizes = {path_to_str(p): x.size for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  return {k: c / sizes[k] for k, c in counts.items()}


def random_sparse_masks(key: jax.Array, params: PyTree, counts: Mapping[str, int], *,
                        prunable=default_prunable) -> PyTree:
  """Masks keeping exactly `counts[path]` uniformly random weights of every prunable leaf.

  Args:
    key: PRNG key.
    params: pytree of arrays.
    counts: {leaf path: kept count}, e.g. from `erk_counts`; prunable leaves not named stay dense.

  Returns:
    masks pytree (bool on prunable leaves, None elsewhere).
  """
  leaves, treedef, flags = _prunable(params, prunable)
  out = []
  for i, ((path, x), f) in enumerate(zip(leaves, flags)):
    if not f:
      out.append(None)
      continue
    k = counts.get(path_to_str(path), x.size)
    if not 0 <= k <= x.size:
      raise ValueError(f"counts[{path_to_str(path)!r}] must be in [0, {x.size}]; got {k}.")
    perm = jax.random.permutation(jax.random.fold_in(key, i), x.size)
    out.append(jnp.zeros((x.size,), bool).at[perm[:k]].set(True).reshape(x.shape))
  return jax.tree_util.tree_unflatten(treedef, out)


def _lowest(score, k):
  """Bool mask of the k lowest entries of a flat score (k may be traced; ties by position)."""
  n = score.shape[0]
  order = jnp.argsort(score, stable=True)
  return jnp.zeros((n,), bool).at[order].set(jnp.arange(n) < k)


def prune_regrow_masks(key: jax.Array, params: PyTree, grads: PyTree, masks: PyTree,
                       death_rate, method: str = "rigl") -> PyTree:
  """One DST topology update; every layer keeps exactly its number of active weights.

  Per masked leaf with `a` active weights: k = floor(death_rate * a) active weights of smallest
  |w| are dropped, then k of the inactive ones (the just-dropped included) are grown: at random
  (SET) or with the largest |dL/dw| (RigL; `grads` is the dense gradient). Jit-compatible
  (`death_rate` may be traced).

  Args:
    key: PRNG key (SET's choice; RigL breaks no ties with it).
    params, grads: pytrees of the parameters' structure.
    masks: masks pytree (bool on masked leaves, None elsewhere).
    death_rate: fraction in [0, 1] of each layer's active weights replaced.
    method: "set" or "rigl".

  Returns:
    new masks of the same structure.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
  if not isinstance(death_rate, jax.core.Tracer):
    if not 0.0 <= float(death_rate) <= 1.0:
      raise ValueError(f"death_rate must be in [0, 1]; got {death_rate!r}.")
  leaves, treedef = jax.tree_util.tree_flatten(masks, is_leaf=lambda x: x is None)
  p_leaves = treedef.flatten_up_to(params)
  g_leaves = treedef.flatten_up_to(grads)
  out = []
  for i, (m, w, g) in enumerate(zip(leaves, p_leaves, g_leaves)):
    if m is None:
      out.append(None)
      continue
    mf = m.reshape(-1)
    active = jnp.sum(mf)
    k = jnp.floor(death_rate * active).astype(jnp.int32)
    mag = jnp.abs(w).reshape(-1).astype(jnp.float32)
    drop = _lowest(jnp.where(mf, mag, jnp.inf), k)
    kept = mf & ~drop
    if method == "rigl":
      grow_score = jnp.abs(g).reshape(-1).astype(jnp.float32)
    else:
      grow_score = jax.random.uniform(jax.random.fold_in(key, i), mf.shape)
    grow = _lowest(jnp.where(kept, jnp.inf, -grow_score), k)
    out.append((kept | grow).reshape(m.shape))
  return jax.tree_util.tree_unflatten(treedef, out)


def _cosine(rate, t, length):
  return 0.5 * rate * (1.0 + jnp.cos(jnp.pi * jnp.clip(t / jnp.maximum(length, 1), 0.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class DSTSchedule:
  """Topology updates every `update_every` steps before `end_step`, death rate cosine-decayed
  from `death_rate` (RigL's schedule; FreeTickets: every 1000 iterations, death rate 0.5).

  `death_rate_at(step)` is 0 where no update happens (jit-compatible).
  """
  update_every: int
  death_rate: float = 0.5
  end_step: int = 10**9

  def __post_init__(self):
    if int(self.update_every) < 1:
      raise ValueError(f"update_every must be a positive int; got {self.update_every!r}.")
    if not 0.0 <= self.death_rate <= 1.0:
      raise ValueError(f"death_rate must be in [0, 1]; got {self.death_rate!r}.")

  def death_rate_at(self, step):
    step = jnp.asarray(step)
    update = (step > 0) & (step % self.update_every == 0) & (step < self.end_step)
    return jnp.where(update, _cosine(self.death_rate, step, self.end_step), 0.0)


@dataclasses.dataclass(frozen=True)
class EDSTSchedule:
  """EDST (FreeTickets): an exploration phase, then `num_tickets` refinement phases of equal
  length; each refinement after the first starts with a global exploration update of death rate
  `refine_death_rate`; inside every phase, DST updates every `update_every` steps with
  `death_rate` cosine-decayed over the phase. Ticket i is the model after
  `ticket_steps()[i]` steps.

  Raises:
    ValueError: a ticket count the schedule cannot hold (a refinement phase shorter than
      `update_every`), or bad rates.
  """
  total_steps: int
  exploration_steps: int
  num_tickets: int
  update_every: int
  death_rate: float = 0.5
  refine_death_rate: float = 0.8

  def __post_init__(self):
    if int(self.update_every) < 1 or int(self.num_tickets) < 1:
      raise ValueError(f"update_every and num_tickets must be positive ints; got "
                       f"{self.update_every!r} and {self.num_tickets!r}.")
    for name in ("death_rate", "refine_death_rate"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}.")
    if not 0 <= self.exploration_steps < self.total_steps:
      raise ValueError(f"exploration_steps must be in [0, total_steps); got "
                       f"{self.exploration_steps} of {self.total_steps}.")
    most = (self.total_steps - self.exploration_steps) // self.update_every
    if self.num_tickets > most:
      raise ValueError(
          f"num_tickets={self.num_tickets} is more than the schedule allows: "
          f"{self.total_steps - self.exploration_steps} refinement steps hold at most {most} "
          f"phases of update_every={self.update_every} steps.")

  @property
  def refine_steps(self) -> int:
    return (self.total_steps - self.exploration_steps) // self.num_tickets

  def ticket_steps(self) -> list[int]:
    """The step counts after which each ticket is taken (the last is `total_steps` or less)."""
    return [self.exploration_steps + (i + 1) * self.refine_steps for i in range(self.num_tickets)]

  def death_rate_at(self, step):
    step = jnp.asarray(step)
    e, r = self.exploration_steps, self.refine_steps
    in_refine = step >= e
    phase_start = jnp.where(in_refine, e + ((step - e) // r) * r, 0)
    phase_len = jnp.where(in_refine, r, jnp.maximum(e, 1))
    t = step - phase_start
    restart = in_refine & (step > e) & (t == 0) & (step < e + self.num_tickets * r)
    regular = (t > 0) & (t % self.update_every == 0) & (step < e + self.num_tickets * r)
    return jnp.where(restart, self.refine_death_rate,
                     jnp.where(regular, _cosine(self.death_rate, t, phase_len), 0.0))


class DSTState(NamedTuple):
  count: jax.Array
  key: jax.Array
  masks: PyTree
  inner_state: Any


def dynamic_sparse_training(tx: optax.GradientTransformation, masks: PyTree, schedule,
                            method: str = "rigl",
                            key: jax.Array | None = None) -> optax.GradientTransformation:
  """Wraps an optimizer for dynamic sparse training (SET or RigL topology updates).

  Gradients of inactive weights are zeroed before `tx` (no momentum builds on them) and their
  updates are `-params`, so after `optax.apply_updates` they are exactly zero (the first update
  also zeroes a dense initialisation outside `masks`). At update number t with
  `schedule.death_rate_at(t) > 0`, new masks come from `prune_regrow_masks` on the parameters the
  step would produce and the dense gradient; grown weights start at zero. Mask updates run under
  `lax.cond`. Every layer keeps its number of active weights.

  Args:
    tx: the inner optax transformation.
    masks: initial masks (e.g. `random_sparse_masks(key, params, erk_counts(params, 0.2))`).
    schedule: a `DSTSchedule` or `EDSTSchedule` (anything with a jit-able `death_rate_at`).
    method: "rigl" (gradient regrowth) or "set" (random regrowth).
    key: PRNG key of SET's regrowth (default `jax.random.key(0)`).

  Returns:
    An `optax.GradientTransformation`; `update` needs `params`. State: `DSTState`.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
  key = jax.random.key(0) if key is None else key

  def init(params):
    return DSTState(count=jnp.zeros((), jnp.int32), key=key, masks=masks,
                    inner_state=tx.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("dynamic_sparse_training needs params: call update(grads, state, params).")
    u, inner = masked_inner_update(tx, state.masks, updates, state.inner_state, params)
    candidate = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, u)
    rate = schedule.death_rate_at(state.count)
    new_masks = lax.cond(
        rate > 0,
        lambda: prune_regrow_masks(jax.random.fold_in(state.key, state.count), candidate,
                                   updates, state.masks, rate, method),
        lambda: state.masks)
    both = jax.tree.map(lambda a, b: None if a is None else a & b, state.masks, new_masks,
                        is_leaf=lambda x: x is None)
    neg = jax.tree.map(lambda p: -p, params)
    u = mask_tree(both, u, neg)
    return u, DSTState(state.count + 1, state.key, new_masks, inner)

  return optax.GradientTransformation(init, update)


def dst_masks(opt_state: Any) -> PyTree:
  """The current masks of the one `dynamic_sparse_training` state inside an optimizer state.

  A ticket is its parameters and these masks (its weights outside them are exactly zero); pass
  them to `fastnets.nn.sparsify_variables(variables, masks=...)` to run the ticket's convolutions
  through the sparse inference path.

  Args:
    opt_state: an optax state holding one `DSTState` (e.g. `TrainState.opt_state` of a run with
      `tx_wrapper` applying `dynamic_sparse_training`), possibly nested in chains or wrappers.

  Raises:
    ValueError: no `DSTState`, or more than one, in `opt_state`.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, DSTState))
           if isinstance(x, DSTState)]
  if len(found) != 1:
    raise ValueError(f"opt_state must hold exactly one DSTState (from dynamic_sparse_training); "
                     f"found {len(found)}.")
  return found[0].masks


def ensemble_probabilities(logits: jax.Array) -> jax.Array:
  """Softmax average of an ensemble: logits (M, N, K) -> probabilities (N, K)."""
  logits = jnp.asarray(logits)
  if logits.ndim != 3:
    raise ValueError(f"logits must be (members, examples, classes); got shape {logits.shape}.")
  return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)


def pairwise_disagreement(predictions: jax.Array) -> jax.Array:
  """Mean over member pairs of the fraction of examples predicted differently.

  Args:
    predictions: (M, N) int class predictions of M >= 2 members.

  Returns:
    float32 scalar in [0, 1].
  """
  p = jnp.asarray(predictions)
  if p.ndim != 2 or p.shape[0] < 2:
    raise ValueError(f"predictions must be (members >= 2, examples); got shape {p.shape}.")
  m = p.shape[0]
  diff = jnp.mean((p[:, None, :] != p[None, :, :]).astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.triu(diff, 1)) / (m * (m - 1) / 2)
