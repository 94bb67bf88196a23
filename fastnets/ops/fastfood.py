"""The Fastfood transform `V = S H G Pi H B` and Fastfood random features for the RBF kernel.

Fastfood (Le, Sarlos & Smola, "Fastfood: approximating kernel expansions in loglinear time",
ICML 2013) replaces a dense Gaussian matrix `W (n, d)` by stacked blocks

    V_j = (1 / (sigma sqrt(d))) S_j H G_j Pi_j H B_j,     j = 1 .. n/d,

with `H` the (unnormalised) d x d Walsh-Hadamard matrix, `B_j` a random +-1 diagonal, `Pi_j` a
random permutation, `G_j` a Gaussian diagonal and `S_j` a diagonal that gives each row the length
of a Gaussian row: `S_ii = s_i / ||G_j||_F` with `s_i` chi-distributed with d degrees of freedom.
Storage is O(n) and a product `V x` costs O(n log d) instead of O(n d). Deep Fried Convnets (Yang,
Moczulski, Denil, de Freitas, Smola, Song & Wang, ICCV 2015, Sec. 3) learn S, G and B by
backpropagation ("adaptive Fastfood") and use `V x` in place of fully connected layers.

Conventions here. The transform uses the orthonormal `Hn = H / sqrt(d)` twice (`fwht(...,
normalize=True)`), which is `d` times smaller than `H H`, and keeps every intermediate at the scale
of the input (good for bfloat16). All scaling lives in S:

    fastfood_transform(x) = S Hn G Pi Hn B x,   S_ii = scale * s_i * sqrt(d) / ||G_j||,

so that each row of V has norm `scale * s_i` (`s_i ~ chi_d`), exactly as the rows of a Gaussian
matrix with i.i.d. `N(0, scale^2)` entries. Le et al.'s `1 / (sigma sqrt(d)) S H G Pi H B` is
`scale = 1 / sigma`. `fastfood_params_init` draws the blocks; `fastfood_transform` applies them.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.checks import check_key, is_power_of_two, next_power_of_two
from fastnets.ops.hadamard import fwht, pad_to_power_of_two

__all__ = [
    "FastfoodParams",
    "fastfood_matrix",
    "fastfood_params_init",
    "fastfood_rbf_features",
    "fastfood_permutations",
    "fastfood_rbf_params",
    "fastfood_scaling_init",
    "fastfood_transform",
    "rbf_kernel",
]


class FastfoodParams(NamedTuple):
  """The diagonals and permutations of `n_blocks` stacked Fastfood blocks of size d.

  Attributes:
    S: `(n_blocks, d)` float scaling diagonal (includes the chi row lengths and the overall scale).
    G: `(n_blocks, d)` float Gaussian diagonal.
    B: `(n_blocks, d)` float diagonal, +-1 at initialisation (real-valued once learned).
    perm: `(n_blocks, d)` int32, one permutation of `range(d)` per block; `(Pi x)_i = x[perm[i]]`.
  """
  S: jax.Array
  G: jax.Array
  B: jax.Array
  perm: jax.Array


def _check_positive_int(value, name, fn_name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{fn_name}: {name} must be a positive int, got {value!r}")
  return int(value)


def fastfood_params_init(key: jax.Array, d: int, n_blocks: int, *, scale: float = 1.0,
                         dtype=jnp.float32) -> FastfoodParams:
  """Draws `n_blocks` Fastfood blocks of size d as in Le et al. (2013).

  `B` is Rademacher (+-1), `perm` uniform random permutations, `G ~ N(0, 1)`, and
  `S_ii = scale * s_i * sqrt(d) / ||G_j||` with `s_i ~ chi_d` (square root of a chi-square with d
  degrees of freedom): with the orthonormal Hadamard of `fastfood_transform`, each row of V then has
  the length distribution of a row of i.i.d. `N(0, scale^2)` entries.

  Args:
    key: a `jax.random` key.
    d: block size, a power of two (pad the input dimension with `next_power_of_two`).
    n_blocks: number of stacked blocks (output dimension `n_blocks * d`).
    scale: standard deviation of the equivalent Gaussian matrix entries (`1 / sigma` for the RBF
      kernel of bandwidth sigma; `1 / sqrt(fan_in)` for a LeCun-normal-like layer).
    dtype: float dtype of S, G and B.

  Returns:
    `FastfoodParams` with arrays of shape `(n_blocks, d)`.

  Raises:
    TypeError: if `key` is not a PRNG key.
    ValueError: if `d` is not a power of two or `n_blocks` is not a positive int.
  """
  check_key(key, "fastfood_params_init")
  d = _check_positive_int(d, "d", "fastfood_params_init")
  if not is_power_of_two(d):
    raise ValueError(f"fastfood_params_init: d must be a power of two, got {d} "
                     f"(use next_power_of_two({d}) = {next_power_of_two(d)})")
  n_blocks = _check_positive_int(n_blocks, "n_blocks", "fastfood_params_init")
  kb, kp, kg, ks = jax.random.split(key, 4)
  b, g = _binary_gaussian(kb, kg, n_blocks, d)
  return FastfoodParams(S=fastfood_scaling_init(ks, g, scale=scale, dtype=dtype),
                        G=g.astype(dtype), B=b.astype(dtype),
                        perm=fastfood_permutations(kp, n_blocks, d))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _binary_gaussian(kb, kg, n_blocks, d):
  return (jax.random.rademacher(kb, (n_blocks, d), dtype=jnp.float32),
          jax.random.normal(kg, (n_blocks, d), jnp.float32))


_CHI_CHUNK = 4096


@jax.jit
def _chi_chunk(key, df):
  return jnp.sqrt(jax.random.chisquare(key, df, (_CHI_CHUNK,), jnp.float32))


def _sample_chi(key, df: int, shape) -> jax.Array:
  """i.i.d. chi(df) samples of `shape`, float32.

  Drawn in fixed-size chunks by one jitted function with a traced `df`: JAX's gamma sampler (a
  rejection loop) is slow to compile, and this way it compiles once per process instead of once
  per layer shape.
  """
  size = math.prod(shape)
  keys = jax.random.split(key, -(-size // _CHI_CHUNK))
  df = jnp.asarray(df, jnp.float32)
  out = jnp.concatenate([_chi_chunk(k, df) for k in keys])
  return out[:size].reshape(shape)


def fastfood_scaling_init(key: jax.Array, G: jax.Array, *, scale: float = 1.0,
                          dtype=jnp.float32) -> jax.Array:
  """The S diagonal of Le et al. (2013) for given Gaussian diagonals G.

  `S_ji = scale * s_ji * sqrt(d) / ||G_j||` with `s_ji ~ chi_d`, drawn as the square root of a
  chi-square variate with d degrees of freedom: the row lengths of a d-dimensional Gaussian matrix.

  Args:
    key: a `jax.random` key.
    G: `(n_blocks, d)` Gaussian diagonals.
    scale: standard deviation of the equivalent Gaussian entries.
    dtype: dtype of the result.

  Returns:
    `(n_blocks, d)` array.
  """
  check_key(key, "fastfood_scaling_init")
  G = jnp.asarray(G, jnp.float32)
  d = G.shape[-1]
  s = _sample_chi(key, d, G.shape)
  g_norm = jnp.linalg.norm(G, axis=-1, keepdims=True)
  return (scale * math.sqrt(d) * s / g_norm).astype(dtype)


def fastfood_permutations(key: jax.Array, n_blocks: int, d: int) -> jax.Array:
  """`(n_blocks, d)` int32: an independent uniform random permutation of `range(d)` per block."""
  check_key(key, "fastfood_permutations")
  # argsort of i.i.d. random 32-bit words: one sort for all blocks (much cheaper to compile than a
  # vmapped `jax.random.permutation`); ties are rare (probability ~ d^2 / 2^33) and argsort returns
  # a permutation regardless.
  bits = jax.random.bits(key, (int(n_blocks), int(d)), jnp.uint32)
  return jnp.argsort(bits, axis=-1).astype(jnp.int32)


@jax.custom_vjp
def _permute_last(y, idx):
  return jnp.take(y, idx, axis=-1, mode="clip")


# custom_vjp: the VJP of a gather by a permutation is the gather by the inverse permutation (instead
# of autodiff's scatter-add, which is slower on CPUs and GPUs). Saves the index vector `idx` (int32,
# one entry per output feature); recomputes its inverse (one O(n) scatter of indices) in the
# backward pass. `idx` is an ordinary integer argument with cotangent None.
def _permute_last_fwd(y, idx):
  return _permute_last(y, idx), idx


def _permute_last_bwd(idx, g):
  inv = jnp.zeros_like(idx).at[idx].set(jnp.arange(idx.shape[0], dtype=idx.dtype))
  return jnp.take(g, inv, axis=-1, mode="clip"), None


_permute_last.defvjp(_permute_last_fwd, _permute_last_bwd)


def fastfood_transform(x: jax.Array, S: jax.Array, G: jax.Array, B: jax.Array, perm: jax.Array,
                       *, impl: str = "auto") -> jax.Array:
  """Applies stacked Fastfood blocks: `y_j = S_j Hn G_j Pi_j Hn B_j x` for each block j.

  Deep Fried Convnets, Sec. 3 (`V = S H G Pi H B`, with H orthonormal here; see the module
  docstring for the scaling). Differentiable in x, S, G and B (the adaptive Fastfood layer); O(n)
  parameters and O(n log d) work per input row for n = n_blocks * d outputs.

  Args:
    x: `(..., d)` floating input, d a power of two (zero-pad with `pad_to_power_of_two`).
    S: `(n_blocks, d)` scaling diagonal.
    G: `(n_blocks, d)` Gaussian diagonal.
    B: `(n_blocks, d)` binary (+-1) or learned diagonal.
    perm: `(n_blocks, d)` integer array, a permutation of `range(d)` in each row (not checked:
      values outside `[0, d)` give undefined results).
    impl: Hadamard implementation passed to `fwht` ("auto", "xla" or "pallas").

  Returns:
    `(..., n_blocks * d)` array, block j in `[..., j * d:(j + 1) * d]`; dtype is the result type
    of x, S, G and B.

  Raises:
    TypeError: if x, S, G or B is not floating, or perm is not integer.
    ValueError: if the shapes do not match or d is not a power of two.
  """
  x = jnp.asarray(x)
  for name, a in (("x", x), ("S", S), ("G", G), ("B", B)):
    if not jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating):
      raise TypeError(f"fastfood_transform: {name} must be floating, got {jnp.asarray(a).dtype}")
  if not jnp.issubdtype(jnp.asarray(perm).dtype, jnp.integer):
    raise TypeError(
        f"fastfood_transform: perm must be an integer array, got {jnp.asarray(perm).dtype}")
  S, G, B, perm = (jnp.asarray(a) for a in (S, G, B, perm))
  if S.ndim != 2 or not (S.shape == G.shape == B.shape == perm.shape):
    raise ValueError(
        "fastfood_transform: S, G, B and perm must all have shape (n_blocks, d), got "
        f"{S.shape}, {G.shape}, {B.shape}, {perm.shape}")
  n_blocks, d = S.shape
  if not is_power_of_two(d):
    raise ValueError(f"fastfood_transform: block size d must be a power of two, got {d}")
  if x.ndim < 1 or x.shape[-1] != d:
    raise ValueError(
        f"fastfood_transform: x must have shape (..., {d}) to match S of shape {S.shape}, got "
        f"{x.shape} (zero-pad with pad_to_power_of_two)")
  dtype = jnp.result_type(x, S, G, B)
  lead = x.shape[:-1]
  y = x.astype(dtype)[..., None, :] * B.astype(dtype)  # (..., n_blocks, d)
  y = fwht(y, axis=-1, normalize=True, impl=impl)
  # Pi as one gather over the flattened blocks: index of block j's entry i is j * d + perm[j, i].
  idx = (perm.astype(jnp.int32) + d * jnp.arange(n_blocks, dtype=jnp.int32)[:, None]).reshape(-1)
  y = _permute_last(y.reshape(lead + (n_blocks * d,)), idx).reshape(lead + (n_blocks, d))
  y = fwht(y * G.astype(dtype), axis=-1, normalize=True, impl=impl)
  y = y * S.astype(dtype)
  return y.reshape(lead + (n_blocks * d,))


def fastfood_matrix(S: jax.Array, G: jax.Array, B: jax.Array, perm: jax.Array) -> jax.Array:
  """The dense `(n_blocks * d, d)` matrix V with `fastfood_transform(x) == V @ x` (for tests).

  Args:
    S, G, B, perm: as in `fastfood_transform`.

  Returns:
    `(n_blocks * d, d)` array.
  """
  d = jnp.shape(S)[-1]
  return fastfood_transform(jnp.eye(d, dtype=jnp.result_type(S, G, B)), S, G, B, perm, impl="xla").T


def fastfood_rbf_params(key: jax.Array, in_features: int, num_features: int,
                        dtype=jnp.float32) -> FastfoodParams:
  """Draws the Fastfood blocks for `num_features` RBF random features of `in_features` inputs.

  Block size `d = next_power_of_two(in_features)`, `ceil(num_features / d)` blocks, unit scale (the
  bandwidth is applied to the input by `fastfood_rbf_features`, so one draw serves every sigma).

  Args:
    key: a `jax.random` key.
    in_features: input dimension (before padding).
    num_features: number of random frequencies (rows of V that are used).
    dtype: float dtype of S, G, B.

  Returns:
    `FastfoodParams` of shape `(ceil(num_features / d), d)`.
  """
  in_features = _check_positive_int(in_features, "in_features", "fastfood_rbf_params")
  num_features = _check_positive_int(num_features, "num_features", "fastfood_rbf_params")
  d = next_power_of_two(in_features)
  return fastfood_params_init(key, d, -(-num_features // d), scale=1.0, dtype=dtype)


def fastfood_rbf_features(key_or_params, x: jax.Array, num_features: int, sigma: float = 1.0,
                          *, impl: str = "auto") -> jax.Array:
  """Fastfood random Fourier features for the Gaussian RBF kernel (Le et al. 2013).

  `phi(x) = num_features ** -0.5 * [cos(V x / sigma), sin(V x / sigma)]` with V the first
  `num_features` rows of stacked Fastfood blocks (rows distributed like rows of a standard Gaussian
  matrix), so that `phi(x) . phi(y) = mean_i cos(v_i . (x - y) / sigma)`, an unbiased estimate of
  `exp(-|x - y|^2 / (2 sigma^2))` (Rahimi & Recht's random features with V in place of a Gaussian
  W) whose error falls like `num_features ** -0.5`. Inputs are zero-padded to a power of two, which
  does not change distances.

  Args:
    key_or_params: a `jax.random` key (blocks drawn with `fastfood_rbf_params`; use the same key
      for every x you want to compare), or a `FastfoodParams` from `fastfood_rbf_params` with at
      least `num_features` rows in all.
    x: `(..., in_features)` floating inputs.
    num_features: number of random frequencies; the output has `2 * num_features` features.
    sigma: kernel bandwidth, > 0.
    impl: Hadamard implementation passed to `fwht`.

  Returns:
    `(..., 2 * num_features)` features, cosines first, in the dtype of x (float32 for integers).

  Raises:
    TypeError: if `key_or_params` is neither a key nor `FastfoodParams`.
    ValueError: if sigma <= 0, num_features is not a positive int, or the params do not fit x.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  num_features = _check_positive_int(num_features, "num_features", "fastfood_rbf_features")
  if not isinstance(sigma, jax.core.Tracer) and not float(sigma) > 0:
    raise ValueError(f"fastfood_rbf_features: sigma must be a positive number, got {sigma!r}")
  if x.ndim < 1:
    raise ValueError("fastfood_rbf_features: x must have shape (..., in_features), got a scalar")
  if isinstance(key_or_params, FastfoodParams):
    params = key_or_params
  else:
    check_key(key_or_params, "fastfood_rbf_features")
    params = fastfood_rbf_params(key_or_params, x.shape[-1], num_features)
  n_blocks, d = params.S.shape
  if d != next_power_of_two(x.shape[-1]) or n_blocks * d < num_features:
    raise ValueError(
        f"fastfood_rbf_features: params of shape {params.S.shape} do not fit x with "
        f"{x.shape[-1]} features and num_features={num_features}: need d = "
        f"{next_power_of_two(x.shape[-1])} and n_blocks * d >= {num_features}")
  z = pad_to_power_of_two(x / jnp.asarray(sigma, x.dtype), axis=-1)
  proj = fastfood_transform(z, *params, impl=impl)[..., :num_features]
  norm = jnp.asarray(1.0 / math.sqrt(num_features), proj.dtype)
  return jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], axis=-1) * norm


def rbf_kernel(x: jax.Array, y: jax.Array, sigma: float = 1.0) -> jax.Array:
  """Exact Gaussian RBF kernel matrix `exp(-|x_i - y_j|^2 / (2 sigma^2))`.

  Args:
    x: `(m, p)` array.
    y: `(k, p)` array.
    sigma: bandwidth.

  Returns:
    `(m, k)` kernel matrix.

  Raises:
    ValueError: sigma not positive and finite; x, y not 2-D with the same feature size.
  """
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)) \
      or not math.isfinite(sigma) or sigma <= 0:
    raise ValueError(f"rbf_kernel: sigma must be a positive finite number, got {sigma!r}.")
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"rbf_kernel: x must be (m, p) and y (k, p), got {x.shape} and {y.shape}.")
  sq = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
  return jnp.exp(-sq / (2.0 * sigma**2))
