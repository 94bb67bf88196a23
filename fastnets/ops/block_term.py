"""Block-Term (BT) matrices: y = x W without ever building W (Ye et al. 2018).

"Learning Compact Recurrent Neural Networks with Block-Term Tensor Decomposition" (CVPR 2018; the
BT layer). W (I, J), with I and J factored as in `fastnets.ops.factorization`, is a sum of C
Tucker blocks,

    W[i, j] = sum_c sum_{r_1..r_N} G_c[r_1, ..., r_N] * prod_{n=1}^{N} A_c^(n)[i_n, j_n, r_n],

with core tensors G_c of shape (R_1, ..., R_N) and factor tensors A_c^(n) of shape
(I_n, J_n, R_n) (the paper's factor matrix of shape (I_n J_n, R_n) with its rows split into
(i_n, j_n)). The C blocks are stacked on a leading axis: `factors[n]` has shape
(C, I_n, J_n, R_n) and `cores` has shape (C, R_1, ..., R_N). The paper uses one Tucker rank
R = R_1 = ... = R_N; per-mode ranks are allowed. Number of parameters:

    C * (sum_n I_n J_n R_n + prod_n R_n)      (the paper's C (sum_n I_n J_n R + R^N)).

`bt_matmul` contracts x with the factors and cores as one einsum in the pairwise order chosen by
`fastnets.ops.einsum_plans.contraction_plan` for the actual batch size; `bt_matmul_flops` reports
that order and its FLOP count beside the dense x @ W cost; `bt_dense` materialises W (for tests
and small layers only).
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

__all__ = ["bt_dense", "bt_init", "bt_init_stddevs", "bt_matmul", "bt_matmul_flops",
           "bt_num_params", "bt_rescale_to_norm", "bt_shapes", "bt_sqnorm"]


def _bt_ranks(rank, num_modes: int, name: str = "rank") -> tuple[int, ...]:
  if isinstance(rank, int) and not isinstance(rank, bool):
    rank = (rank,) * num_modes
  ranks = as_factors(rank, name)
  if len(ranks) != num_modes:
    raise ValueError(f"{name} must be an int or a sequence of {num_modes} ints (one per mode), "
                     f"got {rank!r}.")
  return ranks


def bt_num_params(input_factors: Sequence[int], output_factors: Sequence[int],
                  rank: int | Sequence[int], num_blocks: int) -> int:
  """Parameters of a Block-Term matrix: C * (sum_n I_n J_n R_n + prod_n R_n) (Ye et al. 2018).

  Counts the factors and cores only (a layer's bias adds J).

  Args:
    input_factors: (I_1, ..., I_N).
    output_factors: (J_1, ..., J_N).
    rank: Tucker rank R (int) or per-mode ranks (R_1, ..., R_N).
    num_blocks: number C of Tucker blocks.
  """
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  check_same_modes(i_f, j_f)
  ranks = _bt_ranks(rank, len(i_f))
  (c,) = as_factors((num_blocks,), "num_blocks")
  return c * (sum(i * j * r for i, j, r in zip(i_f, j_f, ranks)) + math.prod(ranks))


def bt_shapes(input_factors, output_factors, rank, num_blocks):
  """Shapes of the BT parameters: ([(C, I_n, J_n, R_n) for each n], (C, R_1, ..., R_N))."""
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  check_same_modes(i_f, j_f)
  ranks = _bt_ranks(rank, len(i_f))
  (c,) = as_factors((num_blocks,), "num_blocks")
  return [(c, i, j, r) for i, j, r in zip(i_f, j_f, ranks)], (c,) + ranks


def bt_init_stddevs(input_factors, rank, num_blocks, scale: float = 1.0):
  """Standard deviations for i.i.d. zero-mean normal BT parameters with Var(W_ij) = scale / I.

  W_ij is a sum of C prod_n R_n uncorrelated products of N+1 independent zero-mean entries, so
  Var(W_ij) = C prod_n R_n * s_G^2 * prod_n s_n^2. Taking s_n^2 = 1 / (I_n R_n) and
  s_G^2 = scale / C gives scale / I, the LeCun fan-in variance of a dense layer (entries of
  different rows are uncorrelated, so Var(y_j) = scale * |x|^2 / I as for a dense layer).

  Returns:
    (factor_stddevs: list of N floats, core_stddev: float).
  """
  i_f = as_factors(input_factors, "input_factors")
  ranks = _bt_ranks(rank, len(i_f))
  (c,) = as_factors((num_blocks,), "num_blocks")
  return [1.0 / math.sqrt(i * r) for i, r in zip(i_f, ranks)], math.sqrt(scale / c)


def bt_init(key: jax.Array, input_factors, output_factors, rank, num_blocks,
            scale: float = 1.0, dtype=jnp.float32, exact_norm: bool = True):
  """Random BT parameters with Var(W_ij) = scale / I (see `bt_init_stddevs`).

  Args:
    key: PRNG key.
    input_factors, output_factors, rank, num_blocks: the format (see `bt_shapes`).
    scale: Var(W_ij) = scale / I.
    dtype: parameter dtype.
    exact_norm: rescale the cores so that the realised W has mean square exactly scale / I
      (`bt_rescale_to_norm`). Without it that holds only in expectation: W is a sum of few
      products of N + 1 normals, and its realised scale varies a lot between draws (most with
      R = 1, where the single core entry scales all of W; tests/test_tensor_formats.py checks
      the exact norm).

  Returns:
    (factors: list of N arrays of shape (C, I_n, J_n, R_n), cores: array (C, R_1, ..., R_N)).
  """
  f_shapes, c_shape = bt_shapes(input_factors, output_factors, rank, num_blocks)
  f_std, c_std = bt_init_stddevs(input_factors, rank, num_blocks, scale)
  out = normal_draws(key, tuple(f_shapes) + (c_shape,), tuple(f_std) + (c_std,), jnp.dtype(dtype))
  factors, cores = list(out[:-1]), out[-1]
  if exact_norm:
    cores = bt_rescale_to_norm(factors, cores, scale)
  return factors, cores


def bt_sqnorm(factors: Sequence[jax.Array], cores: jax.Array) -> jax.Array:
  """||W||_F^2 of a Block-Term matrix, without building W.

  ||W||_F^2 = sum_{c,d} sum_{r,q} G_c[r] G_d[q] prod_n M_n[c, d, r_n, q_n] with the Gram tensors
  M_n[c, d, r, q] = sum_{i,j} A_c^(n)[i, j, r] A_d^(n)[i, j, q]: O(C^2 sum_n I_n J_n R_n^2 +
  C^2 prod_n R_n^2) work instead of the O(I J C prod_n R_n) of `bt_dense`. One compiled
  computation per shape (it runs eagerly inside `BTLinear`'s initialiser).

  Args:
    factors: N arrays, factors[n] of shape (C, I_n, J_n, R_n).
    cores: array (C, R_1, ..., R_N).

  Returns:
    Scalar array (float32 at least).
  """
  _check_bt(factors, cores)
  return _bt_sqnorm(list(factors), cores)


@jax.jit
def _bt_sqnorm(factors, cores):
  dtype = jnp.promote_types(cores.dtype, jnp.float32)
  n = len(factors)
  c, d = opt_einsum.get_symbol(0), opt_einsum.get_symbol(1)
  r = [opt_einsum.get_symbol(2 + k) for k in range(n)]
  q = [opt_einsum.get_symbol(2 + n + k) for k in range(n)]
  grams = [jnp.einsum("cijr,dijq->cdrq", f.astype(dtype), f.astype(dtype)) for f in factors]
  terms = [c + "".join(r)] + [c + d + r[k] + q[k] for k in range(n)] + [d + "".join(q)]
  g = cores.astype(dtype)
  return jnp.einsum(",".join(terms) + "->", g, *grams, g, optimize="greedy")


def bt_rescale_to_norm(factors: Sequence[jax.Array], cores: jax.Array,
                       scale: float = 1.0) -> jax.Array:
  """`cores` multiplied so that W has mean square exactly scale / I: ||W||_F^2 = scale * J.

  Used at initialisation (`bt_init`, `fastnets.nn.BTLinear`) so that every draw starts at the
  LeCun fan-in scale of a dense layer, not only the average draw.

  Returns:
    The rescaled cores, same shape and dtype.
  """
  _, j_f, _, _ = _check_bt(factors, cores)
  return rescale_to_sqnorm(cores, _bt_sqnorm(list(factors), cores), scale * math.prod(j_f))


def _bt_subscripts(num_modes: int, with_x: bool = True) -> str:
  """'b i1..iN, c i1 j1 r1, ..., c r1..rN -> b j1..jN' (or the W-building one without x)."""
  n = num_modes
  b, c = opt_einsum.get_symbol(0), opt_einsum.get_symbol(1)
  i = [opt_einsum.get_symbol(2 + k) for k in range(n)]
  j = [opt_einsum.get_symbol(2 + n + k) for k in range(n)]
  r = [opt_einsum.get_symbol(2 + 2 * n + k) for k in range(n)]
  factor_terms = [c + i[k] + j[k] + r[k] for k in range(n)]
  core_term = c + "".join(r)
  if with_x:
    return ",".join([b + "".join(i)] + factor_terms + [core_term]) + "->" + b + "".join(j)
  return ",".join(factor_terms + [core_term]) + "->" + "".join(i) + "".join(j)


def _check_bt(factors, cores) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
  if isinstance(factors, jax.Array) or not isinstance(factors, Sequence) or not factors:
    raise TypeError("factors must be a non-empty list of N arrays of shape (C, I_n, J_n, R_n), "
                    f"got {type(factors).__name__}.")
  for k, f in enumerate(factors):
    if getattr(f, "ndim", None) != 4:
      raise ValueError(f"factors[{k}] must have shape (C, I_n, J_n, R_n), got shape "
                       f"{getattr(f, 'shape', None)}.")
  c = factors[0].shape[0]
  n = len(factors)
  if any(f.shape[0] != c for f in factors):
    raise ValueError("all factors must have the same number of blocks C on axis 0, got "
                     f"{[f.shape[0] for f in factors]}.")
  expected = (c,) + tuple(f.shape[3] for f in factors)
  if getattr(cores, "ndim", None) != n + 1 or tuple(cores.shape) != expected:
    raise ValueError(f"cores must have shape (C, R_1, ..., R_N) = {expected} to match factors, "
                     f"got shape {getattr(cores, 'shape', None)}.")
  for k, f in enumerate(list(factors) + [cores]):
    if not jnp.issubdtype(f.dtype, jnp.floating):
      what = f"factors[{k}]" if k < n else "cores"
      raise TypeError(f"{what} must be a floating-point array, got dtype {f.dtype}.")
  i_f = tuple(int(f.shape[1]) for f in factors)
  j_f = tuple(int(f.shape[2]) for f in factors)
  r_f = tuple(int(f.shape[3]) for f in factors)
  return i_f, j_f, r_f, int(c)


def bt_matmul_flops(batch: int, input_factors: Sequence[int], output_factors: Sequence[int],
                    rank: int | Sequence[int], num_blocks: int,
                    optimize: str = "optimal") -> ContractionPlan:
  """The contraction order `bt_matmul` uses for a batch of `batch` rows, and its FLOP count.

  Args:
    batch: number of rows B of x (all leading axes flattened).
    input_factors: (I_1, ..., I_N).
    output_factors: (J_1, ..., J_N).
    rank: Tucker rank(s).
    num_blocks: C.
    optimize: the contraction-order strategy. "optimal" (default): fewest FLOPs (exhaustive
      search up to 7 operands, dynamic programming beyond); "dp": dynamic programming on FLOPs;
      "size": smallest largest intermediate (in practice: contract the core with most factors
      first, then few large matrix products; more FLOPs but less data movement, often faster
      on CPU, measured by experiments/bench_bt_rnn.py); "greedy": opt_einsum's greedy heuristic;
      "left_to_right": x absorbs factor 1, ..., factor N, then the core (the naive order); or
      an explicit opt_einsum path (sequence of index tuples).

  Returns:
    A `ContractionPlan` (path, flops, dense_flops = 2 B I J, largest intermediate).
  """
  f_shapes, c_shape = bt_shapes(input_factors, output_factors, rank, num_blocks)
  i_f = tuple(s[1] for s in f_shapes)
  j_f = tuple(s[2] for s in f_shapes)
  shapes = ((int(batch),) + i_f,) + tuple(f_shapes) + (c_shape,)
  return contraction_plan(_bt_subscripts(len(i_f)), shapes, optimize,
                          dense=(int(batch), math.prod(i_f), math.prod(j_f)))


def bt_matmul(x: jax.Array, factors: Sequence[jax.Array], cores: jax.Array, *,
              optimize: str = "optimal", precision=None) -> jax.Array:
  """y = x W with W (I, J) in Block-Term format, never materialising W (Ye et al. 2018).

  x is reshaped to (B, I_1, ..., I_N) and contracted with the N factors and the cores as one
  einsum, in the pairwise order of fewest FLOPs for this B (see `bt_matmul_flops`). Autodiff
  differentiates the pairwise contractions (no custom_vjp).

  Args:
    x: float array (..., I) with I = I_1 * ... * I_N.
    factors: N arrays, factors[n] of shape (C, I_n, J_n, R_n).
    cores: array (C, R_1, ..., R_N).
    optimize: contraction-order strategy, see `bt_matmul_flops`.
    precision: passed to `jnp.einsum`.

  Returns:
    Array (..., J), J = J_1 * ... * J_N, of the promoted dtype of x, factors and cores.

  Raises:
    TypeError / ValueError: malformed factors or cores, or x.shape[-1] != prod(I_n).
  """
  i_f, j_f, r_f, c = _check_bt(factors, cores)
  x = check_matmul_input(x, i_f, "factors'")
  lead = x.shape[:-1]
  batch = math.prod(lead)
  plan = bt_matmul_flops(batch, i_f, j_f, r_f, c, optimize)
  xr = x.reshape((batch,) + i_f)
  y = jnp.einsum(plan.subscripts, xr, *factors, cores, optimize=list(plan.path),
                 precision=precision)
  return y.reshape(lead + (math.prod(j_f),))


def bt_dense(factors: Sequence[jax.Array], cores: jax.Array) -> jax.Array:
  """Materialises the (I, J) matrix of a Block-Term format (for tests and small layers).

  Args:
    factors: N arrays, factors[n] of shape (C, I_n, J_n, R_n).
    cores: array (C, R_1, ..., R_N).

  Returns:
    W of shape (prod I_n, prod J_n), rows and columns indexed row-major by (i_1..i_N), (j_1..j_N).
  """
  i_f, j_f, _, _ = _check_bt(factors, cores)
  eq = _bt_subscripts(len(i_f), with_x=False)
  shapes = tuple(tuple(f.shape) for f in factors) + (tuple(cores.shape),)
  plan = contraction_plan(eq, shapes, "optimal")
  w = jnp.einsum(eq, *factors, cores, optimize=list(plan.path))
  return w.reshape(math.prod(i_f), math.prod(j_f))
