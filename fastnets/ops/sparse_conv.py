"""Direct sparse convolution for pruned CNNs (Escort; Chen, 2018): the public op.

Escort computes a convolution with an unstructured-sparse (pruned) kernel *directly*: for each
output channel it walks that channel's nonzero weights and, for each nonzero, accumulates the
input window that the weight touches, shifted by the weight's kernel position, times the weight:

  out[n, y, x, o] = sum_{k < nnz(o)} v[o, k] * xpad[n, s_h y + r[o, k], s_w x + c[o, k], i[o, k]]

(Escort, Sec. 3, the direct sparse convolution; the dense form is the usual
`sum_{r, c, i} w[r, c, i, o] xpad[...]`). No im2col matrix is built, and the work is proportional
to the number of nonzeros instead of the dense kernel size.

`sparse_conv2d` checks its arguments and dispatches on `impl`: "xla" runs the pure-JAX reference
and "pallas" the Triton kernel, both in `fastnets.kernels.sparse_conv`. The weight format
(`SparseKernel`, `to_sparse_kernel`, `to_dense`) and the geometry helpers live in the leaf module
`fastnets.sparse_format` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

import jax

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
  "SparseKernel",
  "conv_flops",
  "conv_output_geometry",
  "hashable_padding",
  "sparse_conv2d",
  "sparse_conv2d_reference",
  "stride_one_problem",
  "to_dense",
  "to_sparse_kernel",
]


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
    impl: "auto" (Pallas on GPU, XLA elsewhere), "xla" (`sparse_conv2d_reference`) or "pallas"
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
      unknown `impl`, or `impl="pallas"` off a GPU without `interpret=True`.
  """
  check_conv_inputs(x, w, bias, data_format, dilation)
  if impl not in ("auto", "xla", "pallas"):
    raise ValueError(f"impl must be 'auto', 'xla' or 'pallas'; got {impl!r}.")
  if impl == "auto":
    impl = "pallas" if jax.default_backend() == "gpu" else "xla"
  if impl == "xla" or x.shape[0] == 0:  # An empty batch launches no kernel: nothing to compute.
    return sparse_conv2d_reference(x, w, strides, padding, bias, relu)
  if not interpret and jax.default_backend() != "gpu":
    raise ValueError(
      f"sparse_conv2d: impl='pallas' needs a GPU (the backend is {jax.default_backend()!r}); pass "
      "interpret=True to run the kernel in the Pallas interpreter, or use impl='xla'.")
  return kernel.sparse_conv2d_pallas(
    x, w, strides, padding, bias, relu, config=config, interpret=interpret)
