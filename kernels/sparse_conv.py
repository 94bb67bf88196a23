"""Pallas GPU kernel for direct sparse convolution (Escort; Chen, 2018).

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

Strides are removed beforehand by `fastnets.ops.sparse_conv.stride_one_problem` (space-to-depth
into `s_h s_w` phases), so all windows are contiguous along W; the input is padded so that every
gather is in bounds and the kernel needs no masks.

Backend: Triton (`jax.experimental.pallas.triton.CompilerParams`), not Mosaic GPU. The kernel is a
gather: at every slot each output channel reads a window at a data-dependent offset. Triton
lowers such pointer-array loads (`x_ref[idx]` with an integer array index) and a `fori_loop` with a
dynamic bound and a carried register tile; Mosaic GPU in jax 0.10 needs warpgroup-sized,
128-byte-aligned copies through shared memory and rejects the data-dependent gather and the
loop's carried layouts (see ../shared/design/KERNELS.md). The Triton backend is deprecated from
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
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from fastnets.ops import sparse_conv as _ops

__all__ = [
  "SparseConvConfig",
  "default_config",
  "sparse_conv2d_pallas",
]


def _is_pow2(v: int) -> bool:
  return v >= 1 and (v & (v - 1)) == 0


def _next_pow2(v: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(1, v))))


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
      if not isinstance(v, int) or not _is_pow2(v):
        raise ValueError(f"SparseConvConfig.{f} must be a positive power of 2; got {v!r}.")
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(f"SparseConvConfig.num_stages must be a positive int; got {self.num_stages!r}.")

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
  bw = min(32, _next_pow2(wo))
  bo = min(16, _next_pow2(out_channels))
  bh = min(_next_pow2(ho), max(1, 2048 // (bw * bo)))
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
  w = _ops.SparseKernel(values, rows, cols, chans, nnz, kernel_shape)
  out_dtype = jnp.result_type(x.dtype, values.dtype)
  xq, rq, cq_, chq, (ho, wo), (khq, kwq) = _ops.stride_one_problem(x, w, strides, padding)
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
      f"x is too large for the kernel's int32 offsets ({n} x {plane} padded elements); split the batch.")
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _sparse_conv_vjp(x, values, rows, cols, chans, nnz, bias, static):
  return _forward(x, values, rows, cols, chans, nnz, bias, static)


def _fwd(x, values, rows, cols, chans, nnz, bias, static):
  out = _forward(x, values, rows, cols, chans, nnz, bias, static)
  return out, (x, values, rows, cols, chans, nnz, bias)


def _bwd(static, res, g):
  x, values, rows, cols, chans, nnz, bias = res
  kernel_shape, strides, padding, relu, _, _ = static

  def ref(x, values, bias):
    w = _ops.SparseKernel(values, rows, cols, chans, nnz, kernel_shape)
    return _ops.sparse_conv2d_reference(x, w, strides, padding, bias, relu)

  _, vjp = jax.vjp(ref, x, values, bias)
  gx, gv, gb = vjp(g)
  return gx, gv, None, None, None, None, gb


_sparse_conv_vjp.defvjp(_fwd, _bwd)


# Jitted so that eager calls compile once per shape and configuration.
_sparse_conv_jit = jax.jit(_sparse_conv_vjp, static_argnums=(7,))


def sparse_conv2d_pallas(
  x: jax.Array,
  w: _ops.SparseKernel,
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
  _ops._check_inputs(x, w, bias, "NHWC", (1, 1))
  if config is not None and not isinstance(config, SparseConvConfig):
    raise TypeError(f"config must be a SparseConvConfig or None; got {type(config).__name__}.")
  strides = _ops._pair(strides, "strides")
  _ops.conv_output_geometry(x.shape[1:3], w.kernel_shape[:2], strides, padding)  # validates
  static = (w.kernel_shape, strides, _ops.hashable_padding(padding), bool(relu), config, bool(interpret))
  return _sparse_conv_jit(x, w.values, w.rows, w.cols, w.chans, w.nnz, bias, static)
