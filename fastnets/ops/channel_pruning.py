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

Both take `channel_multiple` (default 1, the paper's per-channel ranking): with m > 1 every layer
keeps a multiple of m channels, so that the surgically pruned model has widths that vectorize
(an odd width such as 13 runs no faster than 16 on a CPU's SIMD lanes or a GPU's tiles). The
ranking then removes *chunks*: a layer's alive channels sorted by score are cut into the lowest
`alive - m * floor((alive - 1) / m)` channels (bringing the count down to the next multiple), then
runs of m; a chunk's score is the mean of its channels' scores, and chunks of all layers are
ranked together. A layer always keeps at least `m * ceil(minimum / m)` channels (its per-layer
minimum rounded up to a multiple), so a layer whose width is not above that is never pruned.
The kept channels of each layer are always its highest-scored ones.
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


def layer_minimum(num_channels: int, min_keep: float, channel_multiple: int = 1) -> int:
  """The fewest channels a layer of `num_channels` may keep: ceil(min_keep * C), at least 1,
  rounded up to a multiple of `channel_multiple` (it may then exceed C: such a layer is never
  pruned)."""
  if not 0.0 < float(min_keep) <= 1.0:
    raise ValueError(f"min_keep must be a fraction in (0, 1]; got {min_keep!r}.")
  if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, (int, np.integer)) \
     or channel_multiple < 1:
    raise ValueError(f"channel_multiple must be a positive int; got {channel_multiple!r}.")
  m = int(channel_multiple)
  return m * math.ceil(max(1, int(math.ceil(float(min_keep) * num_channels - 1e-9))) / m)


def _check_masks(scores, alive):
  if set(scores) != set(alive):
    raise ValueError(f"scores and alive must name the same gates; got {sorted(scores)} and "
                     f"{sorted(alive)}.")
  for name in alive:
    if np.shape(scores[name]) != np.shape(alive[name]) or np.ndim(alive[name]) != 1:
      raise ValueError(f"gate {name!r}: scores and alive must be (C,) arrays of one shape; got "
                       f"{np.shape(scores[name])} and {np.shape(alive[name])}.")


def _removal_order(scores, alive, min_keep, channel_multiple=1):
  """Removal units in global order: [[(name, index), ...], ...], lowest mean score first (ties by
  name, then position in the layer). With channel_multiple 1 every unit is one channel; with m
  each unit brings its layer to the next lower multiple of m, never below the layer's minimum
  rounded up to a multiple of m (see the module docstring)."""
  layer_minimum(1, min_keep, channel_multiple)  # Checks min_keep and channel_multiple.
  m = int(channel_multiple)
  candidates = []
  for name in sorted(alive):
    a = np.asarray(alive[name], bool)
    s = np.asarray(scores[name], np.float64)
    floor = layer_minimum(a.size, min_keep, m)
    idx = np.flatnonzero(a)
    # Within a layer the lowest scores go first, so the kept channels are the highest-scored.
    idx = idx[np.argsort(s[idx], kind="stable")]
    count, start, pos = idx.size, 0, 0
    while count > floor:
      nxt = m * ((count - 1) // m)
      if nxt < floor:
        break
      chunk = idx[start:start + count - nxt]
      candidates.append((float(np.mean(s[chunk])), name, pos,
                         [(name, int(i)) for i in chunk]))
      start += count - nxt
      count, pos = nxt, pos + 1
  candidates.sort(key=lambda c: (c[0], c[1], c[2]))
  return [c[3] for c in candidates]


def _units_for(order, num_prune):
  """The fewest leading units of `order` that remove at least `num_prune` channels."""
  total = 0
  for k, unit in enumerate(order):
    if total >= num_prune:
      return k
    total += len(unit)
  return len(order)


def _apply_units(alive, units):
  out = {name: np.array(a, bool, copy=True) for name, a in alive.items()}
  for unit in units:
    for name, i in unit:
      out[name][i] = False
  return out


def global_channel_ranking(scores: Mapping[str, jax.Array], alive: Mapping[str, jax.Array],
                           num_prune: int, min_keep: float = 0.1,
                           channel_multiple: int = 1) -> dict:
  """Removes the `num_prune` lowest-scored alive channels over all layers (global ranking).

  Gate Decorator ranks the Taylor scores of every layer's gates together, so that layers differ in
  how much they lose; each layer keeps at least `layer_minimum(C, min_keep)` of its C channels
  (10% in the paper). Channels already removed (alive False) are never counted again.

  Args:
    scores: {gate name: (C,) float scores}; a higher score is a more important channel. Random
      scores give random-filter pruning, |gamma| gives magnitude (network slimming) pruning.
    alive: {gate name: (C,) bool}, True for the channels still in the model.
    num_prune: how many more channels to remove (>= 0). With `channel_multiple` > 1 whole chunks
      are removed, the fewest that remove at least `num_prune` channels (up to m - 1 more).
    min_keep: fraction in (0, 1] of each layer's channels that always stays.
    channel_multiple: every pruned layer keeps a multiple of this many channels (module
      docstring); 1: per-channel ranking, as in the paper.

  Returns:
    {gate name: (C,) numpy bool} new alive masks (the inputs are not modified).

  Raises:
    ValueError: mismatched names or shapes, negative `num_prune`, a `channel_multiple` that is
      not a positive int, or more removals than the per-layer minimum allows (the message says
      how many are possible).
  """
  _check_masks(scores, alive)
  if int(num_prune) != num_prune or num_prune < 0:
    raise ValueError(f"num_prune must be a non-negative int; got {num_prune!r}.")
  order = _removal_order(scores, alive, min_keep, channel_multiple)
  possible = sum(len(u) for u in order)
  if num_prune > possible:
    raise ValueError(
        f"num_prune={num_prune} would prune below the per-layer minimum (min_keep={min_keep}"
        f", channel_multiple={channel_multiple}): only {possible} alive channels can still be "
        "removed.")
  return _apply_units(alive, order[:_units_for(order, int(num_prune))])


def prune_to_flops(scores: Mapping[str, jax.Array], alive: Mapping[str, jax.Array],
                   flops_fn: Callable[[dict], float], target: float, min_keep: float = 0.1,
                   max_prune: int | None = None, channel_multiple: int = 1) -> tuple[dict, int]:
  """The fewest global-ranking removals that bring `flops_fn(alive)` to `target` or below.

  Args:
    scores, alive, min_keep, channel_multiple: as in `global_channel_ranking`.
    flops_fn: {gate name: (C,) bool alive} -> FLOPs of the model with those channels (e.g.
      `fastnets.ops.conv_flops_of` of the surgically pruned model); must not increase when a
      channel is removed.
    target: FLOPs to reach (absolute, not a ratio).
    max_prune: remove at most this many channels (a tick's budget); None: as many as needed.
      With `channel_multiple` > 1, at least one chunk is removed even if it is larger than
      `max_prune` (so that a small budget still makes progress).

  Returns:
    (new alive masks, number of channels removed). With `max_prune` the target may not be
    reached; check `flops_fn` of the result.

  Raises:
    ValueError: the target cannot be reached even at the per-layer minimum (without `max_prune`).
  """
  _check_masks(scores, alive)
  order = _removal_order(scores, alive, min_keep, channel_multiple)
  hi = len(order)
  if max_prune is not None:
    sizes = np.cumsum([len(u) for u in order])
    hi = min(hi, max(int(np.searchsorted(sizes, int(max_prune), side="right")),
                     1 if max_prune >= 1 else 0))

  def masks(k):
    return _apply_units(alive, order[:k])

  def result(k):
    return masks(k), sum(len(u) for u in order[:k])

  if flops_fn(masks(0)) <= target:
    return result(0)
  if flops_fn(masks(hi)) > target:
    if max_prune is None:
      raise ValueError(
          f"target FLOPs {target:.4g} is out of reach: with every layer at its minimum "
          f"(min_keep={min_keep}, channel_multiple={channel_multiple}) the model still has "
          f"{flops_fn(masks(hi)):.4g} FLOPs.")
    return result(hi)
  lo = 0  # flops(masks(lo)) > target >= flops(masks(hi))
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if flops_fn(masks(mid)) <= target:
      hi = mid
    else:
      lo = mid
  return result(hi)


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
