"""Sizes, nonzeros and sparsity of every leaf of a parameter pytree, and a plain-text table of them.

Reads concrete arrays (host-side, for logs and results files), optionally through pruning masks
(`fastnets.ops.pruning`), so a masked leaf counts its kept entries rather than its nonzeros.
"""

from __future__ import annotations

import jax
import numpy as np

from fastnets.ops.pruning import Prunable, PyTree, default_prunable, path_to_str, prunable_leaves

__all__ = ["format_sparsity_report", "sparsity_report"]


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
  leaves, _, flags = prunable_leaves(params, prunable)
  mask_of = {}
  if masks is not None:
    for path, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda m: m is None)[0]:
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
