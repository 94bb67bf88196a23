"""Direct sparse convolution for pruned CNNs (Escort; Chen, 2018).

Escort computes a convolution with an unstructured-sparse (pruned) kernel *directly*: for each
output channel it walks that channel's nonzero weights and, for each nonzero, accumulates the
input window that the weight touches, shifted by the weight's kernel position, times the weight:

  out[n, y, x, o] = sum_{k < nnz(o)} v[o, k] * xpad[n, s_h y + r[o, k], s_w x + c[o, k], i[o, k]]

(Escort, Sec. 3, the direct sparse convolution; the dense form is the usual
`sum_{r, c, i} w[r, c, i, o] xpad[...]`). No im2col matrix is built, and the work is proportional
to the number of nonzeros instead of the dense kernel size.

This module holds

* `SparseKernel`, the weight format: per output channel the nonzero values and their
  (kernel row, kernel column, input channel) coordinates, padded to the largest per-channel count
  (a CSR row per output channel with a fixed row length). `to_sparse_kernel` builds it from a dense
  HWIO kernel and `to_dense` inverts it exactly.
* `sparse_conv2d`, the op: NHWC input, optional fused bias and ReLU, `impl="auto"|"xla"|"pallas"`.
  The XLA path (`sparse_conv2d_reference`) is pure JAX and is the CPU path and the oracle of the
  Pallas kernel in `fastnets.kernels.sparse_conv`.
* `stride_one_problem`, shared by both paths: any stride is reduced to stride 1 by splitting the
  padded input into its `s_h * s_w` phases (space-to-depth) and remapping the nonzeros'
  coordinates, so that every nonzero reads a *contiguous* shifted window.
* `conv_flops`, dense and nonzero FLOP counts of a convolution.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "SparseKernel",
  "conv_flops",
  "conv_output_geometry",
  "sparse_conv2d",
  "sparse_conv2d_reference",
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


# ------------------------------------------------------------------------------------------------
# Geometry shared by the XLA path and the Pallas kernel.


def _pair(v, name: str) -> tuple[int, int]:
  if isinstance(v, int | np.integer):
    v = (int(v), int(v))
  try:
    a, b = (int(u) for u in v)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an int or a pair of ints; got {v!r}.") from None
  if a < 1 or b < 1:
    raise ValueError(f"{name} must be positive; got {v!r}.")
  return a, b


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
  sh, sw = _pair(strides, "strides")
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
        f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)); got {padding!r}.")
  elif isinstance(padding, int | np.integer):
    pads = ((int(padding),) * 2,) * 2
  else:
    try:
      pads = tuple((int(a), int(b)) for a, b in padding)
    except (TypeError, ValueError):
      pads = None
    if pads is None or len(pads) != 2:
      raise ValueError(
        f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)); got {padding!r}.")
  if min(min(p) for p in pads) < 0:
    raise ValueError(f"padding must be non-negative; got {padding!r}.")
  ho = (h + sum(pads[0]) - kh) // sh + 1
  wo = (w + sum(pads[1]) - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(
      f"the {kh}x{kw} kernel does not fit the {h}x{w} input with padding {padding!r}: empty output.")
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
  sh, sw = _pair(strides, "strides")
  kh, kw, ci, _ = w.kernel_shape
  n, h, wd, c = x.shape
  pads, (ho, wo) = conv_output_geometry((h, wd), (kh, kw), (sh, sw), padding)
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


def _check_inputs(x, w, bias, data_format, dilation):
  if data_format != "NHWC":
    raise ValueError(f"data_format must be 'NHWC'; got {data_format!r}.")
  if tuple(_pair(dilation, "dilation")) != (1, 1):
    raise ValueError(f"dilation must be (1, 1) (dilated sparse convolution is unsupported); got {dilation!r}.")
  if not isinstance(w, SparseKernel):
    shape = getattr(w, "shape", None)
    raise TypeError(
      f"w must be a SparseKernel (build one with to_sparse_kernel(dense_kernel)); got "
      f"{type(w).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}.")
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
    raise ValueError(f"bias must have shape ({co},) (one per output channel); got {tuple(bias.shape)}.")


def _heuristic_row_tile(ho, wo, n, cq, o, khq, itemsize=4):
  """Output rows per tile of the XLA path: keeps a tile's input and output near 1 MiB (L2).

  The tile is then shrunk to split Ho evenly (ceil(Ho / n_tiles) rows), so that the last tile
  computes few padding rows.
  """
  per_row = max(1, wo * n * itemsize) * max(cq, o)
  tile = int(max(1, min(64, (1 << 20) // per_row)))
  tiles = -(-ho // tile)
  return -(-ho // tiles)


def sparse_conv2d_reference(
  x: jax.Array,
  w: SparseKernel,
  strides=(1, 1),
  padding: Padding = "SAME",
  bias: jax.Array | None = None,
  relu: bool = False,
  *,
  row_tile: int | None = None,
  slot_group: int = 16,
) -> jax.Array:
  """Pure-JAX direct sparse convolution (the XLA / CPU path and the kernel's oracle).

  No im2col. The output is computed in tiles of `row_tile` output rows (a sequential `lax.map`;
  a tile's input rows, all channels, stay in cache) and, within a tile, one output channel at a
  time: a loop over the channel's *own* number of nonzeros, `slot_group` at a time, sums
  `v[o, k] * xq[i[o, k], y + r[o, k], x + c[o, k]]` over contiguous shifted windows
  (`lax.dynamic_slice` with scalar offsets, which XLA fuses with the multiply-adds into one loop
  per group: no gather, one write of the partial sum per group) and writes the channel once
  (Escort's direct sparse convolution, Sec. 3). The trip count of the inner loop is `ceil(nnz[o] / slot_group)`, so
  channels with fewer nonzeros than the padded `max_nnz` do not pay for the padding. Work is
  O(N Ho Wo sum_o nnz[o]) plus less than `slot_group` padding slots per channel and tile.

  Differentiable with respect to `x`, `w.values` and `bias` (reverse mode) through a
  `jax.custom_vjp`: the forward pass above has data-dependent loop bounds, which reverse-mode
  autodiff cannot go through, so the backward pass differentiates an equivalent formulation with
  static loop bounds (`_gather_forward`: every slot of every channel at once, gathered windows;
  padding slots get zero gradient). Saved for the backward pass: the inputs `x`, `w` and `bias`
  only; the backward pass recomputes the static formulation's forward pass inside its `jax.vjp`.
  Forward-mode differentiation (`jax.jvp`) is not supported. Accumulates in float32 (or wider),
  returns `result_type(x, w.values)`.

  Args:
    x: (N, H, W, I) float input (NHWC).
    w: `SparseKernel` with `kernel_shape` (KH, KW, I, O).
    strides: int or (s_h, s_w).
    padding: "SAME", "VALID", int or ((top, bottom), (left, right)).
    bias: optional (O,) bias, added before the optional ReLU.
    relu: apply max(., 0) at the end.
    row_tile: output rows per tile (default: a heuristic that targets ~1 MiB per tile and splits
      the output rows evenly).
    slot_group: nonzeros summed per inner-loop iteration (one fused XLA loop).

  Returns:
    (N, Ho, Wo, O) output, equal to `lax.conv_general_dilated(x, to_dense(w), ...)`.
  """
  _check_inputs(x, w, bias, "NHWC", (1, 1))
  strides = _pair(strides, "strides")
  conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)  # validates
  if int(slot_group) < 1:
    raise ValueError(f"slot_group must be a positive int; got {slot_group!r}.")
  if row_tile is not None and int(row_tile) < 1:
    raise ValueError(f"row_tile must be a positive int or None; got {row_tile!r}.")
  return _reference_jit(x, w, bias, strides=strides, padding=hashable_padding(padding),
                        relu=bool(relu), row_tile=None if row_tile is None else int(row_tile),
                        slot_group=int(slot_group))


def hashable_padding(padding: Padding):
  """`padding` in a hashable form (for static arguments of jit)."""
  if isinstance(padding, str):
    return padding.upper()
  if isinstance(padding, int | np.integer):
    return int(padding)
  return tuple((int(a), int(b)) for a, b in padding)


# Jitted so that eager calls (notebooks, sparse inference outside jit) compile once per shape.
@functools.partial(jax.jit, static_argnames=("strides", "padding", "relu", "row_tile", "slot_group"))
def _reference_jit(x, w, bias, *, strides, padding, relu, row_tile, slot_group):
  return _direct(x, w, bias, (strides, padding, relu, row_tile, slot_group))


def _tiled_input(x, w, strides, padding, row_tile):
  """The stride-1 problem with its input cut into overlapping row tiles, channel-major.

  Returns:
    (xtiles, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype): xtiles (n_tiles, Cq,
    tile + KHq - 1, Wq, N) in the accumulation dtype (batch minor: a window row of Wo * N
    elements is contiguous).
  """
  out_dtype = jnp.result_type(x.dtype, w.values.dtype)
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
  xq, rows, cols, chans, (ho, wo), (khq, _) = stride_one_problem(x, w, strides, padding)
  n, hq, _, cq = xq.shape
  co = w.values.shape[0]
  tile = row_tile or _heuristic_row_tile(ho, wo, n, cq, co, khq)
  tile = max(1, min(int(tile), ho))
  n_tiles = -(-ho // tile)
  xt = xq.astype(acc_dtype).transpose(3, 1, 2, 0)  # (Cq, Hq, Wq, N)
  need = n_tiles * tile + khq - 1
  xt = jnp.pad(xt, ((0, 0), (0, need - hq), (0, 0), (0, 0)))
  tile_rows = (jnp.arange(n_tiles) * tile)[:, None] + jnp.arange(tile + khq - 1)[None, :]
  xtiles = jnp.moveaxis(xt[:, tile_rows], 1, 0)  # (n_tiles, Cq, T + KHq - 1, Wq, N)
  return xtiles, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype


def _finish(acc, bias, relu, n, n_tiles, tile, wo, co, ho, acc_dtype, out_dtype):
  """(n_tiles, O, T, Wo, N) accumulators -> (N, Ho, Wo, O) output with bias and ReLU."""
  out = acc.transpose(4, 0, 2, 3, 1).reshape(n, n_tiles * tile, wo, co)[:, :ho]
  if bias is not None:
    out = out + bias.astype(acc_dtype)
  if relu:
    out = jnp.maximum(out, 0)
  return out.astype(out_dtype)


def _direct_forward(x, w, bias, strides, padding, relu, row_tile, slot_group):
  """The fast forward pass: per tile, per output channel, a loop over its own nonzeros."""
  out_dtype = jnp.result_type(x.dtype, w.values.dtype)
  xtiles, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype = _tiled_input(
    x, w, strides, padding, row_tile)
  n = x.shape[0]
  co, k = w.values.shape
  g = max(1, min(int(slot_group), k))
  kp = -(-k // g) * g
  padk = lambda a: jnp.pad(a, ((0, 0), (0, kp - k)))
  vals = padk(jnp.where(w.valid, w.values, 0).astype(acc_dtype))
  rows, cols, chans = (padk(a).astype(jnp.int32) for a in (rows, cols, chans))
  trips = (w.nnz.astype(jnp.int32) + g - 1) // g  # per output channel

  def one_tile(xb):
    def channel(o, acc):
      def group(j, a):
        for u in range(g):
          kk = j * g + u
          win = lax.dynamic_slice(xb, (chans[o, kk], rows[o, kk], cols[o, kk], jnp.int32(0)),
                                  (1, tile, wo, n))
          a = a + vals[o, kk] * win[0]
        return a
      out_o = lax.fori_loop(0, trips[o], group, jnp.zeros((tile, wo, n), acc_dtype))
      return lax.dynamic_update_slice(acc, out_o[None], (o, 0, 0, 0))
    return lax.fori_loop(0, co, channel, jnp.zeros((co, tile, wo, n), acc_dtype))

  acc = lax.map(one_tile, xtiles)  # (n_tiles, O, T, Wo, N)
  return _finish(acc, bias, relu, n, n_tiles, tile, wo, co, ho, acc_dtype, out_dtype)


def _gather_forward(x, w, bias, strides, padding, relu, row_tile, slot_group):
  """The same convolution with static loop bounds (reverse-differentiable; the backward pass).

  For each slot k (the k-th nonzero of every output channel at once) one gather reads the O
  shifted windows and accumulates them times `v[o, k]`; `slot_group` slots per loop iteration.
  """
  out_dtype = jnp.result_type(x.dtype, w.values.dtype)
  xtiles, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype = _tiled_input(
    x, w, strides, padding, row_tile)
  n = x.shape[0]
  co, k = w.values.shape
  g = max(1, min(int(slot_group), k))
  kp = -(-k // g) * g
  padk = lambda a: jnp.pad(a, ((0, 0), (0, kp - k)))
  vals = padk(jnp.where(w.valid, w.values, 0).astype(acc_dtype))
  rows, cols, chans = (padk(a).astype(jnp.int32) for a in (rows, cols, chans))

  def window(xb, ch, r, c):
    return lax.dynamic_slice(xb, (ch, r, c, jnp.zeros((), jnp.int32)), (1, tile, wo, n))[0]

  def one_tile(xb):
    def body(j, acc):
      for u in range(g):
        kk = j * g + u
        win = jax.vmap(window, in_axes=(None, 0, 0, 0))(xb, chans[:, kk], rows[:, kk], cols[:, kk])
        acc = acc + vals[:, kk, None, None, None] * win
      return acc
    return lax.fori_loop(0, kp // g, body, jnp.zeros((co, tile, wo, n), acc_dtype))

  acc = lax.map(one_tile, xtiles)  # (n_tiles, O, T, Wo, N)
  return _finish(acc, bias, relu, n, n_tiles, tile, wo, co, ho, acc_dtype, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _direct(x, w, bias, static):
  return _direct_forward(x, w, bias, *static)


def _direct_fwd(x, w, bias, static):
  return _direct_forward(x, w, bias, *static), (x, w, bias)


def _direct_bwd(static, res, ct):
  x, w, bias = res
  return _gather_vjp(static, x, w, bias, ct)


@functools.partial(jax.jit, static_argnums=(0,))  # eager backward passes compile once, too
def _gather_vjp(static, x, w, bias, ct):
  _, vjp = jax.vjp(lambda x, w, b: _gather_forward(x, w, b, *static), x, w, bias)
  return vjp(ct)


_direct.defvjp(_direct_fwd, _direct_bwd)


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
      (`fastnets.kernels.sparse_conv.sparse_conv2d_pallas`; on CPU only with `interpret=True`).
    config: `fastnets.kernels.sparse_conv.SparseConvConfig` tile sizes for the Pallas kernel
      (default: its heuristic; see `fastnets.kernels.autotune` to search for the best).
    interpret: run the Pallas kernel in the Pallas interpreter (CPU testing).
    data_format: only "NHWC".
    dilation: only (1, 1).

  Returns:
    (N, Ho, Wo, O) array of dtype `result_type(x, w.values)`.

  Raises:
    TypeError: `w` is not a SparseKernel (e.g. a dense kernel) or `x` is not float.
    ValueError: channel mismatch, bad strides/padding/bias, unsupported layout or dilation, or
      unknown `impl`.
  """
  _check_inputs(x, w, bias, data_format, dilation)
  if impl not in ("auto", "xla", "pallas"):
    raise ValueError(f"impl must be 'auto', 'xla' or 'pallas'; got {impl!r}.")
  if impl == "auto":
    impl = "pallas" if jax.default_backend() == "gpu" else "xla"
  if impl == "xla":
    return sparse_conv2d_reference(x, w, strides, padding, bias, relu)
  from fastnets.kernels import sparse_conv as _kernel  # lazy: kernels import this module
  return _kernel.sparse_conv2d_pallas(
    x, w, strides, padding, bias, relu, config=config, interpret=interpret)


def conv_flops(x_shape, kernel_shape, strides=(1, 1), padding: Padding = "SAME",
               nonzeros: int | None = None) -> int:
  """Multiply-add FLOPs (2 per MAC) of a convolution; with `nonzeros`, of the sparse one.

  From shapes alone. To count every convolution a traced function (a model's forward or training
  step) executes, use `fastnets.ops.conv_flops_of`.

  Args:
    x_shape: (N, H, W, I).
    kernel_shape: (KH, KW, I, O).
    strides, padding: as in `sparse_conv2d`.
    nonzeros: number of nonzero weights (default: dense, KH KW I O).

  Returns:
    2 * N * Ho * Wo * (nonzeros or KH KW I O).
  """
  n, h, w, _ = x_shape
  kh, kw, ci, co = kernel_shape
  _, (ho, wo) = conv_output_geometry((h, w), (kh, kw), strides, padding)
  nz = kh * kw * ci * co if nonzeros is None else int(nonzeros)
  return 2 * n * ho * wo * nz
