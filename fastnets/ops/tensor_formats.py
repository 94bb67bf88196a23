"""Block-Term (BT) and Tensor-Train (TT) matrix formats: y = x W without ever building W.

Both formats factor the dimensions of a weight matrix W of shape (I, J), I = I_1 * ... * I_N and
J = J_1 * ... * J_N, and view W as a tensor W[(i_1, j_1), ..., (i_N, j_N)]. All multi-indices are
row-major (C order): the row index of W is i = ((i_1 * I_2 + i_2) * I_3 + i_3) ..., so
`x.reshape(B, I_1, ..., I_N)` gives x[b, i_1, ..., i_N], and likewise for the columns.

**Block-Term format** (Ye et al. 2018, "Learning Compact Recurrent Neural Networks with
Block-Term Tensor Decomposition", CVPR; the BT layer): a sum of C Tucker blocks,

    W[i, j] = sum_c sum_{r_1..r_N} G_c[r_1, ..., r_N] * prod_{n=1}^{N} A_c^(n)[i_n, j_n, r_n],

with core tensors G_c of shape (R_1, ..., R_N) and factor tensors A_c^(n) of shape
(I_n, J_n, R_n) (the paper's factor matrix of shape (I_n J_n, R_n) with its rows split into
(i_n, j_n)). Here the C blocks are stacked on a leading axis: `factors[n]` has shape
(C, I_n, J_n, R_n) and `cores` has shape (C, R_1, ..., R_N). The paper uses one Tucker rank
R = R_1 = ... = R_N; per-mode ranks are allowed. Number of parameters:

    C * (sum_n I_n J_n R_n + prod_n R_n)      (the paper's C (sum_n I_n J_n R + R^N)).

**Tensor-Train format** (Oseledets 2011; TT-layer of Novikov et al. 2015; TT-RNN of Yang et al.
2017, the baseline of the BT-RNN paper):

    W[i, j] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_N[:, i_N, j_N, :],

with cores G_n of shape (r_{n-1}, I_n, J_n, r_n) and r_0 = r_N = 1. Number of parameters:
sum_n r_{n-1} I_n J_n r_n.

`bt_matmul` / `tt_matmul` contract x with the factors and cores as one einsum whose pairwise
contraction order is the one of fewest FLOPs for the actual batch size (opt_einsum's exhaustive
"optimal" search for up to 7 operands, its dynamic-programming search beyond; the path is cached
per shape, so the search runs once per traced shape). `bt_matmul_flops` / `tt_matmul_flops`
report that order and its FLOP count beside the dense x @ W cost. `bt_dense` / `tt_dense`
materialise W (for tests and for small layers only).

Fewest FLOPs is not always fastest: with small ranks the FLOP-optimal order moves large
intermediates through many transposes, and on CPU `optimize="size"` (contract the core with most
factors first, then a few large matrix products) measured faster in experiments/bench_bt_rnn.py
despite 2-5x more FLOPs. Both are exact; pick with the benchmark on your hardware.
"""

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum

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


# ---------------------------------------------------------------------------------------------
# Validation and small helpers.


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


def _bt_ranks(rank, num_modes: int, name: str = "rank") -> tuple[int, ...]:
  if isinstance(rank, int) and not isinstance(rank, bool):
    rank = (rank,) * num_modes
  ranks = as_factors(rank, name)
  if len(ranks) != num_modes:
    raise ValueError(f"{name} must be an int or a sequence of {num_modes} ints (one per mode), "
                     f"got {rank!r}.")
  return ranks


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


def _check_same_length(input_factors, output_factors):
  if len(input_factors) != len(output_factors):
    raise ValueError(
        f"input_factors {input_factors} and output_factors {output_factors} must have the same "
        f"number of modes N, got {len(input_factors)} and {len(output_factors)}.")


# ---------------------------------------------------------------------------------------------
# Parameter counts, shapes and initialisation.


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
  _check_same_length(i_f, j_f)
  ranks = _bt_ranks(rank, len(i_f))
  (c,) = as_factors((num_blocks,), "num_blocks")
  return c * (sum(i * j * r for i, j, r in zip(i_f, j_f, ranks)) + math.prod(ranks))


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
  _check_same_length(i_f, j_f)
  r = _tt_ranks(tt_ranks, len(i_f))
  return sum(r[n] * i_f[n] * j_f[n] * r[n + 1] for n in range(len(i_f)))


def bt_shapes(input_factors, output_factors, rank, num_blocks):
  """Shapes of the BT parameters: ([(C, I_n, J_n, R_n) for each n], (C, R_1, ..., R_N))."""
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  _check_same_length(i_f, j_f)
  ranks = _bt_ranks(rank, len(i_f))
  (c,) = as_factors((num_blocks,), "num_blocks")
  return [(c, i, j, r) for i, j, r in zip(i_f, j_f, ranks)], (c,) + ranks


def tt_shapes(input_factors, output_factors, tt_ranks):
  """Shapes of the TT cores: [(r_{n-1}, I_n, J_n, r_n) for each n]."""
  i_f = as_factors(input_factors, "input_factors")
  j_f = as_factors(output_factors, "output_factors")
  _check_same_length(i_f, j_f)
  r = _tt_ranks(tt_ranks, len(i_f))
  return [(r[n], i_f[n], j_f[n], r[n + 1]) for n in range(len(i_f))]


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
      products of N + 1 normals, and its realised scale varies a lot between draws (with R = 1
      the single core entry scales all of W: over 30 seeds of (4, 7, 4, 7) -> (8, 4, 2, 4) the
      realised std ranged from 0.01x to 2.6x the target; 0.5x to 1.8x with R = 2).

  Returns:
    (factors: list of N arrays of shape (C, I_n, J_n, R_n), cores: array (C, R_1, ..., R_N)).
  """
  f_shapes, c_shape = bt_shapes(input_factors, output_factors, rank, num_blocks)
  f_std, c_std = bt_init_stddevs(input_factors, rank, num_blocks, scale)
  out = _normals(key, tuple(f_shapes) + (c_shape,), tuple(f_std) + (c_std,), jnp.dtype(dtype))
  factors, cores = list(out[:-1]), out[-1]
  if exact_norm:
    cores = bt_rescale_to_norm(factors, cores, scale)
  return factors, cores


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
  cores = list(_normals(key, tuple(shapes), tuple(stds), jnp.dtype(dtype)))
  if exact_norm:
    cores[-1] = tt_rescale_to_norm(cores, scale)
  return cores


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
  c, d = _sym(0), _sym(1)
  r = [_sym(2 + k) for k in range(n)]
  q = [_sym(2 + n + k) for k in range(n)]
  grams = [jnp.einsum("cijr,dijq->cdrq", f.astype(dtype), f.astype(dtype)) for f in factors]
  terms = [c + "".join(r)] + [c + d + r[k] + q[k] for k in range(n)] + [d + "".join(q)]
  g = cores.astype(dtype)
  return jnp.einsum(",".join(terms) + "->", g, *grams, g, optimize="greedy")


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


def bt_rescale_to_norm(factors: Sequence[jax.Array], cores: jax.Array,
                       scale: float = 1.0) -> jax.Array:
  """`cores` multiplied so that W has mean square exactly scale / I: ||W||_F^2 = scale * J.

  Used at initialisation (`bt_init`, `fastnets.nn.BTLinear`) so that every draw starts at the
  LeCun fan-in scale of a dense layer, not only the average draw.

  Returns:
    The rescaled cores, same shape and dtype.
  """
  _, j_f, _, _ = _check_bt(factors, cores)
  return _rescale(cores, _bt_sqnorm(list(factors), cores), scale * math.prod(j_f))


def tt_rescale_to_norm(cores: Sequence[jax.Array], scale: float = 1.0) -> jax.Array:
  """The last TT core multiplied so that W has mean square exactly scale / I.

  Returns:
    The rescaled last core, same shape and dtype.
  """
  _, j_f, _ = _check_tt(cores)
  return _rescale(cores[-1], _tt_sqnorm(list(cores)), scale * math.prod(j_f))


@jax.jit
def _rescale(x, sq, target):
  factor = jnp.sqrt(target / jnp.maximum(sq, jnp.finfo(sq.dtype).tiny))
  return (x * factor).astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normals(key, shapes, stds, dtype):
  # One compiled computation for all the tensors (eager per-tensor draws compile one each).
  keys = jax.random.split(key, len(shapes))
  return tuple(s * jax.random.normal(k, shp, dtype) for k, shp, s in zip(keys, shapes, stds))


# ---------------------------------------------------------------------------------------------
# Einsum equations, contraction orders and FLOP counts.


def _sym(k: int) -> str:
  return opt_einsum.get_symbol(k)


def _bt_subscripts(num_modes: int, with_x: bool = True) -> str:
  """'b i1..iN, c i1 j1 r1, ..., c r1..rN -> b j1..jN' (or the W-building one without x)."""
  n = num_modes
  b, c = _sym(0), _sym(1)
  i = [_sym(2 + k) for k in range(n)]
  j = [_sym(2 + n + k) for k in range(n)]
  r = [_sym(2 + 2 * n + k) for k in range(n)]
  factor_terms = [c + i[k] + j[k] + r[k] for k in range(n)]
  core_term = c + "".join(r)
  if with_x:
    return ",".join([b + "".join(i)] + factor_terms + [core_term]) + "->" + b + "".join(j)
  return ",".join(factor_terms + [core_term]) + "->" + "".join(i) + "".join(j)


def _tt_subscripts(num_modes: int, with_x: bool = True) -> str:
  """'b i1..iN, i1 j1 a1, a1 i2 j2 a2, ..., a_{N-1} iN jN -> b j1..jN' (r_0 = r_N = 1 dropped)."""
  n = num_modes
  b = _sym(0)
  i = [_sym(1 + k) for k in range(n)]
  j = [_sym(1 + n + k) for k in range(n)]
  a = [_sym(1 + 2 * n + k) for k in range(n - 1)]
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


_STRATEGIES = ("optimal", "size", "dp", "greedy", "left_to_right")


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
    raise ValueError(f"optimize must be one of {_STRATEGIES} or an explicit path (a sequence of "
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


def _hashable(optimize):
  if isinstance(optimize, (list, tuple)):
    return tuple(tuple(int(p) for p in step) for step in optimize)
  return optimize


def _with_dense_flops(plan: ContractionPlan, batch: int, in_dim: int, out_dim: int):
  return plan._replace(dense_flops=2 * batch * in_dim * out_dim)


# ---------------------------------------------------------------------------------------------
# Block-Term format.


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
      on CPU, see experiments/bench_bt_rnn.py); "greedy": opt_einsum's greedy heuristic;
      "left_to_right": x absorbs factor 1, ..., factor N, then the core (the naive order); or
      an explicit opt_einsum path (sequence of index tuples).

  Returns:
    A `ContractionPlan` (path, flops, dense_flops = 2 B I J, largest intermediate).
  """
  f_shapes, c_shape = bt_shapes(input_factors, output_factors, rank, num_blocks)
  i_f = tuple(s[1] for s in f_shapes)
  j_f = tuple(s[2] for s in f_shapes)
  shapes = ((int(batch),) + i_f,) + tuple(f_shapes) + (c_shape,)
  plan = _plan(_bt_subscripts(len(i_f)), shapes, _hashable(optimize))
  return _with_dense_flops(plan, int(batch), math.prod(i_f), math.prod(j_f))


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
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != math.prod(i_f):
    raise ValueError(
        f"x must have shape (..., I) with I = prod of the factors' input sizes {i_f} = "
        f"{math.prod(i_f)}, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}.")
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
  plan = _plan(eq, shapes, "optimal")
  w = jnp.einsum(eq, *factors, cores, optimize=list(plan.path))
  return w.reshape(math.prod(i_f), math.prod(j_f))


# ---------------------------------------------------------------------------------------------
# Tensor-Train format.


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
  plan = _plan(_tt_subscripts(n), shapes, _hashable(optimize))
  return _with_dense_flops(plan, int(batch), math.prod(i_f), math.prod(j_f))


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
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != math.prod(i_f):
    raise ValueError(
        f"x must have shape (..., I) with I = prod of the cores' input sizes {i_f} = "
        f"{math.prod(i_f)}, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}.")
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
  plan = _plan(eq, tuple(tuple(o.shape) for o in ops), "optimal")
  w = jnp.einsum(eq, *ops, optimize=list(plan.path))
  return w.reshape(math.prod(i_f), math.prod(j_f))
