"""Pallas GPU kernel for the fast Walsh-Hadamard transform over the last axis.

This module holds the reference `fwht_reference` (a dense matmul with the Sylvester matrix, the
tests' oracle), the kernel `fwht_pallas` and `fwht`, the kernel with its custom VJP. The public op
`fastnets.ops.fwht(x, impl="pallas")` calls `fwht`; its XLA path (Kronecker-factorised matmuls)
is the CPU path. Used by Fastfood (Le et al. 2013) and Deep Fried Convnets (Yang et al. 2015,
Sec. 3).

Algorithm. Sylvester order makes `H_n = H_a (x) H_b` for `n = a * b`, so the transform of a row `x`
viewed as an `(a, b)` matrix `X` (row-major) is `H_a @ X @ H_b`: two small dense matmuls on the
tensor cores, with the whole row in registers/shared memory (one read and one write of global
memory). Each program owns a block of `rows_per_block` rows and loops over them.
  * `256 <= n <= 2^14`: `a = 2^floor(log2(n)/2)`, `b = n / a` (16..128 each), the two-matmul form.
  * `16 <= n <= 128`: one dense matmul `X_block @ H_n` for the whole `(rows_per_block, n)` block.
Triton's `dot` needs every dimension >= 16, which sets `MIN_N = 16`; `MAX_N = 2^14` keeps the
`(128, 128)` operands in one program's shared memory. Outside that range `fwht(impl="auto")` uses
the XLA path. Matmuls run in float32 with `precision=HIGHEST` (Triton `input_precision="ieee"`, no
TF32, so +-1 blocks give exact float32 sums); half-precision inputs are upcast on load and rounded
once on store. The Hadamard blocks are small kernel inputs (at most 2 x 64 KiB) rather than being
recomputed in the kernel, which keeps the kernel in the portable Pallas subset.

Backend: Triton (`jax.experimental.pallas.triton.CompilerParams`). Checked with jax 0.10.2 by
lowering for CUDA from a CPU: the Triton backend lowers every supported size and dtype; Mosaic GPU
(the default GPU backend of jax 0.10) does not lower this kernel at all: its lane-semantics lowering
has no `dot_general` ("Unimplemented primitive ... dot_general"), its async copies are limited to
256 elements per dimension (a `(1, 4096)` row block is rejected) and a `(1, 16384)` float32 block
exceeds its shared-memory budget. Triton is deprecated from jax 0.11 in favour of Mosaic GPU; a
warpgroup-MMA Mosaic version is future work. This kernel has not been timed on a GPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from fastnets.checks import is_power_of_two

__all__ = ["MAX_N", "MIN_N", "fwht", "fwht_pallas", "fwht_reference", "supports"]

MIN_N = 16
MAX_N = 2**14
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Elements per program (rows_per_block * n) by default: 16 rows of 1024, 1 row of 16384.
_BLOCK_ELEMENTS = 2**14


def supports(n: int, dtype) -> bool:
  """Whether the kernel handles rows of length `n` of `dtype` (power of two in [MIN_N, MAX_N])."""
  return MIN_N <= n <= MAX_N and is_power_of_two(n) and jnp.dtype(dtype) in _DTYPES


def _hadamard_np(n: int) -> np.ndarray:
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


def fwht_reference(x: jax.Array, *, normalize: bool = False) -> jax.Array:
  """`x @ H_n` over the last axis with the dense Sylvester matrix (the tests' oracle).

  O(n^2) work and memory; computed in float32 (float64 for float64 input) at HIGHEST precision and
  cast back to `x.dtype`.
  """
  x = jnp.asarray(x)
  n = x.shape[-1]
  if not is_power_of_two(n):
    raise ValueError(f"fwht_reference: the last axis must be a power of two, got shape {x.shape}")
  cdt = jnp.promote_types(x.dtype, jnp.float32)
  h = jnp.asarray(_hadamard_np(n), cdt)
  if normalize:
    h = h / jnp.sqrt(jnp.asarray(n, cdt))
  y = jnp.matmul(x.astype(cdt), h, precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def _dense_kernel(x_ref, h_ref, o_ref):
  """Block `(rows, n)` times `H_n` (n <= 128)."""
  x = x_ref[...].astype(jnp.float32)
  y = jnp.dot(x, h_ref[...], precision=jax.lax.Precision.HIGHEST)
  o_ref[...] = y.astype(o_ref.dtype)


def _two_factor_kernel(x_ref, ha_ref, hb_ref, o_ref, *, a: int, b: int, rows: int):
  """Each row viewed as `X (a, b)` becomes `H_a @ X @ H_b` (n = a * b >= 256)."""
  ha = ha_ref[...]
  hb = hb_ref[...]

  def body(r, carry):
    x = x_ref[pl.ds(r, 1), :].astype(jnp.float32).reshape(a, b)
    y = jnp.dot(x, hb, precision=jax.lax.Precision.HIGHEST)
    z = jnp.dot(ha, y, precision=jax.lax.Precision.HIGHEST)
    o_ref[pl.ds(r, 1), :] = z.reshape(1, a * b).astype(o_ref.dtype)
    return carry

  jax.lax.fori_loop(0, rows, body, 0)


def fwht_pallas(x: jax.Array, *, normalize: bool = False, rows_per_block: int | None = None,
                num_warps: int | None = None, interpret: bool = False) -> jax.Array:
  """Walsh-Hadamard transform (Sylvester order) of `x` over its last axis with a Pallas kernel.

  Not differentiable by itself: use `fastnets.ops.fwht(..., impl="pallas")`, whose custom VJP
  calls this kernel again on the cotangent.

  Args:
    x: `(..., n)` array of float32, bfloat16 or float16, n a power of two in [16, 2^14].
    normalize: scale by `1 / sqrt(n)` (orthonormal transform).
    rows_per_block: rows per program, a power of two; default `max(1, 2^14 // n)` capped at the
      number of rows (rounded up to a power of two). Rows are zero-padded to a multiple of it.
    num_warps: Triton warps per program (default 4, 8 for n >= 4096).
    interpret: run in the Pallas interpreter (CPU) instead of compiling for a GPU.

  Returns:
    Array of the same shape and dtype as `x`: `x @ H_n` (times `n**-0.5` if `normalize`).

  Raises:
    ValueError: if the last axis length or the dtype is unsupported, or `rows_per_block` is not a
      positive power of two.
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError("fwht_pallas: x must have at least one dimension, got a scalar")
  n = x.shape[-1]
  if not supports(n, x.dtype):
    raise ValueError(
        f"fwht_pallas: the last axis must be a power of two in [{MIN_N}, {MAX_N}] and the dtype "
        f"float32/bfloat16/float16, got x of shape {x.shape} and dtype {x.dtype}")
  lead = x.shape[:-1]
  m = math.prod(lead)
  if m == 0:
    return x
  if rows_per_block is None:
    rows_per_block = min(max(1, _BLOCK_ELEMENTS // n), 1 << (m - 1).bit_length())
  if (isinstance(rows_per_block, bool) or not isinstance(rows_per_block, int)
      or rows_per_block < 1 or rows_per_block & (rows_per_block - 1)):
    raise ValueError(
        f"fwht_pallas: rows_per_block must be a positive power of two, got {rows_per_block!r}")
  if n <= 128:
    # A dot needs >= 16 rows on the GPU: use at least 16 rows per block in the dense form.
    rows_per_block = max(rows_per_block, 16)
  if num_warps is None:
    num_warps = 8 if n >= 4096 else 4
  scale = 1.0 / math.sqrt(n) if normalize else 1.0

  x2 = x.reshape(m, n)
  padded = -(-m // rows_per_block) * rows_per_block
  if padded != m:
    x2 = jnp.pad(x2, ((0, padded - m), (0, 0)))
  grid = (padded // rows_per_block,)
  row_spec = pl.BlockSpec((rows_per_block, n), lambda i: (i, 0))
  params = pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
  out_shape = jax.ShapeDtypeStruct((padded, n), x.dtype)

  if n <= 128:
    h = jnp.asarray(_hadamard_np(n) * scale, jnp.float32)
    y = pl.pallas_call(
        _dense_kernel, out_shape=out_shape, grid=grid,
        in_specs=[row_spec, pl.BlockSpec((n, n), lambda i: (0, 0))], out_specs=row_spec,
        compiler_params=params, interpret=interpret, name="fwht_dense")(x2, h)
  else:
    k = n.bit_length() - 1
    a = 2 ** (k // 2)
    b = n // a
    ha = jnp.asarray(_hadamard_np(a) * scale, jnp.float32)
    hb = jnp.asarray(_hadamard_np(b), jnp.float32)
    kernel = functools.partial(_two_factor_kernel, a=a, b=b, rows=rows_per_block)
    y = pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid,
        in_specs=[row_spec, pl.BlockSpec((a, a), lambda i: (0, 0)),
                  pl.BlockSpec((b, b), lambda i: (0, 0))],
        out_specs=row_spec, compiler_params=params, interpret=interpret,
        name="fwht_two_factor")(x2, ha, hb)
  if padded != m:
    y = y[:m]
  return y.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fwht(x, normalize, interpret):
  return fwht_pallas(x, normalize=normalize, interpret=interpret)


# The transform is linear and H is symmetric, so the VJP of y = x @ H is g -> g @ H (same scale):
# the backward pass is the kernel again on the cotangent, with no residuals saved.
def _fwht_fwd(x, normalize, interpret):
  return _fwht(x, normalize, interpret), None


def _fwht_bwd(normalize, interpret, _, g):
  return (_fwht(g, normalize, interpret),)


_fwht.defvjp(_fwht_fwd, _fwht_bwd)


def fwht(x: jax.Array, *, normalize: bool = False, interpret: bool = False) -> jax.Array:
  """Differentiable `fwht_pallas` (custom VJP: the backward pass runs the kernel on the cotangent).

  Args:
    x: `(..., n)` array of float32, bfloat16 or float16, n a power of two in [16, 2^14].
    normalize: scale by `1 / sqrt(n)` (orthonormal transform).
    interpret: run in the Pallas interpreter (CPU) instead of compiling for a GPU.

  Returns:
    `x @ H_n` (times `n**-0.5` if `normalize`), same shape and dtype as `x`.
  """
  return _fwht(jnp.asarray(x), bool(normalize), bool(interpret))
