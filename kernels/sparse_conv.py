"""Direct sparse convolution (Escort; Chen, 2018): the pure-JAX reference and the Pallas kernel.

This module holds the reference `sparse_conv2d_reference` (pure JAX, the CPU path of
`fastnets.ops.sparse_conv2d` and the tests' oracle, with its own custom VJP), the Pallas kernel
`sparse_conv2d_pallas` and the kernel's custom VJP. It imports only the leaf modules
`fastnets.sparse_format` (the weight format and the convolution geometry) and `fastnets.checks`.

Escort's GPU kernel gives each thread block a tile of the output and has it walk the nonzero
weights of its output channels, accumulating the shifted input window that each nonzero touches
(no im2col, no sparse-matrix library). This kernel does the same in Pallas:

* program (n, i, j, t) computes the output tile `out[n, i BH : (i+1) BH, j BW : (j+1) BW,
  t BO : (t+1) BO]` in registers (a (BH, BW, BO) float32 accumulator, float64 for float64 input);
* it loops over slot k = 0 .. nnz_tile - 1, where nnz_tile is the largest nonzero count among its
  BO output channels (a dynamic trip count: sparse tiles finish early);
* at slot k it loads the BO flat offsets and values of the k-th nonzero of its channels (two
  contiguous vector loads from (K, O) tables), and gathers the BO shifted (BH, BW) windows of the
  channel-first input at `n C H W + off[k, o] + (y0 + a) W + (x0 + b)`, then accumulates
  `window * value`;
* bias and ReLU are fused before the single store of the tile.

Strides are removed beforehand by `fastnets.sparse_format.stride_one_problem` (space-to-depth
into `s_h s_w` phases), so all windows are contiguous along W; the input is padded so that every
gather is in bounds and the kernel needs no masks.

Backend: Triton (`jax.experimental.pallas.triton.CompilerParams`), not Mosaic GPU. The kernel is a
gather: at every slot each output channel reads a window at a data-dependent offset. Triton
lowers such pointer-array loads (`x_ref[idx]` with an integer array index) and a `fori_loop` with a
dynamic bound and a carried register tile; Mosaic GPU in jax 0.10 needs warpgroup-sized,
128-byte-aligned copies through shared memory and rejects the data-dependent gather and the
loop's carried layouts (see docs/KERNELS.md). The Triton backend is deprecated from
jax 0.11; when it goes, this kernel needs a Mosaic GPU port that stages input tiles (with halo)
in shared memory and reads windows from there. The test suite lowers the kernel for CUDA from the
CPU and checks for the Triton custom call.

Differentiation: `sparse_conv2d_pallas` is a `jax.custom_vjp` whose forward is the kernel and
whose backward differentiates the pure-JAX reference (`sparse_conv2d_reference`). Saved: the
input `x`, the sparse kernel's arrays and the bias (the primal inputs, nothing else); recomputed:
the reference forward inside `jax.vjp` (it also recomputes the ReLU mask). Gradients flow to `x`,
`w.values` and `bias`; the integer coordinate arrays get no cotangent.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from fastnets.checks import is_power_of_two, next_power_of_two, pair
from fastnets.kernels import native
from fastnets.sparse_format import (
  Padding,
  SparseKernel,
  check_conv_inputs,
  conv_output_geometry,
  hashable_padding,
  stride_one_problem,
)

__all__ = [
  "SparseConvConfig",
  "default_config",
  "native_tile_plan",
  "sparse_conv2d_native",
  "sparse_conv2d_pallas",
  "sparse_conv2d_reference",
]


# --------------------------------------------------------------------------------------------------
# The pure-JAX reference (the XLA / CPU path).


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
  (Escort's direct sparse convolution, Sec. 3). The trip count of the inner loop is
  `ceil(nnz[o] / slot_group)`, so channels with fewer nonzeros than the padded `max_nnz` do not
  pay for the padding. Work is
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
  check_conv_inputs(x, w, bias)
  strides = pair(strides, "strides")
  conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)  # validates
  if int(slot_group) < 1:
    raise ValueError(f"slot_group must be a positive int; got {slot_group!r}.")
  if row_tile is not None and int(row_tile) < 1:
    raise ValueError(f"row_tile must be a positive int or None; got {row_tile!r}.")
  return _reference_jit(x, w, bias, strides=strides, padding=hashable_padding(padding),
                        relu=bool(relu), row_tile=None if row_tile is None else int(row_tile),
                        slot_group=int(slot_group))


# Jitted so that eager calls (notebooks, sparse inference outside jit) compile once per shape.
@functools.partial(jax.jit,
                   static_argnames=("strides", "padding", "relu", "row_tile", "slot_group"))
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


def _slot_groups(x, w, strides, padding, row_tile, slot_group):
  """What both forward passes share: the tiled input, and each output channel's nonzero slots
  (values, rows, cols, channels) padded to a multiple of the slot group `g` (padded slots have
  value 0, so they add nothing)."""
  xtiles, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype = _tiled_input(
    x, w, strides, padding, row_tile)
  co, k = w.values.shape
  g = max(1, min(int(slot_group), k))
  kp = -(-k // g) * g
  padk = lambda a: jnp.pad(a, ((0, 0), (0, kp - k)))
  vals = padk(jnp.where(w.valid, w.values, 0).astype(acc_dtype))
  rows, cols, chans = (padk(a).astype(jnp.int32) for a in (rows, cols, chans))
  return xtiles, vals, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype, co, g, kp


def _direct_forward(x, w, bias, strides, padding, relu, row_tile, slot_group):
  """The fast forward pass: per tile, per output channel, a loop over its own nonzeros."""
  out_dtype = jnp.result_type(x.dtype, w.values.dtype)
  n = x.shape[0]
  (xtiles, vals, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype, co, g,
   kp) = _slot_groups(x, w, strides, padding, row_tile, slot_group)
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
  n = x.shape[0]
  (xtiles, vals, rows, cols, chans, ho, wo, tile, n_tiles, acc_dtype, co, g,
   kp) = _slot_groups(x, w, strides, padding, row_tile, slot_group)

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


# --------------------------------------------------------------------------------------------------
# The Pallas kernel.


@dataclasses.dataclass(frozen=True)
class SparseConvConfig:
  """Tile sizes of the sparse convolution kernel (all powers of 2, as Triton requires).

  Attributes:
    block_h: output rows per program (BH).
    block_w: output columns per program (BW).
    block_o: output channels per program (BO).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """

  block_h: int = 4
  block_w: int = 16
  block_o: int = 16
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    for f in ("block_h", "block_w", "block_o", "num_warps"):
      v = getattr(self, f)
      if not isinstance(v, int) or not is_power_of_two(v):
        raise ValueError(f"SparseConvConfig.{f} must be a positive power of 2; got {v!r}.")
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(
        f"SparseConvConfig.num_stages must be a positive int; got {self.num_stages!r}.")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "SparseConvConfig":
    return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls) if f.name in d})


def default_config(out_hw: tuple[int, int], out_channels: int) -> SparseConvConfig:
  """Heuristic tile sizes: about 2048 float32 accumulators per program (16 per thread at 4 warps).

  BW covers the output width up to 32 (coalesced rows), BO up to 16 channels, BH fills the rest.
  """
  ho, wo = out_hw
  bw = min(32, next_power_of_two(wo))
  bo = min(16, next_power_of_two(out_channels))
  bh = min(next_power_of_two(ho), max(1, 2048 // (bw * bo)))
  return SparseConvConfig(block_h=bh, block_w=bw, block_o=bo, num_warps=4, num_stages=1)


def _kernel(tile_nnz_ref, off_ref, val_ref, x_ref, *rest, cfg: SparseConvConfig, plane: int,
            width: int, has_bias: bool, relu: bool, n_extra: int = 0):
  rest = rest[:len(rest) - 1 - n_extra] + rest[len(rest) - 1:]  # drop the poisoned alias input
  if has_bias:
    bias_ref, o_ref = rest
  else:
    (o_ref,) = rest
  bh, bw, bo = cfg.block_h, cfg.block_w, cfg.block_o
  n = pl.program_id(0)
  i = pl.program_id(1)
  j = pl.program_id(2)
  t = pl.program_id(3)
  o0 = t * bo
  base = n * plane + (i * bh) * width + j * bw
  spatial = (lax.broadcasted_iota(jnp.int32, (bh, bw, 1), 0) * width
             + lax.broadcasted_iota(jnp.int32, (bh, bw, 1), 1))
  nk = tile_nnz_ref[t]
  acc_dtype = jnp.promote_types(o_ref.dtype, jnp.float32)  # float32, or float64 for f64 inputs

  def body(k, acc):
    off = off_ref[k, pl.ds(o0, bo)]
    val = val_ref[k, pl.ds(o0, bo)]
    idx = base + spatial + off[None, None, :]
    win = x_ref[idx]  # gather: BO shifted (BH, BW) windows
    return acc + win.astype(acc_dtype) * val.astype(acc_dtype)[None, None, :]

  acc = lax.fori_loop(0, nk, body, jnp.zeros((bh, bw, bo), acc_dtype))
  if has_bias:
    acc = acc + bias_ref[pl.ds(o0, bo)].astype(acc_dtype)[None, None, :]
  if relu:
    acc = jnp.maximum(acc, 0.0)
  o_ref[0] = acc.astype(o_ref.dtype)


def _forward(x, values, rows, cols, chans, nnz, bias, static, poison: bool = False):
  """The kernel call. `poison=True` (tests) pre-fills the output buffer with NaN through an
  input/output alias, so an output element the kernel fails to write shows up as NaN."""
  kernel_shape, strides, padding, relu, cfg, interpret = static
  w = SparseKernel(values, rows, cols, chans, nnz, kernel_shape)
  out_dtype = jnp.result_type(x.dtype, values.dtype)
  xq, rq, cq_, chq, (ho, wo), (khq, kwq) = stride_one_problem(x, w, strides, padding)
  n, hq, wq, cq = xq.shape
  co, k = values.shape
  if cfg is None:
    cfg = default_config((ho, wo), co)
  bh, bw, bo = cfg.block_h, cfg.block_w, cfg.block_o
  nh, nw, no = -(-ho // bh), -(-wo // bw), -(-co // bo)
  hx, wx, op = nh * bh + khq - 1, nw * bw + kwq - 1, no * bo
  plane = cq * hx * wx
  if n * plane >= 2**31:
    raise ValueError(
      f"x is too large for the kernel's int32 offsets ({n} x {plane} padded elements); "
      "split the batch.")
  xq = jnp.pad(xq, ((0, 0), (0, hx - hq), (0, wx - wq), (0, 0)))
  x_flat = xq.transpose(0, 3, 1, 2).reshape(-1)  # channel-first, flat
  valid = w.valid
  off = jnp.where(valid, chq * (hx * wx) + rq * wx + cq_, 0).astype(jnp.int32)
  vals = jnp.where(valid, values, 0)
  pad_o = ((0, op - co), (0, 0))
  off_t = jnp.pad(off, pad_o).T  # (K, Op): slot-major so a tile's row is contiguous
  val_t = jnp.pad(vals, pad_o).T
  tile_nnz = jnp.pad(nnz, (0, op - co)).reshape(no, bo).max(axis=1).astype(jnp.int32)
  operands = [tile_nnz, off_t, val_t, x_flat]
  if bias is not None:
    operands.append(jnp.pad(bias, (0, op - co)))

  def whole(a):
    return pl.BlockSpec(a.shape, lambda *_, nd=a.ndim: (0,) * nd)

  out_shape = (n, nh * bh, nw * bw, op)
  in_specs = [whole(a) for a in operands]
  aliases = {}
  if poison:
    aliases = {len(operands): 0}
    operands.append(jnp.full(out_shape, jnp.nan, out_dtype))
    in_specs.append(pl.BlockSpec((1, bh, bw, bo), lambda b, i, j, t: (b, i, j, t)))
  kernel = functools.partial(
    _kernel, cfg=cfg, plane=plane, width=wx, has_bias=bias is not None, relu=relu,
    n_extra=1 if poison else 0)
  out = pl.pallas_call(
    kernel,
    grid=(n, nh, nw, no),
    in_specs=in_specs,
    out_specs=pl.BlockSpec((1, bh, bw, bo), lambda b, i, j, t: (b, i, j, t)),
    out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
    input_output_aliases=aliases,
    compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
    interpret=interpret,
    name="escort_sparse_conv2d",
  )(*operands)
  return out[:, :ho, :wo, :co]


def _reference_cotangents(kernel_shape, strides, padding, relu, res, g):
  """The backward pass of the kernels' custom VJPs: the reference's VJP at the saved inputs."""
  x, values, rows, cols, chans, nnz, bias = res

  def ref(x, values, bias):
    w = SparseKernel(values, rows, cols, chans, nnz, kernel_shape)
    return sparse_conv2d_reference(x, w, strides, padding, bias, relu)

  _, vjp = jax.vjp(ref, x, values, bias)
  gx, gv, gb = vjp(g)
  return gx, gv, None, None, None, None, gb


def _with_reference_vjp(forward):
  """`forward(x, values, rows, cols, chans, nnz, bias, static)` as a custom VJP whose backward
  pass is the reference's VJP (`_reference_cotangents`); `static` starts with
  (kernel_shape, strides, padding, relu) and is not differentiated."""

  def fwd(x, values, rows, cols, chans, nnz, bias, static):
    return (forward(x, values, rows, cols, chans, nnz, bias, static),
            (x, values, rows, cols, chans, nnz, bias))

  def bwd(static, res, g):
    kernel_shape, strides, padding, relu = static[:4]
    return _reference_cotangents(kernel_shape, strides, padding, relu, res, g)

  # Exactly these eight arguments: a default argument of `forward` (e.g. `poison`) stays its own.
  def op(x, values, rows, cols, chans, nnz, bias, static):
    return forward(x, values, rows, cols, chans, nnz, bias, static)

  op = jax.custom_vjp(op, nondiff_argnums=(7,))
  op.defvjp(fwd, bwd)
  return op


_sparse_conv_vjp = _with_reference_vjp(_forward)


# Jitted so that eager calls compile once per shape and configuration.
_sparse_conv_jit = jax.jit(_sparse_conv_vjp, static_argnums=(7,))


def sparse_conv2d_pallas(
  x: jax.Array,
  w: SparseKernel,
  strides=(1, 1),
  padding="SAME",
  bias: jax.Array | None = None,
  relu: bool = False,
  *,
  config: SparseConvConfig | None = None,
  interpret: bool = False,
) -> jax.Array:
  """Direct sparse convolution with the Escort-style Pallas (Triton) kernel.

  Same contract as `fastnets.ops.sparse_conv2d` (which calls this for `impl="pallas"`).

  Args:
    x: (N, H, W, I) float input (NHWC).
    w: `SparseKernel` with `kernel_shape` (KH, KW, I, O).
    strides: int or (s_h, s_w).
    padding: "SAME", "VALID", int or ((top, bottom), (left, right)).
    bias: optional (O,) bias, fused.
    relu: fuse a ReLU.
    config: tile sizes (default `default_config`).
    interpret: run in the Pallas interpreter (CPU).

  Returns:
    (N, Ho, Wo, O), dtype `result_type(x, w.values)`; float32 accumulation.

  Raises:
    TypeError, ValueError: as `fastnets.ops.sparse_conv2d`; ValueError for inputs beyond int32
      offsets.
  """
  check_conv_inputs(x, w, bias)
  if config is not None and not isinstance(config, SparseConvConfig):
    raise TypeError(f"config must be a SparseConvConfig or None; got {type(config).__name__}.")
  strides = pair(strides, "strides")
  conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)  # validates
  static = (w.kernel_shape, strides, hashable_padding(padding), bool(relu), config, bool(interpret))
  return _sparse_conv_jit(x, w.values, w.rows, w.cols, w.chans, w.nnz, bias, static)


# --------------------------------------------------------------------------------------------------
# The native CPU kernel (csrc/sparse_conv_cpu.cc, built by fastnets.kernels.native).

_NATIVE_LANES = 8     # float32 lanes of one AVX2 register (the C++ kernel's vector)
_NATIVE_MAX_ACC = 12  # accumulator registers per tile (csrc/sparse_conv_cpu.cc: kMaxAcc)


def native_tile_plan(ho: int, wo: int) -> tuple[int, int, int]:
  """(rows, nv, chunks): the native kernel's register tile for an (Ho, Wo) output.

  A tile is `rows` output rows by `nv` vectors of 8 output columns, `rows * nv <= 12`
  accumulators; a row of Wo columns takes `chunks` tiles of nv vectors (the last one may compute
  padding columns, which are never stored). Narrow outputs take several rows per tile, so that
  each nonzero's value and offset, loaded once, feed more multiply-adds.
  """
  vectors = -(-wo // _NATIVE_LANES)
  chunks = -(-vectors // _NATIVE_MAX_ACC)
  nv = -(-vectors // chunks)
  rows = next(r for r in (8, 4, 2, 1) if r * nv <= _NATIVE_MAX_ACC and (r <= ho or r == 1))
  return rows, nv, chunks


def _native_forward(x, values, rows, cols, chans, nnz, bias, static):
  kernel_shape, strides, padding, relu, parallel = static
  w = SparseKernel(values, rows, cols, chans, nnz, kernel_shape)
  out_dtype = jnp.result_type(x.dtype, values.dtype)
  co = kernel_shape[3]
  xq, r, c, ch, (ho, wo), (_, kwq) = stride_one_problem(x, w, strides, padding)
  n, hq, wq, _ = xq.shape
  tile_rows, nv, chunks = native_tile_plan(ho, wo)
  wp = chunks * nv * _NATIVE_LANES + kwq - 1  # >= Wq: every vector load is in bounds
  # The CPU layout, built in one fused XLA pass: channel-major rows, zero-padded to Wp.
  xt = jnp.pad(xq.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (0, 0), (0, wp - wq)))
  if xt.dtype != jnp.bfloat16:
    xt = xt.astype(jnp.float32)
  off = ((ch * hq + r) * wp + c).astype(jnp.int32)
  val = jnp.where(w.valid, values, 0).astype(jnp.float32)
  b = jnp.zeros((co,), jnp.float32) if bias is None else bias.astype(jnp.float32)
  return native.sparse_conv_ffi(
    xt, off, val, nnz.astype(jnp.int32), b, (n, ho, wo, co), out_dtype, rows=tile_rows, nv=nv,
    chunks=chunks, relu=relu, parallel=parallel)


_native_vjp = _with_reference_vjp(_native_forward)
_native_jit = jax.jit(_native_vjp, static_argnums=(7,))

_NATIVE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def native_takes_dtypes(x, w: SparseKernel, bias=None) -> bool:
  """Whether the native kernel takes these dtypes: x, w.values and bias each float32 or bfloat16,
  and an (input, output) pair `native.sparse_conv_supported` lists. The one dtype rule of both
  `impl="auto"` and `check_native_inputs`."""
  if any(a is not None and jnp.dtype(a.dtype) not in _NATIVE_DTYPES for a in (x, w.values, bias)):
    return False
  return native.sparse_conv_supported(x.dtype, jnp.result_type(x.dtype, w.values.dtype))


def check_native_inputs(x, w: SparseKernel, bias, strides, padding) -> None:
  """Raises (before any native code runs) when the native kernel cannot take this problem.

  On top of `check_conv_inputs` and the geometry checks: x, w.values and bias must be float32 or
  bfloat16 (TypeError naming the argument), the kernel's values finite when concrete (ValueError;
  inside jit they are not visible), and the padded, phase-split input small enough for int32
  offsets.
  """
  check_conv_inputs(x, w, bias)
  strides = pair(strides, "strides")
  conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)  # validates
  if not native_takes_dtypes(x, w, bias):
    named = [(n, a) for n, a in (("x", x), ("w.values", w.values), ("bias", bias)) if a is not None]
    name, a = next(((n, a) for n, a in named if jnp.dtype(a.dtype) not in _NATIVE_DTYPES),
                   named[0])
    raise TypeError(f"sparse_conv2d_native: {name} must be float32 or bfloat16 (the native "
                    f"kernel's dtypes); got {a.dtype}. Use impl='xla' for other dtypes.")
  if not isinstance(w.values, jax.core.Tracer):
    finite = np.isfinite(np.asarray(w.values, np.float32))
    if not finite.all():
      raise ValueError(f"w.values holds {int((~finite).sum())} non-finite value(s) (NaN or inf); "
                       "the sparse kernel must be finite.")
  _, (ho, wo) = conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)
  sh, sw = (1 if ho == 1 else strides[0]), (1 if wo == 1 else strides[1])
  _, nv, chunks = native_tile_plan(ho, wo)
  kh, kw = w.kernel_shape[:2]
  plane = (x.shape[3] * sh * sw * (ho + (kh - 1) // sh) *
           (chunks * nv * _NATIVE_LANES + (kw - 1) // sw))
  if plane >= 2**31:
    raise ValueError(f"x is too large for the native kernel's int32 offsets ({plane} elements per "
                     "image after padding); use impl='xla'.")


def sparse_conv2d_native(
  x: jax.Array,
  w: SparseKernel,
  strides=(1, 1),
  padding: Padding = "SAME",
  bias: jax.Array | None = None,
  relu: bool = False,
  *,
  parallel: bool = True,
) -> jax.Array:
  """Direct sparse convolution with the native C++ CPU kernel (`csrc/sparse_conv_cpu.cc`).

  Same contract as `fastnets.ops.sparse_conv2d` (which calls this for `impl="native"`): SkimCaffe's
  direct sparse convolution (Park et al. 2017) vectorised over the output width and blocked over
  output channels, bias and ReLU fused, float32 accumulation. Strides are removed by
  `stride_one_problem` and the input is put in the kernel's layout (channel-major rows padded to
  whole vectors) in one XLA pass per call; the sparse kernel's offsets are computed from its
  coordinates per call (O x K integers, negligible next to the convolution).

  Differentiable in `x`, `w.values` and `bias` (reverse mode) through a custom VJP whose backward
  pass is the reference's (`sparse_conv2d_reference`); saved: the primal inputs.

  Args:
    x: (N, H, W, I) float32 or bfloat16 input (NHWC), on the CPU.
    w: `SparseKernel`, values float32 or bfloat16, `kernel_shape` (KH, KW, I, O).
    strides, padding, bias, relu: as `fastnets.ops.sparse_conv2d`.
    parallel: spread tiles of output rows over XLA's intra-op thread pool; False runs on one
      thread (bitwise the same result).

  Returns:
    (N, Ho, Wo, O) of dtype `result_type(x, w.values)`.

  Raises:
    fastnets.kernels.native.NativeBuildError: the native kernels are unavailable.
    TypeError, ValueError: as `check_native_inputs`, before any native code runs.
  """
  check_native_inputs(x, w, bias, strides, padding)
  native.library_path()  # raises NativeBuildError with the reason
  strides = pair(strides, "strides")
  if x.shape[0] == 0:  # an empty batch calls no kernel
    return sparse_conv2d_reference(x, w, strides, padding, bias, relu)
  static = (w.kernel_shape, strides, hashable_padding(padding), bool(relu), bool(parallel))
  return _native_jit(x, w.values, w.rows, w.cols, w.chans, w.nnz, bias, static)
