"""Direct sparse convolution for pruned CNNs (Escort; Chen, 2018): the public op.

Escort computes a convolution with an unstructured-sparse (pruned) kernel *directly*: for each
output channel it walks that channel's nonzero weights and, for each nonzero, accumulates the
input window that the weight touches, shifted by the weight's kernel position, times the weight:

  out[n, y, x, o] = sum_{k < nnz(o)} v[o, k] * xpad[n, s_h y + r[o, k], s_w x + c[o, k], i[o, k]]

(Escort, Sec. 3, the direct sparse convolution; the dense form is the usual
`sum_{r, c, i} w[r, c, i, o] xpad[...]`). No im2col matrix is built, and the work is proportional
to the number of nonzeros instead of the dense kernel size.

`sparse_conv2d` checks its arguments and dispatches on `impl`: "xla" runs the pure-JAX reference,
"pallas" the Triton kernel and "native" the C++ CPU kernel (SkimCaffe-style, Park et al. 2017), all
in `fastnets.kernels.sparse_conv`; "dense" runs XLA's dense convolution of the densified kernel;
"auto" picks among them (`choose_sparse_conv_impl`). The weight format
(`SparseKernel`, `to_sparse_kernel`, `to_dense`) and the geometry helpers live in the leaf module
`fastnets.sparse_format` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fastnets.checks import pair
from fastnets.kernels import native
from fastnets.kernels import sparse_conv as kernel
from fastnets.kernels.sparse_conv import sparse_conv2d_reference
from fastnets.ops.flops import conv_flops
from fastnets.sparse_format import (
  Padding,
  SparseKernel,
  check_conv_inputs,
  conv_output_geometry,
  hashable_padding,
  stride_one_problem,
  to_dense,
  to_sparse_kernel,
)

__all__ = [
  "NATIVE_MIN_SPARSITY",
  "SPARSE_CONV_IMPLS",
  "SparseKernel",
  "choose_sparse_conv_impl",
  "conv_flops",
  "conv_output_geometry",
  "hashable_padding",
  "sparse_conv2d",
  "sparse_conv2d_reference",
  "static_sparsity",
  "stride_one_problem",
  "to_dense",
  "to_sparse_kernel",
]


SPARSE_CONV_IMPLS = ("auto", "xla", "native", "dense", "pallas")

# The sparsity from which `impl="auto"` runs the native kernel instead of the dense convolution on
# a CPU, as `1 - max_nnz / (KH KW I)` (the densest output channel sets the bound, so it is known
# from the format's static shape, inside jit too). Measured, not guessed: the
# `metrics.summary.native_crossover` of `experiments.bench_sparse_conv` on the full-size AlexNet
# conv2-4 and ResNet-50 3x3 layers, batch 1, sparsities 0.5-0.95 (0.782 by per-row medians and by
# minima; a loaded 2-core machine, 2026-12-06). The command is in docs/KERNELS.md.
NATIVE_MIN_SPARSITY = 0.782


def static_sparsity(w: SparseKernel) -> float:
  """`1 - max_nnz / (KH KW I)`: a lower bound on every output channel's sparsity, known from the
  format's shapes alone (no concrete values needed, so the same inside and outside jit)."""
  kh, kw, ci, _ = w.kernel_shape
  return 1.0 - w.max_nnz / (kh * kw * ci)


def choose_sparse_conv_impl(impl: str, x, w: SparseKernel, bias=None) -> str:
  """The implementation `sparse_conv2d(x, w, impl=impl)` runs on this backend.

  "auto" becomes "pallas" on a GPU; on a CPU, "native" when `static_sparsity(w) >=
  NATIVE_MIN_SPARSITY`, the native kernel builds and takes the dtypes (float32, bfloat16), else
  "xla" (the pure-JAX direct path) when the native kernel is unavailable (one warning), and
  "dense" (XLA's dense convolution) below the threshold. Any other value is returned unchanged.
  `fastnets.nn.sparse_apply` goes through the same rule.
  """
  if impl != "auto":
    return impl
  if jax.default_backend() == "gpu":
    return "pallas"
  if jax.default_backend() != "cpu":  # The native kernel is a CPU kernel.
    return "xla"
  if static_sparsity(w) < NATIVE_MIN_SPARSITY:
    return "dense"
  if not kernel.native_takes_dtypes(x, w, bias):
    return "xla"
  if native.available():
    return "native"
  native.warn_fallback_once("fastnets.ops.sparse_conv2d")
  return "xla"


def _dense_conv(x, w, strides, padding, bias, relu):
  """XLA's dense convolution of the densified kernel (+ bias, ReLU): `impl="dense"`."""
  dtype = jnp.result_type(x.dtype, w.values.dtype)
  pads, _ = conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)
  y = lax.conv_general_dilated(x.astype(dtype), to_dense(w).astype(dtype), pair(strides, "strides"),
                               pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if bias is not None:
    y = y + bias.astype(dtype)
  return jnp.maximum(y, 0) if relu else y


def sparse_conv2d(
  x: jax.Array,
  w: SparseKernel,
  strides=(1, 1),
  padding: Padding = "SAME",
  bias: jax.Array | None = None,
  relu: bool = False,
  impl: str = "auto",
  *,
  config: Any = None,
  interpret: bool = False,
  data_format: str = "NHWC",
  dilation=(1, 1),
) -> jax.Array:
  """Direct sparse 2-D convolution of NHWC input with a pruned kernel (Escort, Chen 2018).

  `out[n, y, x, o] = act(b[o] + sum_k v[o, k] xpad[n, s_h y + r[o, k], s_w x + c[o, k], i[o, k]])`
  with act = ReLU when `relu` else identity. Equals `lax.conv_general_dilated(x, to_dense(w),
  strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))` (+ bias, ReLU).

  Args:
    x: (N, H, W, I) float input.
    w: `SparseKernel` (from `to_sparse_kernel`), `kernel_shape` (KH, KW, I, O).
    strides: int or (s_h, s_w).
    padding: "SAME", "VALID", int or ((top, bottom), (left, right)) (lax conventions).
    bias: optional (O,) bias, fused.
    relu: fuse a ReLU after the bias.
    impl: "auto" (`choose_sparse_conv_impl`: Pallas on a GPU; on a CPU the native kernel from
      `NATIVE_MIN_SPARSITY` on, the dense convolution below), "xla" (`sparse_conv2d_reference`),
      "native" (`fastnets.kernels.sparse_conv.sparse_conv2d_native`, the C++ CPU kernel; float32
      or bfloat16), "dense" (`lax.conv_general_dilated` on `to_dense(w)`) or "pallas"
      (`fastnets.kernels.sparse_conv.sparse_conv2d_pallas`; off a GPU only with `interpret=True`).
    config: `fastnets.kernels.sparse_conv.SparseConvConfig` tile sizes for the Pallas kernel
      (default: its heuristic; see `fastnets.kernels.autotune` to search for the best).
    interpret: run the Pallas kernel in the Pallas interpreter (for tests on a CPU). Only
      meaningful with `impl="pallas"`; `impl="auto"` never picks the interpreter.
    data_format: only "NHWC".
    dilation: only (1, 1).

  Returns:
    (N, Ho, Wo, O) array of dtype `result_type(x, w.values)`.

  Raises:
    TypeError: `w` is not a SparseKernel (e.g. a dense kernel) or `x` is not float.
    ValueError: channel mismatch, bad strides/padding/bias, unsupported layout or dilation, or
      unknown `impl`, or `impl="pallas"` off a GPU without `interpret=True`; for
      `impl="native"`, a non-finite kernel (TypeError for dtypes other than float32/bfloat16).
    fastnets.kernels.native.NativeBuildError: `impl="native"` and the kernel cannot be built.
  """
  check_conv_inputs(x, w, bias, data_format, dilation)
  if impl not in SPARSE_CONV_IMPLS:
    raise ValueError(f"impl must be one of {SPARSE_CONV_IMPLS}; got {impl!r}.")
  conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], pair(strides, "strides"), padding)
  impl = choose_sparse_conv_impl(impl, x, w, bias)
  if impl == "native":
    return kernel.sparse_conv2d_native(x, w, strides, padding, bias, relu)
  if impl == "dense":
    return _dense_conv(x, w, strides, padding, bias, relu)
  if impl == "xla" or x.shape[0] == 0:  # An empty batch launches no kernel: nothing to compute.
    return sparse_conv2d_reference(x, w, strides, padding, bias, relu)
  if not interpret and jax.default_backend() != "gpu":
    raise ValueError(
      f"sparse_conv2d: impl='pallas' needs a GPU (the backend is {jax.default_backend()!r}); pass "
      "interpret=True to run the kernel in the Pallas interpreter, or use impl='xla'.")
  return kernel.sparse_conv2d_pallas(
    x, w, strides, padding, bias, relu, config=config, interpret=interpret)
