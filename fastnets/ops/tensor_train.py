"""Tensor-Train (TT) matrices: y = x W without ever building W.

The TT format (Oseledets 2011), the TT-layer of Novikov et al. 2015 and the TT-RNN of Yang et al.
2017 (the baseline of the BT-RNN paper). W (I, J), with I and J factored as in
`fastnets.ops.factorization`, is

    W[i, j] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_N[:, i_N, j_N, :],

with cores G_n of shape (r_{n-1}, I_n, J_n, r_n) and r_0 = r_N = 1. Number of parameters:
sum_n r_{n-1} I_n J_n r_n.

`tt_matmul` contracts x with the cores as one einsum in the pairwise order chosen by
`fastnets.ops.einsum_plans.contraction_plan`; `tt_matmul_flops` reports it and its FLOP count;
`tt_dense` materialises W (for tests and small layers only).
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import opt_einsum

from fastnets.ops.einsum_plans import ContractionPlan, contraction_plan
from fastnets.ops.factorization import (
  as_factors,
  check_matmul_input,
  check_same_modes,
  normal_draws,
  rescale_to_sqnorm,
)

__all__ = ["tt_dense", "tt_init", "tt_init_stddevs", "tt_matmul", "tt_matmul_flops",
           "tt_num_params", "tt_rescale_to_norm", "tt_shapes", "tt_sqnorm"]


def _tt_ranks(tt_ranks, num_modes: int, name: str = "tt_ranks") -> tuple[int, ...]:
  """Returns the full rank tuple (r_0 = 1, r_1, ..., r_{N-1}, r_N = 1)."""
  if isinstance(tt_ranks, int) and not isinstance(tt_ranks, bool):
    tt_ranks = (tt_ranks,) * (num_modes - 1)
  if isinstance(tt_ranks, Sequence) and not isinstance(tt_ranks, str) and len(tt_ranks) == 0:
    ranks = ()  # N = 1: no inner ranks.
  else:
    ranks = as_factors(tt_ranks, name)
  if len(ranks) == num_modes - 1:
    return (1,) + ranks + (1,)
  if len(ranks) == num_modes + 1 and ranks[0] == 1 and ranks[-1] == 1:
    return ranks
  raise ValueError(
      f"{name} must be an int, a sequence of N-1 = {num_modes - 1} inner ranks, or a sequence of "
      f"N+1 = {num_modes + 1} ranks starting and ending with 1; got {tt_ranks!r}.")


def tt_num_params(input_factors: Sequence[int], output_factors: Sequence[int],
                  tt_ranks: int | Sequence[int]) -> int:
  """Parameters of a Tensor-Train matrix: sum_n r_{n-1} I_n J_n r_n, with r_0 = r_N = 1.

  Args:
    input_factors: (I_1, ..., I_N).
    output_factors: (J_1, ..., J_N).
    tt_ranks: one inner rank (int), the N-1 inner ranks, or all N+1 ranks (ends equal to 1).
  """
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  check_same_modes(i_f, j_f)
  r = _tt_ranks(tt_ranks, len(i_f))
  return sum(r[n] * i_f[n] * j_f[n] * r[n + 1] for n in range(len(i_f)))


def tt_shapes(input_factors, output_factors, tt_ranks):
  """Shapes of the TT cores: [(r_{n-1}, I_n, J_n, r_n) for each n]."""
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  check_same_modes(i_f, j_f)
  r = _tt_ranks(tt_ranks, len(i_f))
  return [(r[n], i_f[n], j_f[n], r[n + 1]) for n in range(len(i_f))]


def tt_init_stddevs(input_factors, tt_ranks, scale: float = 1.0):
  """Standard deviations for i.i.d. zero-mean normal TT cores with Var(W_ij) = scale / I.

  W_ij is a sum of prod_{n<N} r_n uncorrelated products of one entry of each core, so core n with
  variance 1 / (I_n r_n) (times `scale` for the last core) gives Var(W_ij) = scale / I.

  Returns:
    List of N floats.
  """
  i_f = as_factors(input_factors, "input_factors")
  r = _tt_ranks(tt_ranks, len(i_f))
  n_modes = len(i_f)
  return [math.sqrt((scale if n == n_modes - 1 else 1.0) / (i_f[n] * r[n + 1]))
          for n in range(n_modes)]


def tt_init(key: jax.Array, input_factors, output_factors, tt_ranks, scale: float = 1.0,
            dtype=jnp.float32, exact_norm: bool = True):
  """Random TT cores with Var(W_ij) = scale / I (see `tt_init_stddevs`).

  Args:
    key: PRNG key.
    input_factors, output_factors, tt_ranks: the format (see `tt_shapes`).
    scale: Var(W_ij) = scale / I.
    dtype: parameter dtype.
    exact_norm: rescale the last core so that the realised W has mean square exactly
      scale / I (`tt_rescale_to_norm`), not only in expectation.

  Returns:
    List of N arrays, core n of shape (r_{n-1}, I_n, J_n, r_n).
  """
  shapes = tt_shapes(input_factors, output_factors, tt_ranks)
  stds = tt_init_stddevs(input_factors, tt_ranks, scale)
  cores = list(normal_draws(key, tuple(shapes), tuple(stds), jnp.dtype(dtype)))
  if exact_norm:
    cores[-1] = tt_rescale_to_norm(cores, scale)
  return cores


def tt_sqnorm(cores: Sequence[jax.Array]) -> jax.Array:
  """||W||_F^2 of a Tensor-Train matrix, without building W (a product of N transfer matrices
  T_n[(a, a'), (b, b')] = sum_{i,j} G_n[a, i, j, b] G_n[a', i, j, b']).

  Args:
    cores: N arrays, cores[n] of shape (r_{n-1}, I_n, J_n, r_n), r_0 = r_N = 1.

  Returns:
    Scalar array (float32 at least).
  """
  _check_tt(cores)
  return _tt_sqnorm(list(cores))


@jax.jit
def _tt_sqnorm(cores):
  dtype = jnp.promote_types(cores[0].dtype, jnp.float32)
  t = jnp.ones((1, 1), dtype)
  for g in cores:
    g = g.astype(dtype)
    t = jnp.einsum("ab,aijc,bijd->cd", t, g, g)
  return t[0, 0]


def tt_rescale_to_norm(cores: Sequence[jax.Array], scale: float = 1.0) -> jax.Array:
  """The last TT core multiplied so that W has mean square exactly scale / I.

  Returns:
    The rescaled last core, same shape and dtype.
  """
  _, j_f, _ = _check_tt(cores)
  return rescale_to_sqnorm(cores[-1], _tt_sqnorm(list(cores)), scale * math.prod(j_f))


def _tt_subscripts(num_modes: int, with_x: bool = True) -> str:
  """'b i1..iN, i1 j1 a1, a1 i2 j2 a2, ..., a_{N-1} iN jN -> b j1..jN' (r_0 = r_N = 1 dropped)."""
  n = num_modes
  b = opt_einsum.get_symbol(0)
  i = [opt_einsum.get_symbol(1 + k) for k in range(n)]
  j = [opt_einsum.get_symbol(1 + n + k) for k in range(n)]
  a = [opt_einsum.get_symbol(1 + 2 * n + k) for k in range(n - 1)]
  terms = []
  for k in range(n):
    left = a[k - 1] if k > 0 else ""
    right = a[k] if k < n - 1 else ""
    terms.append(left + i[k] + j[k] + right)
  if with_x:
    return ",".join([b + "".join(i)] + terms) + "->" + b + "".join(j)
  return ",".join(terms) + "->" + "".join(i) + "".join(j)


def _tt_squeeze(core: jax.Array, k: int, n: int) -> jax.Array:
  if k == 0:
    core = core[0]
  if k == n - 1:
    core = core[..., 0]
  return core


def _check_tt(cores) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  if isinstance(cores, jax.Array) or not isinstance(cores, Sequence) or not cores:
    raise TypeError("cores must be a non-empty list of N arrays of shape (r_{n-1}, I_n, J_n, r_n), "
                    f"got {type(cores).__name__}.")
  for k, g in enumerate(cores):
    if getattr(g, "ndim", None) != 4:
      raise ValueError(f"cores[{k}] must have shape (r_{{n-1}}, I_n, J_n, r_n), got shape "
                       f"{getattr(g, 'shape', None)}.")
    if not jnp.issubdtype(g.dtype, jnp.floating):
      raise TypeError(f"cores[{k}] must be a floating-point array, got dtype {g.dtype}.")
  if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
    raise ValueError("the TT boundary ranks must be 1: cores[0].shape[0] and cores[-1].shape[3] "
                     f"are {cores[0].shape[0]} and {cores[-1].shape[3]}.")
  for k in range(len(cores) - 1):
    if cores[k].shape[3] != cores[k + 1].shape[0]:
      raise ValueError(f"cores[{k}].shape[3] = {cores[k].shape[3]} must equal cores[{k + 1}]"
                       f".shape[0] = {cores[k + 1].shape[0]} (the TT rank between them).")
  i_f = tuple(int(g.shape[1]) for g in cores)
  j_f = tuple(int(g.shape[2]) for g in cores)
  ranks = (1,) + tuple(int(g.shape[3]) for g in cores)
  return i_f, j_f, ranks


def tt_matmul_flops(batch: int, input_factors: Sequence[int], output_factors: Sequence[int],
                    tt_ranks: int | Sequence[int], optimize: str = "optimal") -> ContractionPlan:
  """The contraction order `tt_matmul` uses for `batch` rows, and its FLOP count.

  Args:
    batch: number of rows B of x.
    input_factors: (I_1, ..., I_N).
    output_factors: (J_1, ..., J_N).
    tt_ranks: TT ranks (see `tt_num_params`).
    optimize: as in `bt_matmul_flops` ("left_to_right" absorbs cores 1..N in order).

  Returns:
    A `ContractionPlan`.
  """
  shapes_full = tt_shapes(input_factors, output_factors, tt_ranks)
  n = len(shapes_full)
  i_f = tuple(s[1] for s in shapes_full)
  j_f = tuple(s[2] for s in shapes_full)
  core_shapes = []
  for k, s in enumerate(shapes_full):
    s = list(s)
    if k == n - 1:
      s = s[:-1]
    if k == 0:
      s = s[1:]
    core_shapes.append(tuple(s))
  shapes = ((int(batch),) + i_f,) + tuple(core_shapes)
  return contraction_plan(_tt_subscripts(n), shapes, optimize,
                          dense=(int(batch), math.prod(i_f), math.prod(j_f)))


def tt_matmul(x: jax.Array, cores: Sequence[jax.Array], *, optimize: str = "optimal",
              precision=None) -> jax.Array:
  """y = x W with W (I, J) in Tensor-Train format, never materialising W.

  Args:
    x: float array (..., I) with I = I_1 * ... * I_N.
    cores: N arrays, cores[n] of shape (r_{n-1}, I_n, J_n, r_n), r_0 = r_N = 1.
    optimize: contraction-order strategy, see `tt_matmul_flops`.
    precision: passed to `jnp.einsum`.

  Returns:
    Array (..., J), J = J_1 * ... * J_N.

  Raises:
    TypeError / ValueError: malformed cores, or x.shape[-1] != prod(I_n).
  """
  i_f, j_f, ranks = _check_tt(cores)
  x = check_matmul_input(x, i_f, "cores'")
  lead = x.shape[:-1]
  batch = math.prod(lead)
  plan = tt_matmul_flops(batch, i_f, j_f, ranks, optimize)
  n = len(cores)
  ops = [_tt_squeeze(g, k, n) for k, g in enumerate(cores)]
  y = jnp.einsum(plan.subscripts, x.reshape((batch,) + i_f), *ops, optimize=list(plan.path),
                 precision=precision)
  return y.reshape(lead + (math.prod(j_f),))


def tt_dense(cores: Sequence[jax.Array]) -> jax.Array:
  """Materialises the (I, J) matrix of a Tensor-Train format (for tests and small layers).

  Args:
    cores: N arrays, cores[n] of shape (r_{n-1}, I_n, J_n, r_n), r_0 = r_N = 1.

  Returns:
    W of shape (prod I_n, prod J_n).
  """
  i_f, j_f, _ = _check_tt(cores)
  n = len(cores)
  ops = [_tt_squeeze(g, k, n) for k, g in enumerate(cores)]
  eq = _tt_subscripts(n, with_x=False)
  plan = contraction_plan(eq, tuple(tuple(o.shape) for o in ops), "optimal")
  w = jnp.einsum(eq, *ops, optimize=list(plan.path))
  return w.reshape(math.prod(i_f), math.prod(j_f))
