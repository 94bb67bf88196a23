"""The fast Walsh-Hadamard transform (FWHT) along any axis, with padding helpers.

The Walsh-Hadamard matrix in Sylvester (natural) order is `H_1 = [1]`,
`H_2n = [[H_n, H_n], [H_n, -H_n]]`; entry `H[i, j] = (-1) ** popcount(i & j)`. It is symmetric and
`H @ H = n * I`, so `H / sqrt(n)` is orthonormal and its own inverse. It is the workhorse of the
Fastfood transform `V = S H G Pi H B` (Le, Sarlos & Smola, ICML 2013; Yang et al., "Deep Fried
Convnets", ICCV 2015, Sec. 3), see `fastnets.ops.fastfood`.

Three implementations, chosen by `impl=` (`choose_fwht_impl` tells which one "auto" runs):

* XLA (any backend): Sylvester order makes `H_n` a Kronecker product
  `H_f1 (x) H_f2 (x) ... (x) H_fk` for `n = f1 f2 ... fk`, so the transform of a length-n axis
  viewed as `(f1, ..., fk)` is a small dense `H_fi` applied (one matmul) along each factor axis.
  With factors of at most 64 this makes `ceil(log2(n) / 6)` passes over memory instead of the
  `log2(n)` passes of a radix-2 butterfly; the extra multiply-adds cost less than memory traffic
  on a CPU. Large inputs are processed in chunks of about 2^20 elements (`lax.map`) so that all
  passes over a chunk stay in cache. `experiments/bench_fastfood.py` times it.
* native (the default on CPUs): `fastnets.kernels.native`, a SIMD radix-8 C++ kernel called as an
  XLA FFI custom call and built with the machine's C++ compiler on first use; one pass over memory
  per three butterfly levels, rows spread over XLA's CPU thread pool. Without a compiler
  `impl="auto"` falls back to the XLA path with a warning.
* Pallas (GPUs): `fastnets.kernels.hadamard` (Triton backend), with its own custom VJP; the XLA and
  native paths share the custom VJP below.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.checks import is_power_of_two, next_power_of_two
from fastnets.kernels import hadamard as hadamard_kernel
from fastnets.kernels import native

__all__ = [
    "choose_fwht_impl",
    "fwht",
    "hadamard_matrix",
    "next_power_of_two",
    "pad_to_power_of_two",
]

_IMPLS = ("auto", "xla", "native", "pallas")
# Largest Kronecker factor (radix) of the XLA path and the chunk size (elements) of `lax.map`.
_MAX_RADIX = 64
_CHUNK_ELEMENTS = 2**20


def _normalize_axis(x, axis, fn_name: str) -> int:
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"{fn_name}: axis must be an int, got {axis!r}")
  ndim = jnp.ndim(x)
  if ndim == 0:
    raise ValueError(f"{fn_name}: x must have at least one dimension, got a scalar")
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"{fn_name}: axis must be in [-{ndim}, {ndim}) for x of shape {jnp.shape(x)}, got {axis}")
  return int(axis) % ndim


def pad_to_power_of_two(x: jax.Array, axis: int = -1) -> jax.Array:
  """Zero-pads `x` at the end of `axis` to the next power of two length.

  Args:
    x: array of any rank >= 1 and any dtype.
    axis: the axis to pad.

  Returns:
    `x` itself if `x.shape[axis]` is already a power of two, otherwise an array of the same dtype
    with `x.shape[axis]` replaced by `next_power_of_two(x.shape[axis])`, zeros at the end.

  Raises:
    ValueError: if `axis` is out of range or the axis has length 0.
  """
  x = jnp.asarray(x)
  axis = _normalize_axis(x, axis, "pad_to_power_of_two")
  n = x.shape[axis]
  if n == 0:
    raise ValueError(f"pad_to_power_of_two: axis {axis} of x has length 0")
  m = next_power_of_two(n)
  if m == n:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, m - n)
  return jnp.pad(x, widths)


def _sylvester_np(n: int) -> np.ndarray:
  """Sylvester-order Hadamard matrix of order n (a power of two) as an int8 numpy array."""
  h = np.ones((1, 1), np.int8)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


@functools.lru_cache(maxsize=None)
def _block_np(f: int) -> np.ndarray:
  """Cached read-only small Hadamard block (f <= _MAX_RADIX) of the Kronecker factorisation."""
  h = _sylvester_np(f)
  h.setflags(write=False)
  return h


def hadamard_matrix(n: int, dtype=jnp.float32) -> jax.Array:
  """The dense n x n Walsh-Hadamard matrix in Sylvester order (unnormalised, entries +-1).

  Equal to `scipy.linalg.hadamard(n)`. O(n^2) memory: for tests, baselines and small blocks.

  Args:
    n: order, a power of two.
    dtype: dtype of the result.

  Returns:
    `(n, n)` array of `dtype`.

  Raises:
    ValueError: if `n` is not a power of two.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not is_power_of_two(int(n)):
    raise ValueError(f"hadamard_matrix: n must be a power of two, got {n!r}")
  return jnp.asarray(_sylvester_np(int(n)), dtype)


def _factors(n: int, max_radix: int = _MAX_RADIX) -> tuple[int, ...]:
  """Balanced power-of-two factors of n, each <= max_radix (n = 1 gives ())."""
  k = n.bit_length() - 1
  if k == 0:
    return ()
  lr = max_radix.bit_length() - 1
  passes = -(-k // lr)
  base, extra = divmod(k, passes)
  return tuple(2 ** (base + (1 if i < extra else 0)) for i in range(passes))


def _compute_dtype(dtype):
  # Half precisions are transformed in float32 (one rounding at the end): the +-1 blocks are exact
  # and the sums of a length-n transform grow like sqrt(n) or n, which bf16 would round each pass.
  return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _fwht_xla(x: jax.Array, axis: int, scale: float) -> jax.Array:
  """Kronecker-factorised FWHT of `x` along `axis` (already normalised, n a power of two)."""
  shape = x.shape
  n = shape[axis]
  pre = math.prod(shape[:axis])
  post = math.prod(shape[axis + 1:])
  cdt = _compute_dtype(x.dtype)
  fs = _factors(n)
  if not fs:
    return (x.astype(cdt) * scale).astype(x.dtype) if scale != 1.0 else x
  mats = [jnp.asarray(_block_np(f), cdt) for f in fs]
  if scale != 1.0:
    mats[0] = mats[0] * jnp.asarray(scale, cdt)
  hi = jax.lax.Precision.HIGHEST  # f32 matmuls must not drop to TF32/bf16 passes on accelerators

  def transform_last(z):  # z: (..., n), transform the last axis
    lead = z.shape[:-1]
    z = z.reshape(lead + fs)
    for i, h in enumerate(mats):
      # Contract factor axis i in place (the dot puts the new axis last; move it back).
      ax = len(lead) + i
      z = jnp.moveaxis(jnp.tensordot(z, h, axes=[[ax], [0]], precision=hi), -1, ax)
    return z.reshape(lead + (n,))

  def transform_inner(z):  # z: (..., n * post), transform the n axis of the (n, post) view
    # "Rotating" form: each step contracts the leading factor and appends the result as the last
    # axis (the natural output order of the dot), so after all factors the view is (post, n) and a
    # single transpose restores (n, post). Measured faster than contracting in place or moving the
    # axis to the end and back (two transposes) when post > 1.
    lead = z.shape[:-1]
    for f, h in zip(fs, mats):
      z = jnp.einsum("...fm,fg->...mg", z.reshape(lead + (f, -1)), h, precision=hi)
    z = jnp.swapaxes(z.reshape(lead + (post, n)), -1, -2)
    return z.reshape(lead + (n * post,))

  transform = transform_last if post == 1 else transform_inner
  y = x.astype(cdt).reshape(pre, n * post)
  rows = max(1, _CHUNK_ELEMENTS // (n * post))
  if rows < pre:
    # Chunks of `rows` rows, so that the passes over a chunk hit the cache; `lax.map` vmaps the
    # transform over each chunk and handles a ragged remainder itself.
    y = jax.lax.map(transform, y, batch_size=rows)
  else:
    y = transform(y)
  return y.reshape(shape).astype(x.dtype)


def _fwht_native(x: jax.Array, axis: int, scale: float) -> jax.Array:
  shape = x.shape
  n = shape[axis]
  view = (math.prod(shape[:axis]), n, math.prod(shape[axis + 1:]))
  y = native.fwht_native(x.astype(_compute_dtype(x.dtype)).reshape(view), scale)
  return y.reshape(shape).astype(x.dtype)


def choose_fwht_impl(impl: str, n: int, dtype) -> str:
  """The implementation `fwht(impl=impl)` runs for length `n` and `dtype` on this backend.

  "auto" becomes "pallas" on a GPU when the kernel supports (n, dtype), "native" on a CPU when the
  C++ kernel builds (with a one-time warning when it does not), and "xla" otherwise; any other
  value is returned unchanged.
  """
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "gpu" and hadamard_kernel.supports(n, dtype):
    return "pallas"
  if backend == "cpu":
    if native.available():
      return "native"
    native.warn_fallback_once("fastnets.ops.fwht")
  return "xla"


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _fwht(x, axis, normalize, impl):
  n = x.shape[axis]
  scale = 1.0 / math.sqrt(n) if normalize else 1.0
  if impl == "native":
    return _fwht_native(x, axis, scale)
  return _fwht_xla(x, axis, scale)


# custom_vjp: the transform is linear and H is symmetric, so the VJP of y = H x is g -> H g (with
# the same scaling). Nothing is saved for the backward pass and nothing of the forward is
# recomputed: the backward is one more forward transform of the cotangent (autodiff of the XLA
# path would transpose each matmul and reshape instead of reusing them).
def _fwht_fwd(x, axis, normalize, impl):
  return _fwht(x, axis, normalize, impl), None


def _fwht_bwd(axis, normalize, impl, _, g):
  return (_fwht(g, axis, normalize, impl),)


_fwht.defvjp(_fwht_fwd, _fwht_bwd)


def fwht(x: jax.Array, axis: int = -1, normalize: bool = False, impl: str = "auto", *,
         interpret: bool = False) -> jax.Array:
  """Fast Walsh-Hadamard transform of `x` along `axis`, in Sylvester (natural) order.

  Computes `y = x @ H_n` along `axis` (equivalently `H_n x`, H is symmetric), with `H_n` the
  unnormalised Hadamard matrix (`scipy.linalg.hadamard(n)`), or `H_n / sqrt(n)` when `normalize`
  (orthonormal: then `fwht(fwht(x, normalize=True), normalize=True) == x`). O(n log n) work; the
  building block of Fastfood (Le et al. 2013) and Deep Fried Convnets (Yang et al. 2015, Sec. 3).

  Differentiable in reverse mode (`jax.custom_vjp`: the transform is its own transpose),
  jit/vmap compatible. Forward mode (`jax.jvp`, `jax.jacfwd`) is not supported, as for every
  custom_vjp; being linear, the transform's JVP is `fwht` of the tangent, so call it on the tangent
  (or use `jax.jacrev`).

  Args:
    x: floating array of any rank >= 1: float32, bfloat16, float16, or float64 (with x64 enabled).
      Half precisions are computed in float32 and rounded once at the end.
    axis: the axis to transform; its length n must be a power of two (n = 1 is the identity).
    normalize: if True, scale by `1 / sqrt(n)` (orthonormal transform).
    impl: "xla" (Kronecker-factorised matmuls, any backend), "native" (the C++ SIMD kernel of
      `fastnets.kernels.native`, CPU only, built on first use), "pallas" (the Triton kernel in
      `fastnets.kernels.hadamard`, for 16 <= n <= 2^14, float32/bfloat16/float16; off a GPU only
      with `interpret=True`), or "auto" (pallas on a GPU when supported, native on a CPU when it
      builds, xla otherwise; see `choose_fwht_impl`).
    interpret: run the Pallas kernel in the Pallas interpreter (for tests on a CPU). Only
      meaningful with `impl="pallas"`; `impl="auto"` never picks the interpreter.

  Returns:
    Array of the same shape and dtype as `x`.

  Raises:
    TypeError: if `x` is not of a floating dtype.
    ValueError: if `axis` is out of range, the length of `axis` is not a power of two (pad first
      with `pad_to_power_of_two(x, axis=...)`), `impl` is unknown, or `impl="pallas"` does not
      support the length or dtype, or runs off a GPU without `interpret=True`.
    fastnets.kernels.native.NativeBuildError: if `impl="native"` and the kernel cannot be built.
  """
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"fwht: x must have a floating dtype (float32, bfloat16, float16, float64), got {x.dtype}")
  axis = _normalize_axis(x, axis, "fwht")
  n = x.shape[axis]
  if not is_power_of_two(n):
    raise ValueError(
        f"fwht: the length of axis {axis} of x (shape {x.shape}) is {n}, which is not a power of "
        f"two; zero-pad it first with fastnets.ops.pad_to_power_of_two(x, axis={axis}) "
        f"(to length {next_power_of_two(max(n, 1))})")
  if impl not in _IMPLS:
    raise ValueError(f"fwht: impl must be one of {_IMPLS}, got {impl!r}")
  if impl == "pallas":
    if not hadamard_kernel.supports(n, x.dtype):
      raise ValueError(
          f"fwht: impl='pallas' supports lengths {hadamard_kernel.MIN_N} <= n <= "
          f"{hadamard_kernel.MAX_N} and dtypes float32/bfloat16/float16, got n={n}, "
          f"dtype={x.dtype}; use impl='xla' or 'auto'")
    if not interpret and jax.default_backend() != "gpu":
      raise ValueError(
          f"fwht: impl='pallas' needs a GPU (the backend is {jax.default_backend()!r}); pass "
          "interpret=True to run the kernel in the Pallas interpreter, or use impl='xla'.")
  x = jnp.asarray(x)
  if x.size == 0:
    return x
  chosen = choose_fwht_impl(impl, n, x.dtype)
  if chosen == "pallas":
    y = hadamard_kernel.fwht(jnp.moveaxis(x, axis, -1), normalize=normalize,
                             interpret=interpret)
    return jnp.moveaxis(y, -1, axis)
  return _fwht(x, axis, bool(normalize), chosen)
