"""Einsum contraction orders and their FLOP counts, for the tensor-format matmuls.

`contraction_plan` picks the pairwise contraction order of an einsum for concrete operand shapes
(opt_einsum's exhaustive "optimal" search up to 7 operands, its dynamic programming beyond, or
another named strategy or an explicit path), validates it and counts its FLOPs with
`einsum_path_flops`, an accounting independent of opt_einsum's. Plans are cached per
(equation, shapes, strategy), so a jitted caller searches once per traced shape.

Fewest FLOPs is not always fastest: with small ranks the FLOP-optimal order moves large
intermediates through many transposes, and `optimize="size"` (smallest largest intermediate) can
win despite more FLOPs; `experiments/bench_bt_rnn.py` measures both.
"""

import functools
import math
from typing import NamedTuple, Sequence

import opt_einsum

__all__ = ["ContractionPlan", "STRATEGIES", "contraction_plan", "einsum_path_flops"]

# Up to this many einsum operands the exhaustive search is used (it is exponential; 7 operands
# take milliseconds), beyond it opt_einsum's dynamic programming ("dp"), which is also
# FLOP-optimal over the paths without outer products.
_MAX_OPERANDS_OPTIMAL = 7


class ContractionPlan(NamedTuple):
  """The einsum, its pairwise contraction order and its cost.

  Attributes:
    subscripts: the einsum equation (batch index first).
    path: the pairwise contraction order, as accepted by `jnp.einsum(optimize=...)`.
    flops: floating-point operations of that order (a multiply-add counts 2, as in `2 B I J`
      for a dense x @ W).
    dense_flops: 2 * B * I * J, the cost of x @ W with W dense.
    largest_intermediate: number of elements of the largest intermediate tensor.
  """
  subscripts: str
  path: tuple[tuple[int, ...], ...]
  flops: int
  dense_flops: int
  largest_intermediate: int


def einsum_path_flops(subscripts: str, shapes: Sequence[Sequence[int]],
                      path: Sequence[Sequence[int]]) -> tuple[int, int]:
  """FLOPs and largest intermediate size of an einsum evaluated along a pairwise `path`.

  Independent of opt_einsum's accounting (the tests compare the two). A step contracting the
  operands in `path[k]` over index set U costs prod_{u in U} |u| multiply-adds, counted as 2 FLOPs
  each when some index is summed (1 when the step is a pure outer/Hadamard product).

  Args:
    subscripts: explicit einsum equation "ab,bc->ac".
    shapes: the operands' shapes.
    path: opt_einsum-style path: a list of tuples of positions in the current operand list; the
      contracted operands are removed and their result appended.

  Returns:
    (flops, largest_intermediate_elements).
  """
  inputs, output = subscripts.replace(" ", "").split("->")
  terms = inputs.split(",")
  if len(terms) != len(shapes):
    raise ValueError(f"subscripts has {len(terms)} operands but {len(shapes)} shapes were given.")
  sizes = {}
  for term, shp in zip(terms, shapes):
    for s, d in zip(term, shp):
      sizes[s] = int(d)
  terms = list(terms)
  flops, largest = 0, 0
  for step in path:
    step = sorted(step, reverse=True)
    picked = [terms.pop(p) for p in step]
    rest = set("".join(terms)) | set(output)
    union = set("".join(picked))
    kept = "".join(sorted(union & rest))
    size = math.prod(sizes[s] for s in union)
    summed = bool(union - rest)
    flops += size * (2 if summed and len(picked) > 1 else 1)
    largest = max(largest, math.prod(sizes[s] for s in kept))
    terms.append(kept)
  return flops, largest


STRATEGIES = ("optimal", "size", "dp", "greedy", "left_to_right")


@functools.lru_cache(maxsize=512)
def _plan(subscripts: str, shapes: tuple[tuple[int, ...], ...], optimize) -> ContractionPlan:
  num_ops = len(shapes)
  if isinstance(optimize, (tuple, list)):  # An explicit path.
    path = optimize
  elif optimize == "optimal" and num_ops <= _MAX_OPERANDS_OPTIMAL:
    path, _ = opt_einsum.contract_path(subscripts, *shapes, shapes=True, optimize="optimal")
  elif optimize in ("optimal", "dp"):
    path, _ = opt_einsum.contract_path(subscripts, *shapes, shapes=True, optimize="dp")
  elif optimize == "size":
    path, _ = opt_einsum.contract_path(
        subscripts, *shapes, shapes=True,
        optimize=opt_einsum.DynamicProgramming(minimize="size", search_outer=True))
  elif optimize == "greedy":
    path, _ = opt_einsum.contract_path(subscripts, *shapes, shapes=True, optimize="greedy")
  elif optimize == "left_to_right":
    # x (operand 0) absorbs the other operands in the given order: the naive order. After each
    # step the result is appended last, so x's running product is the last operand.
    path = [(0, 1)] + [(0, num_ops - 2 - k) for k in range(num_ops - 2)]
  else:
    raise ValueError(f"optimize must be one of {STRATEGIES} or an explicit path (a sequence of "
                     f"index tuples), got {optimize!r}.")
  path = tuple(tuple(int(p) for p in step) for step in path)
  remaining = num_ops
  for step in path:
    if len(step) < 1 or any(not 0 <= p < remaining for p in step) or len(set(step)) != len(step):
      raise ValueError(f"optimize path {path} is not a valid contraction path for {num_ops} "
                       "operands.")
    remaining -= len(step) - 1
  if remaining != 1:
    raise ValueError(f"optimize path {path} leaves {remaining} operands instead of 1.")
  flops, largest = einsum_path_flops(subscripts, shapes, path)
  return ContractionPlan(subscripts, path, flops, 0, largest)


def contraction_plan(subscripts: str, shapes: Sequence[Sequence[int]], optimize="optimal",
                     dense: tuple[int, int, int] | None = None) -> ContractionPlan:
  """The pairwise contraction order of `subscripts` for these operand shapes, and its cost.

  Args:
    subscripts: explicit einsum equation.
    shapes: the operands' shapes.
    optimize: "optimal" (fewest FLOPs: exhaustive up to 7 operands, dynamic programming
      beyond), "dp" (dynamic programming on FLOPs), "size" (smallest largest intermediate),
      "greedy", "left_to_right" (operand 0 absorbs the others in order), or an explicit
      opt_einsum path (a sequence of index tuples).
    dense: (batch, in_dim, out_dim) of the dense product the einsum replaces, for
      `dense_flops` = 2 * batch * in_dim * out_dim (0 when None).

  Raises:
    ValueError: unknown strategy, or an explicit path that is not a valid contraction.
  """
  if isinstance(optimize, (list, tuple)):
    optimize = tuple(tuple(int(p) for p in step) for step in optimize)
  plan = _plan(subscripts, tuple(tuple(int(d) for d in s) for s in shapes), optimize)
  if dense is not None:
    batch, in_dim, out_dim = dense
    plan = plan._replace(dense_flops=2 * batch * in_dim * out_dim)
  return plan
