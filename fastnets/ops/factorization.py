"""Factorisations of matrix dimensions, and what the Block-Term and Tensor-Train formats share.

A tensor format factors the dimensions of a weight matrix W of shape (I, J),
I = I_1 * ... * I_N and J = J_1 * ... * J_N, and views W as a tensor W[(i_1, j_1), ..., (i_N, j_N)].
All multi-indices are row-major (C order): the row index of W is
i = ((i_1 * I_2 + i_2) * I_3 + i_3) ..., so `x.reshape(B, I_1, ..., I_N)` gives x[b, i_1, ..., i_N],
and likewise for the columns. This module checks and proposes such factorisations
(`check_factorization`, `balanced_factors`) and holds the initialisation helpers both formats use.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_factors", "balanced_factors", "check_factorization", "check_matmul_input",
           "check_same_modes",
           "normal_draws", "rescale_to_sqnorm"]


def as_factors(factors, name: str) -> tuple[int, ...]:
  """Checks a factorisation argument: a non-empty sequence of positive Python ints."""
  if isinstance(factors, (int, str)) or not isinstance(factors, Sequence):
    raise TypeError(f"{name} must be a non-empty sequence of positive ints (e.g. (4, 7, 4, 7)), "
                    f"got {factors!r}.")
  out = []
  for f in factors:
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
      raise TypeError(f"{name} must contain ints, got {factors!r}.")
    f = int(f)
    if f < 1:
      raise ValueError(f"{name} must contain positive ints, got {tuple(factors)!r}.")
    out.append(f)
  if not out:
    raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {factors!r}.")
  return tuple(out)


def check_factorization(dim: int, factors: Sequence[int], name: str = "factors",
                        dim_name: str = "the dimension") -> tuple[int, ...]:
  """Checks that `factors` are positive ints whose product is `dim`; returns them as a tuple.

  Args:
    dim: the dimension being factored.
    factors: candidate factorisation, e.g. (4, 7, 4, 7) for 784.
    name: the argument name used in the error message.
    dim_name: what `dim` is, for the error message.

  Raises:
    TypeError: `factors` is not a sequence of ints.
    ValueError: a factor is not positive, or the product differs from `dim`; the message
      suggests a balanced factorisation of `dim`.
  """
  factors = as_factors(factors, name)
  if math.prod(factors) != dim:
    raise ValueError(
        f"{name}={factors} multiply to {math.prod(factors)}, but {dim_name} is {dim}: the product "
        f"of {name} must equal it (e.g. {balanced_factors(dim, len(factors))}).")
  return factors


def balanced_factors(n: int, num_factors: int) -> tuple[int, ...]:
  """The factorisation of `n` into `num_factors` factors with the smallest sum (most balanced).

  Factors are returned in ascending order; 1s appear only when `n` has too few prime factors.
  For images flattened row-major, an order that splits rows and columns (e.g. 784 -> (4, 7, 4, 7)
  rather than (4, 4, 7, 7)) keeps pixel neighbourhoods in the same modes; pass that explicitly.

  Args:
    n: positive int.
    num_factors: positive int.

  Returns:
    Tuple of `num_factors` positive ints with product `n`.
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n must be a positive int, got {n!r}.")
  if isinstance(num_factors, bool) or not isinstance(num_factors, int) or num_factors < 1:
    raise ValueError(f"num_factors must be a positive int, got {num_factors!r}.")

  @functools.lru_cache(maxsize=None)
  def best(m: int, k: int, lo: int):
    # Smallest-sum non-decreasing factorisation of m into k factors, each >= lo.
    if k == 1:
      return (m,) if m >= lo else None
    result = None
    d = lo
    while d ** k <= m:
      if m % d == 0:
        rest = best(m // d, k - 1, d)
        if rest is not None and (result is None or d + sum(rest) < sum(result)):
          result = (d,) + rest
      d += 1
    return result

  out = best(n, num_factors, 1)
  assert out is not None and math.prod(out) == n
  return out


def check_matmul_input(x, input_factors: Sequence[int], what: str) -> jax.Array:
  """`x` as an array of shape (..., prod(input_factors)) with a floating dtype, else a
  ValueError/TypeError naming `x` and the `what` ("factors'" or "cores'") input sizes."""
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != math.prod(input_factors):
    raise ValueError(
        f"x must have shape (..., I) with I = prod of the {what} input sizes {input_factors} = "
        f"{math.prod(input_factors)}, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}.")
  return x


def check_same_modes(input_factors, output_factors):
  """Raises ValueError unless the input and output factorisations have the same number of modes."""
  if len(input_factors) != len(output_factors):
    raise ValueError(
        f"input_factors {input_factors} and output_factors {output_factors} must have the same "
        f"number of modes N, got {len(input_factors)} and {len(output_factors)}.")


@jax.jit
def rescale_to_sqnorm(x, sq, target):
  """x * sqrt(target / sq) in x's dtype: rescales a tensor whose format has ||W||_F^2 = sq."""
  factor = jnp.sqrt(target / jnp.maximum(sq, jnp.finfo(sq.dtype).tiny))
  return (x * factor).astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def normal_draws(key, shapes, stds, dtype):
  """Zero-mean normal tensors of the given shapes and standard deviations, one per split key.

  One compiled computation for all the tensors (eager per-tensor draws compile one each);
  `shapes`, `stds` (tuples) and `dtype` are static.
  """
  keys = jax.random.split(key, len(shapes))
  return tuple(s * jax.random.normal(k, shp, dtype) for k, shp, s in zip(keys, shapes, stds))
