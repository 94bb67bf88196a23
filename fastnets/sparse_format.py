"""The sparse convolution kernel format and the convolution geometry (Escort; Chen, 2018).

A leaf module (jax and numpy only), shared by the public op `fastnets.ops.sparse_conv2d` and the
kernels of `fastnets.kernels.sparse_conv`:

* `SparseKernel`, the weight format: per output channel the nonzero values and their
  (kernel row, kernel column, input channel) coordinates, padded to the largest per-channel count
  (a CSR row per output channel with a fixed row length). `to_sparse_kernel` builds it from a dense
  HWIO kernel and `to_dense` inverts it exactly.
* `conv_output_geometry`, the padding and output size of a convolution with `lax`'s conventions.
* `stride_one_problem`: any stride is reduced to stride 1 by splitting the padded input into its
  `s_h * s_w` phases (space-to-depth) and remapping the nonzeros' coordinates, so that every
  nonzero reads a *contiguous* shifted window.
* `check_conv_inputs`, the argument checks of every sparse convolution entry point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.checks import pair

__all__ = [
  "Padding",
  "SparseKernel",
  "check_conv_inputs",
  "conv_output_geometry",
  "hashable_padding",
  "stride_one_problem",
  "to_dense",
  "to_sparse_kernel",
]

Padding = str | int | Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class SparseKernel:
  """A pruned HWIO convolution kernel, stored per output channel (padded CSR).

  For output channel `o`, the first `nnz[o]` entries of `values[o]`, `rows[o]`, `cols[o]` and
  `chans[o]` are its nonzero weights and their (kernel row, kernel column, input channel)
  coordinates, in row-major HWI order; entries `k >= nnz[o]` are padding (value 0, coordinates 0)
  and are ignored. A pytree: the arrays are leaves, `kernel_shape` is static.

  Attributes:
    values: (O, K) float, nonzero values; K = `max_nnz` >= 1.
    rows: (O, K) int32 kernel rows in [0, KH).
    cols: (O, K) int32 kernel columns in [0, KW).
    chans: (O, K) int32 input channels in [0, I).
    nnz: (O,) int32 number of nonzeros of each output channel.
    kernel_shape: (KH, KW, I, O), the dense kernel's shape.

  To differentiate with respect to the nonzero values (fine-tuning a pruned model), close over the
  integer leaves: `jax.grad(lambda v: f(dataclasses.replace(w, values=v)))(w.values)`, or use
  `w.replace(values=v)`.
  """

  values: jax.Array
  rows: jax.Array
  cols: jax.Array
  chans: jax.Array
  nnz: jax.Array
  kernel_shape: tuple[int, int, int, int]

  @property
  def max_nnz(self) -> int:
    """K, the padded number of slots per output channel."""
    return self.values.shape[1]

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def valid(self) -> jax.Array:
    """(O, K) bool, True on real nonzeros and False on padding slots."""
    return jnp.arange(self.max_nnz)[None, :] < self.nnz[:, None]

  def num_nonzero(self) -> int:
    """Total number of stored nonzeros (needs concrete arrays)."""
    return int(np.sum(np.asarray(self.nnz)))

  def sparsity(self) -> float:
    """Fraction of zero weights of the dense kernel (needs concrete arrays)."""
    return 1.0 - self.num_nonzero() / math.prod(self.kernel_shape)

  def replace(self, **kwargs) -> "SparseKernel":
    return dataclasses.replace(self, **kwargs)


jax.tree_util.register_dataclass(
  SparseKernel,
  data_fields=["values", "rows", "cols", "chans", "nnz"],
  meta_fields=["kernel_shape"],
)


def _check_hwio(w, name: str = "w") -> tuple[int, int, int, int]:
  if isinstance(w, SparseKernel):
    raise TypeError(f"{name} is already a SparseKernel; expected a dense HWIO array.")
  shape = getattr(w, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(
      f"{name} must be a dense 4-D kernel in HWIO layout (KH, KW, I, O); got shape {shape}.")
  return tuple(int(d) for d in shape)


def to_sparse_kernel(w, *, max_nnz: int | None = None, layout: str = "HWIO") -> SparseKernel:
  """Builds the per-output-channel sparse format from a dense pruned kernel.

  Args:
    w: (KH, KW, I, O) dense kernel (HWIO, as `flax.linen.Conv` stores it), any float dtype; its
      zeros are the pruned weights. Must be concrete (call this outside `jit`): the number of
      nonzeros sets the format's shape.
    max_nnz: pad every output channel to this many slots (default: the largest per-channel count,
      at least 1). Useful to give several kernels the same shape.
    layout: only "HWIO" is supported.

  Returns:
    A `SparseKernel` with `values` of `w`'s dtype (float64 becomes float32 unless x64 is
    enabled, as with `jnp.asarray`); `to_dense` of it equals `w` exactly.

  Raises:
    ValueError: `layout` is not "HWIO", `w` is not 4-D, or `max_nnz` is smaller than the largest
      per-channel count of nonzeros.
    TypeError: `w` is traced (inside jit) or already a SparseKernel.
  """
  if layout != "HWIO":
    raise ValueError(f"layout must be 'HWIO' (kernel rows, cols, in, out); got {layout!r}.")
  kh, kw, ci, co = _check_hwio(w)
  if isinstance(w, jax.core.Tracer):
    raise TypeError(
      "to_sparse_kernel needs a concrete kernel w (call it outside jit): the number of nonzeros "
      "sets the shape of the sparse format.")
  wn = np.asarray(w)
  flat = wn.reshape(kh * kw * ci, co).T  # (O, R), R index = (r * KW + c) * I + i
  nz = flat != 0
  counts = nz.sum(axis=1)
  need = max(1, int(counts.max(initial=0)))
  if max_nnz is None:
    max_nnz = need
  elif int(max_nnz) < need:
    raise ValueError(
      f"max_nnz={max_nnz} is smaller than the largest number of nonzeros of one output channel "
      f"({need}).")
  k = int(max_nnz)
  order = np.argsort(~nz, axis=1, kind="stable")  # nonzeros first, in HWI order
  r_total = flat.shape[1]
  if k > r_total:
    order = np.concatenate([order, np.zeros((co, k - r_total), order.dtype)], axis=1)
  idx = order[:, :k]
  valid = np.arange(k)[None, :] < counts[:, None]
  idx = np.where(valid, idx, 0)
  values = np.where(valid, np.take_along_axis(flat, idx, axis=1), np.zeros((), wn.dtype))
  return SparseKernel(
    values=jnp.asarray(values),
    rows=jnp.asarray(idx // (kw * ci), jnp.int32),
    cols=jnp.asarray((idx // ci) % kw, jnp.int32),
    chans=jnp.asarray(idx % ci, jnp.int32),
    nnz=jnp.asarray(counts, jnp.int32),
    kernel_shape=(kh, kw, ci, co),
  )


def to_dense(w: SparseKernel) -> jax.Array:
  """Inverts `to_sparse_kernel`: the (KH, KW, I, O) dense kernel, exactly.

  Padding slots are scattered out of bounds and dropped, so they never touch a real weight.
  Jit-compatible and differentiable with respect to `w.values`.
  """
  if not isinstance(w, SparseKernel):
    raise TypeError(f"w must be a SparseKernel; got {type(w).__name__}.")
  kh, kw, ci, co = w.kernel_shape
  r_total = kh * kw * ci
  idx = (w.rows * kw + w.cols) * ci + w.chans
  idx = jnp.where(w.valid, idx, r_total)  # out of bounds -> dropped
  out_ch = jnp.broadcast_to(jnp.arange(co)[:, None], idx.shape)
  dense = jnp.zeros((r_total, co), w.values.dtype).at[idx, out_ch].set(w.values, mode="drop")
  return dense.reshape(kh, kw, ci, co)



def conv_output_geometry(
  in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides=(1, 1), padding: Padding = "SAME",
) -> tuple[tuple[tuple[int, int], tuple[int, int]], tuple[int, int]]:
  """Padding amounts and output size of a 2-D convolution, with `lax`'s conventions.

  Args:
    in_hw: (H, W) input size.
    kernel_hw: (KH, KW) kernel size.
    strides: int or (s_h, s_w).
    padding: "SAME" (output ceil(H / s), extra padding at the end, like `lax`), "VALID", an int
      (same padding on both sides of both dims) or ((top, bottom), (left, right)).

  Returns:
    (((top, bottom), (left, right)), (Ho, Wo)).

  Raises:
    ValueError: bad strides or padding, or an empty output.
  """
  sh, sw = pair(strides, "strides")
  h, w = in_hw
  kh, kw = kernel_hw
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      pads = ((0, 0), (0, 0))
    elif p == "SAME":
      pads = []
      for n, k, s in ((h, kh, sh), (w, kw, sw)):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      pads = tuple(pads)
    else:
      raise ValueError(
        "padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)); "
        f"got {padding!r}.")
  elif isinstance(padding, int | np.integer):
    pads = ((int(padding),) * 2,) * 2
  else:
    try:
      pads = tuple((int(a), int(b)) for a, b in padding)
    except (TypeError, ValueError):
      pads = None
    if pads is None or len(pads) != 2:
      raise ValueError(
        "padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)); "
        f"got {padding!r}.")
  if min(min(p) for p in pads) < 0:
    raise ValueError(f"padding must be non-negative; got {padding!r}.")
  ho = (h + sum(pads[0]) - kh) // sh + 1
  wo = (w + sum(pads[1]) - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(
      f"the {kh}x{kw} kernel does not fit the {h}x{w} input with padding {padding!r}: "
      "empty output.")
  return pads, (ho, wo)


def stride_one_problem(x: jax.Array, w: SparseKernel, strides=(1, 1), padding: Padding = "SAME"):
  """Rewrites a strided, padded sparse convolution as a stride-1 VALID one.

  The input is zero-padded, then split into its `s_h * s_w` phases (space-to-depth): tap
  (r, c) of input channel i with strides (s_h, s_w) becomes tap (r // s_h, c // s_w) of phase
  channel ((r % s_h) * s_w + c % s_w) * I + i, because `s y + r = s (y + r // s) + r % s`. After
  this, every nonzero reads a contiguous, unstrided window.

  Args:
    x: (N, H, W, I) input.
    w: the sparse kernel, `kernel_shape` (KH, KW, I, O).
    strides: int or (s_h, s_w).
    padding: as in `conv_output_geometry`.

  Returns:
    (xq, rows, cols, chans, (Ho, Wo), (KHq, KWq)): xq (N, Ho + KHq - 1, Wo + KWq - 1, s_h s_w I),
    and the (O, K) int32 remapped coordinates, with `out[n, y, x, o] = sum_k v[o, k] *
    xq[n, y + rows[o, k], x + cols[o, k], chans[o, k]]`.
  """
  sh, sw = pair(strides, "strides")
  kh, kw, ci, _ = w.kernel_shape
  n, h, wd, c = x.shape
  pads, (ho, wo) = conv_output_geometry((h, wd), (kh, kw), (sh, sw), padding)
  # With one output row (column) the stride moves nothing; dropping it keeps the phase split from
  # allocating stride^2 times the input for a stride far beyond the image.
  sh, sw = (1 if ho == 1 else sh), (1 if wo == 1 else sw)
  khq, kwq = (kh - 1) // sh + 1, (kw - 1) // sw + 1
  hq, wq = ho + khq - 1, wo + kwq - 1
  # Pad, then pad or crop to exactly (s_h Hq, s_w Wq): rows beyond what valid taps read are unused.
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  hp, wp = xp.shape[1], xp.shape[2]
  xp = jnp.pad(xp, ((0, 0), (0, max(0, sh * hq - hp)), (0, max(0, sw * wq - wp)), (0, 0)))
  xp = xp[:, :sh * hq, :sw * wq]
  if sh == 1 and sw == 1:
    return xp, w.rows, w.cols, w.chans, (ho, wo), (khq, kwq)
  xq = xp.reshape(n, hq, sh, wq, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hq, wq, sh * sw * c)
  rows = w.rows // sh
  cols = w.cols // sw
  chans = ((w.rows % sh) * sw + w.cols % sw) * ci + w.chans
  return xq, rows, cols, chans, (ho, wo), (khq, kwq)


def check_sparse_kernel(w: SparseKernel) -> None:
  """Raises ValueError naming the field when a (hand-built) SparseKernel is inconsistent: array
  shapes that disagree with `kernel_shape`, and, for concrete arrays, coordinates outside the
  kernel or counts outside [0, K] (the gathers would clamp them into wrong outputs)."""
  kh, kw, ci, co = w.kernel_shape
  o_k = tuple(w.values.shape)
  if len(o_k) != 2 or o_k[0] != co:
    raise ValueError(f"w.values must have shape (O, K) with O = {co} (kernel_shape "
                     f"{w.kernel_shape}); got {o_k}.")
  for name in ("rows", "cols", "chans"):
    if tuple(getattr(w, name).shape) != o_k:
      raise ValueError(f"w.{name} must have the shape of w.values {o_k}; got "
                       f"{tuple(getattr(w, name).shape)}.")
  if tuple(w.nnz.shape) != (co,):
    raise ValueError(f"w.nnz must have shape ({co},); got {tuple(w.nnz.shape)}.")
  fields = (w.rows, w.cols, w.chans, w.nnz)
  if any(isinstance(a, jax.core.Tracer) for a in fields):
    return  # Values are checked where they are concrete.
  valid = np.arange(o_k[1])[None, :] < np.asarray(w.nnz)[:, None]
  nnz = np.asarray(w.nnz)
  if nnz.size and (nnz.min() < 0 or nnz.max() > o_k[1]):
    raise ValueError(f"w.nnz must lie in [0, {o_k[1]}] (K slots); got [{nnz.min()}, {nnz.max()}].")
  for name, limit in (("rows", kh), ("cols", kw), ("chans", ci)):
    coords = np.asarray(getattr(w, name))[valid]
    if coords.size and (coords.min() < 0 or coords.max() >= limit):
      raise ValueError(f"w.{name} must lie in [0, {limit}) on stored nonzeros; got "
                       f"[{coords.min()}, {coords.max()}].")


def check_conv_inputs(x, w, bias, data_format: str = "NHWC", dilation=(1, 1)) -> None:
  """Raises TypeError/ValueError naming the argument when (x, w, bias) is not a valid NHWC sparse
  convolution problem (layout, dilation, kernel type, rank, dtype, channels, bias shape)."""
  if data_format != "NHWC":
    raise ValueError(f"data_format must be 'NHWC'; got {data_format!r}.")
  if tuple(pair(dilation, "dilation")) != (1, 1):
    raise ValueError(
      f"dilation must be (1, 1) (dilated sparse convolution is unsupported); got {dilation!r}.")
  if not isinstance(w, SparseKernel):
    shape = getattr(w, "shape", None)
    raise TypeError(
      f"w must be a SparseKernel (build one with to_sparse_kernel(dense_kernel)); got "
      f"{type(w).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}.")
  check_sparse_kernel(w)
  if getattr(x, "ndim", None) != 4:
    raise ValueError(f"x must be a 4-D NHWC array; got shape {getattr(x, 'shape', None)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a float array; got dtype {x.dtype}.")
  kh, kw, ci, co = w.kernel_shape
  if x.shape[3] != ci:
    raise ValueError(
      f"x has {x.shape[3]} input channels (NHWC, last axis) but w expects {ci} (kernel_shape "
      f"{w.kernel_shape}).")
  if bias is not None and tuple(bias.shape) != (co,):
    raise ValueError(
      f"bias must have shape ({co},) (one per output channel); got {tuple(bias.shape)}.")


def hashable_padding(padding: Padding):
  """`padding` in a hashable form (for static arguments of jit)."""
  if isinstance(padding, str):
    return padding.upper()
  if isinstance(padding, int | np.integer):
    return int(padding)
  return tuple((int(a), int(b)) for a, b in padding)
