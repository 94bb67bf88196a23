"""Pruning masks of parameter pytrees: magnitude masks, applying them, masking updates.

Pruned (sparse) networks are the input of direct sparse convolution (Escort; Chen, 2018, whose
models are magnitude-pruned to 80-95% sparsity). This module holds the masks themselves:

* `magnitude_mask` / `magnitude_masks` / `magnitude_prune`: keep the largest-|w| weights, per layer
  or globally over all prunable leaves, pruning exactly `round(sparsity * size)` weights (ties
  broken by position, so the count is exact even with repeated magnitudes).
* `apply_masks` / `mask_tree`: zero (or fill) the pruned entries of a pytree.

Masks are pytrees with the structure of the parameters in which each prunable leaf is a bool
array (True = kept) and every other leaf is `None`. Which leaves are prunable is decided by a
predicate `prunable(path, leaf) -> bool`; the default selects conv and dense kernels (leaves named
"kernel" with at least 2 dimensions), not biases, BatchNorm scales or embeddings.

Built on the masks: the gradual schedule of Zhu & Gupta (`pruning_schedules`), optax wrappers that
keep pruned weights at zero or prune during training (`pruning_optim`), per-leaf sparsity tables
(`sparsity_report`) and dynamic sparse training (`sparse_training`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fastnets.checks import check_sparsity

__all__ = [
  "apply_masks",
  "default_prunable",
  "magnitude_mask",
  "magnitude_masks",
  "magnitude_prune",
  "mask_tree",
  "path_to_str",
  "prunable_leaves",
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
  check_sparsity(sparsity)
  w = jnp.asarray(w)
  return _mask_jit(w, jnp.asarray(_num_pruned(sparsity, w.size), jnp.int32))


@jax.jit  # one compilation per leaf shape, whatever the sparsity (eager callers stay fast)
def _mask_jit(w, n_pruned):
  mag = jnp.abs(w).reshape(-1).astype(jnp.promote_types(w.dtype, jnp.float32))
  return _keep_by_rank(mag, n_pruned).reshape(w.shape)


def prunable_leaves(params: PyTree, prunable: Prunable = default_prunable):
  """`(leaves with paths, treedef, [prunable(path, leaf) per leaf])` of a parameter pytree."""
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
  leaves, treedef, flags = prunable_leaves(params, prunable)
  if isinstance(sparsity, Mapping):
    if scope != "layer":
      raise ValueError("sparsity as a per-layer mapping needs scope='layer'.")
    for k, v in sparsity.items():
      check_sparsity(v, f"sparsity[{k!r}]")
  else:
    check_sparsity(sparsity)
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
