"""Channel (filter) pruning: Taylor scores of channel gates, global ranking, channel slicing.

Gate Decorator (You et al., NeurIPS 2019, "Gate Decorator: Global Filter Pruning Method for
Accelerating Deep Convolutional Neural Networks") multiplies every channel c of a batch norm's
output by a gate phi_c (initially 1). Removing channel c is setting phi_c = 0, and the loss change
is estimated to first order (the paper's Eq. 5, a Taylor expansion around phi):

    Theta(phi_c) = |dL/dphi_c * phi_c|,

accumulated over batches of data. All gates of all layers are ranked together (global ranking),
and the lowest-scored channels are removed, each layer keeping at least a minimum fraction of its
channels (10% in the paper). This module holds the array-level pieces:

* `taylor_scores(gates, gate_grads)`: Theta for one batch (sum over batches to accumulate; the
  absolute value is taken per batch, so a channel whose gradient changes sign between batches still
  counts as important).
* `global_channel_ranking(scores, alive, num_prune, min_keep)`: the new alive masks after removing
  the `num_prune` lowest-scored alive channels over all layers, honouring the per-layer minimum.
* `prune_to_flops(scores, alive, flops_fn, target, min_keep)`: the smallest number of removals (in
  the global ranking's order) that brings `flops_fn(alive)` to `target` or below (binary search;
  the FLOPs must fall as channels are removed).
* `slice_channels(tree, dependencies, keep)`: the channel surgery on a variables pytree: for every
  gate, keep the listed entries along the listed axis of every dependent leaf (conv output
  channels, batch-norm vectors, the next layer's input channels). Returns a new pytree; the input
  is never modified.

Scores and masks are dicts from a gate's name (a '/'-joined module path) to a (C,) array.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "global_channel_ranking",
    "layer_minimum",
    "prune_to_flops",
    "slice_channels",
    "taylor_scores",
]


def taylor_scores(gates: Mapping[str, jax.Array], gate_grads: Mapping[str, jax.Array]) -> dict:
  """Gate Decorator's Taylor score |phi_c * dL/dphi_c| per channel (You et al. 2019, Eq. 5).

  Args:
    gates: {gate name: (C,) float gate values phi}.
    gate_grads: {gate name: (C,) float dL/dphi of one batch}, same names and shapes.

  Returns:
    {gate name: (C,) float32 scores}; add the results of several batches to accumulate.

  Raises:
    ValueError: names or shapes that do not match.
  """
  if set(gates) != set(gate_grads):
    raise ValueError(f"gates and gate_grads must name the same gates; got {sorted(gates)} and "
                     f"{sorted(gate_grads)}.")
  out = {}
  for name, phi in gates.items():
    g = gate_grads[name]
    if jnp.shape(phi) != jnp.shape(g) or jnp.ndim(phi) != 1:
      raise ValueError(f"gate {name!r}: gates and gate_grads must be (C,) arrays of one shape; "
                       f"got {jnp.shape(phi)} and {jnp.shape(g)}.")
    out[name] = jnp.abs(jnp.asarray(phi, jnp.float32) * jnp.asarray(g, jnp.float32))
  return out


def layer_minimum(num_channels: int, min_keep: float) -> int:
  """The fewest channels a layer of `num_channels` may keep: ceil(min_keep * C), at least 1."""
  if not 0.0 < float(min_keep) <= 1.0:
    raise ValueError(f"min_keep must be a fraction in (0, 1]; got {min_keep!r}.")
  return max(1, int(math.ceil(float(min_keep) * num_channels - 1e-9)))


def _check_masks(scores, alive):
  if set(scores) != set(alive):
    raise ValueError(f"scores and alive must name the same gates; got {sorted(scores)} and "
                     f"{sorted(alive)}.")
  for name in alive:
    if np.shape(scores[name]) != np.shape(alive[name]) or np.ndim(alive[name]) != 1:
      raise ValueError(f"gate {name!r}: scores and alive must be (C,) arrays of one shape; got "
                       f"{np.shape(scores[name])} and {np.shape(alive[name])}.")


def _removal_order(scores, alive, min_keep):
  """Alive channels in global removal order (lowest score first; ties by name, then index),
  each layer's first `alive - minimum` removals only: [(name, index), ...]."""
  candidates = []
  for name in sorted(alive):
    a = np.asarray(alive[name], bool)
    s = np.asarray(scores[name], np.float64)
    minimum = layer_minimum(a.size, min_keep)
    idx = np.flatnonzero(a)
    removable = max(0, idx.size - minimum)
    # Within a layer the lowest scores go first; only `removable` of them may ever go.
    order = idx[np.argsort(s[idx], kind="stable")][:removable]
    candidates += [(float(s[i]), name, int(i)) for i in order]
  candidates.sort(key=lambda c: (c[0], c[1], c[2]))
  return [(name, i) for _, name, i in candidates]


def global_channel_ranking(scores: Mapping[str, jax.Array], alive: Mapping[str, jax.Array],
                           num_prune: int, min_keep: float = 0.1) -> dict:
  """Removes the `num_prune` lowest-scored alive channels over all layers (global ranking).

  Gate Decorator ranks the Taylor scores of every layer's gates together, so that layers differ in
  how much they lose; each layer keeps at least `layer_minimum(C, min_keep)` of its C channels
  (10% in the paper). Channels already removed (alive False) are never counted again.

  Args:
    scores: {gate name: (C,) float scores}; a higher score is a more important channel. Random
      scores give random-filter pruning, |gamma| gives magnitude (network slimming) pruning.
    alive: {gate name: (C,) bool}, True for the channels still in the model.
    num_prune: how many more channels to remove (>= 0).
    min_keep: fraction in (0, 1] of each layer's channels that always stays.

  Returns:
    {gate name: (C,) numpy bool} new alive masks (the inputs are not modified).

  Raises:
    ValueError: mismatched names or shapes, negative `num_prune`, or more removals than the
      per-layer minimum allows (the message says how many are possible).
  """
  _check_masks(scores, alive)
  if int(num_prune) != num_prune or num_prune < 0:
    raise ValueError(f"num_prune must be a non-negative int; got {num_prune!r}.")
  order = _removal_order(scores, alive, min_keep)
  if num_prune > len(order):
    raise ValueError(
        f"num_prune={num_prune} would prune below the per-layer minimum (min_keep={min_keep}): "
        f"only {len(order)} alive channels can still be removed.")
  out = {name: np.array(a, bool, copy=True) for name, a in alive.items()}
  for name, i in order[:int(num_prune)]:
    out[name][i] = False
  return out


def prune_to_flops(scores: Mapping[str, jax.Array], alive: Mapping[str, jax.Array],
                   flops_fn: Callable[[dict], float], target: float, min_keep: float = 0.1,
                   max_prune: int | None = None) -> tuple[dict, int]:
  """The fewest global-ranking removals that bring `flops_fn(alive)` to `target` or below.

  Args:
    scores, alive, min_keep: as in `global_channel_ranking`.
    flops_fn: {gate name: (C,) bool alive} -> FLOPs of the model with those channels (e.g.
      `fastnets.ops.conv_flops_of` of the surgically pruned model); must not increase when a
      channel is removed.
    target: FLOPs to reach (absolute, not a ratio).
    max_prune: remove at most this many (a tick's budget); None: as many as needed.

  Returns:
    (new alive masks, number removed). With `max_prune` the target may not be reached; check
    `flops_fn` of the result.

  Raises:
    ValueError: the target cannot be reached even at the per-layer minimum (without `max_prune`).
  """
  _check_masks(scores, alive)
  order_len = len(_removal_order(scores, alive, min_keep))
  hi = order_len if max_prune is None else min(order_len, int(max_prune))

  def masks(n):
    return global_channel_ranking(scores, alive, n, min_keep)

  if flops_fn(masks(0)) <= target:
    return masks(0), 0
  if flops_fn(masks(hi)) > target:
    if max_prune is None:
      raise ValueError(
          f"target FLOPs {target:.4g} is out of reach: with every layer at its minimum "
          f"(min_keep={min_keep}) the model still has {flops_fn(masks(hi)):.4g} FLOPs.")
    return masks(hi), hi
  lo = 0  # flops(masks(lo)) > target >= flops(masks(hi))
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if flops_fn(masks(mid)) <= target:
      hi = mid
    else:
      lo = mid
  return masks(hi), hi


def slice_channels(tree, dependencies: Mapping[str, Sequence[tuple[tuple[str, ...], int]]],
                   keep: Mapping[str, jax.Array]):
  """Channel surgery on a nested-dict pytree: keep the listed channels of every dependent leaf.

  Args:
    tree: nested mappings of arrays (Flax variables: {"params": ..., "batch_stats": ...}).
    dependencies: {gate name: [(path, axis), ...]}: every leaf (a key path into `tree`) whose
      `axis` indexes that gate's channels: the conv's output channels (kernel axis 3), the batch
      norm's scale, bias, mean and variance (axis 0), a depthwise conv's kernel (axis 3), the next
      conv's or dense layer's input channels (axis 2 or 0). Paths missing from `tree` (a
      collection the tree lacks) are skipped.
    keep: {gate name: (C,) bool}, True for the channels that stay.

  Returns:
    A new nested dict with the sliced leaves; the other leaves are shared, not copied. `tree` is
    not modified.

  Raises:
    ValueError: a gate without a keep mask, a mask of the wrong length, or a gate that keeps no
      channel.
  """
  def copy(node):
    return {k: copy(v) for k, v in node.items()} if isinstance(node, Mapping) else node

  out = copy(tree)
  for name, deps in dependencies.items():
    if name not in keep:
      raise ValueError(f"keep has no mask for gate {name!r}; it names {sorted(keep)}.")
    k = np.asarray(keep[name], bool)
    if not k.any():
      raise ValueError(f"gate {name!r} keeps no channel; a layer must keep at least one.")
    idx = np.flatnonzero(k)
    for path, axis in deps:
      node = out
      for key in path[:-1]:
        node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
          break
      if node is None or path[-1] not in node:
        continue
      leaf = node[path[-1]]
      if leaf.shape[axis] != k.size:
        raise ValueError(f"gate {name!r} has {k.size} channels but {'/'.join(path)} has "
                         f"{leaf.shape[axis]} along axis {axis}.")
      node[path[-1]] = jnp.take(leaf, jnp.asarray(idx), axis=axis)
  return out
