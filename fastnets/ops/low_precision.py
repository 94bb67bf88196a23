"""Low-precision training: chunk-based accumulation, quantised matmul/conv, optimizer wrapper.

Papers:
  * Wang, Choi, Brand, Chen, Gopalakrishnan, "Training Deep Neural Networks with 8-bit Floating
    Point Numbers", NeurIPS 2018: FP8 GEMM operands, chunk-based accumulation in FP16 (1-6-9,
    chunk length 64; their Sec. 3.2, Fig. 2), stochastic rounding in the weight update (Sec. 3.3).
  * Gupta, Agrawal, Gopalakrishnan, Narayanan, "Deep Learning with Limited Numerical Precision",
    ICML 2015: fixed-point weights, activations and gradients; stochastic rounding of updates.

Contents:
  * `chunked_dot`, `chunked_dot_general`, `chunked_conv_general_dilated`: exact simulations of a
    matmul / convolution whose accumulation runs in a low-precision format.
  * `QuantConfig`, `quantized_dot_general`, `quantized_conv_general_dilated`: drop-in replacements
    for `lax.dot_general` / `lax.conv_general_dilated` (Flax `nn.Dense(dot_general=...)`,
    `nn.Conv(conv_general_dilated=...)`; `fastnets.nn.quantized` applies them to a whole model).
  * `round_to_format`, `low_precision_updates`, `apply_updates_low_precision`: optax pieces that
    keep the weights in a low-precision format, rounding each update (stochastically by default).
  * `scale_grad`: the identity whose backward pass multiplies the cotangent (loss scaling).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fastnets.checks import check_choice, check_key
from fastnets.ops.number_formats import (
  RNG_SOURCES,
  ROUNDING_MODES,
  FixedPoint,
  FloatFormat,
  Format,
  FormatSpec,
)
from fastnets.ops.quantization import leaf_format, quantize, quantize_grad
from fastnets.ops.rounding import round_bits, round_with_mode

__all__ = [
    "chunked_dot", "chunked_dot_general", "chunked_conv_general_dilated", "QuantConfig",
    "quantized_dot_general", "quantized_conv_general_dilated", "RoundToFormatState",
    "round_to_format", "low_precision_updates", "apply_updates_low_precision", "scale_grad",
]


# ---------------------------------------------------------------------------------------------
# Chunk-based accumulation (Wang et al. 2018, Sec. 3.2).


def _check_acc(acc_fmt: Any, chunk: Any, fn: str) -> None:
  if acc_fmt is not None and not isinstance(acc_fmt, (FixedPoint, FloatFormat)):
    raise TypeError(f"{fn}: acc_fmt must be a FloatFormat, FixedPoint or None, got {acc_fmt!r}.")
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer))
                            or chunk < 1):
    raise ValueError(f"{fn}: chunk must be a positive int or None (one chunk), got {chunk!r}.")


def _compute_dtype(*arrays: jax.Array):
  return jnp.float64 if any(a.dtype == jnp.float64 for a in arrays) else jnp.float32


def _chunked_matmul_impl(a: jax.Array, b: jax.Array, acc_fmt: Format,
                         chunk: int | None) -> jax.Array:
  """(M, K) @ (K, N) with every product and every addition rounded to acc_fmt (nearest-even)."""
  m, k = a.shape
  n = b.shape[1]
  cdt = _compute_dtype(a, b)
  a, b = a.astype(cdt), b.astype(cdt)
  c = k if chunk is None else min(chunk, k)
  c = max(c, 1)
  nc = max(-(-k // c), 1)
  pad = nc * c - k
  if pad:
    a = jnp.pad(a, ((0, 0), (0, pad)))
    b = jnp.pad(b, ((0, pad), (0, 0)))
  a3 = a.reshape(m, nc, c).transpose(2, 0, 1)  # (c, M, nc): step j holds element j of every chunk
  b3 = b.reshape(nc, c, n).transpose(1, 0, 2)  # (c, nc, N)
  rnd = functools.partial(round_bits, fmt=acc_fmt, rbits=None)

  def within_chunk(s, ab):
    ak, bk = ab
    p = rnd(ak[:, :, None] * bk[None, :, :])  # products rounded to the accumulator format
    return rnd(s + p), None  # one rounded addition per element, in order

  partial_sums, _ = lax.scan(within_chunk, jnp.zeros((m, nc, n), cdt), (a3, b3))
  if nc == 1:
    return partial_sums[:, 0, :]

  def across_chunks(total, s):
    return rnd(total + s), None

  total, _ = lax.scan(across_chunks, jnp.zeros((m, n), cdt), partial_sums.transpose(1, 0, 2))
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _chunked_matmul(a, b, acc_fmt, chunk):
  return _chunked_matmul_impl(a, b, acc_fmt, chunk)


def _chunked_matmul_fwd(a, b, acc_fmt, chunk):
  return _chunked_matmul_impl(a, b, acc_fmt, chunk), (a, b)


def _chunked_matmul_bwd(acc_fmt, chunk, res, g):
  a, b = res
  da = _chunked_matmul_impl(g, b.T, acc_fmt, chunk)
  db = _chunked_matmul_impl(a.T, g, acc_fmt, chunk)
  return da.astype(a.dtype), db.astype(b.dtype)


_chunked_matmul.defvjp(_chunked_matmul_fwd, _chunked_matmul_bwd)
_chunked_matmul = jax.jit(_chunked_matmul, static_argnums=(2, 3))  # compiled once per shape


def _check_float(x: jax.Array, name: str, fn: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64):
    raise TypeError(f"{fn}: {name} must be a float32, bfloat16, float16 or float64 array, got "
                    f"{x.dtype}.")
  return x


def chunked_dot(a: jax.Array, b: jax.Array, acc_fmt: Format | None, chunk: int | None = 64
                ) -> jax.Array:
  """Matmul with chunk-based low-precision accumulation (Wang et al. 2018, Sec. 3.2, Fig. 2).

  Simulates hardware whose multiply-accumulate runs in `acc_fmt` (Wang: FP16 1-6-9, chunk 64):
    1. every product a[i, k] * b[k, j] is rounded to acc_fmt (exact for FP8 operands);
    2. the K axis is cut into chunks of `chunk` consecutive terms; within a chunk the products are
       added one at a time in order, s <- round(s + p_k), starting from 0;
    3. the chunk sums are then added one at a time in chunk order, S <- round(S + s_c).
  Rounding is to nearest-even in acc_fmt (with its subnormal/overflow rules). `chunk=None` (or
  chunk >= K) is the naive sequential accumulation whose swamping Wang's chunks avoid.

  The sequential order is kept exactly; the independent accumulators (all output elements and all
  chunks) advance together in a `lax.scan` over the `chunk` positions, then a scan over the chunks.
  Arithmetic runs in float32 (float64 for float64 input) and each result is rounded to acc_fmt: this
  equals correctly rounded acc_fmt arithmetic when the float32 sum/product of two operands is
  exact or when acc_fmt has at most 11 significant bits (double rounding is then innocuous,
  24 >= 2p + 2), which covers FP16 (1-5-10), Wang's 1-6-9 and bfloat16 accumulators on operands
  with at most 12 significant bits (FP8, bfloat16, FP16).

  Cost: K * M * N rounded scalar operations in a 2-level scan (no BLAS); a simulation tool.
  Gradient: a `jax.custom_vjp`; it saves a and b and computes dL/da = g b^T and dL/db = a^T g with
  the same chunked low-precision accumulation (Wang runs all three GEMMs this way). Nothing is
  recomputed.

  Args:
    a: float array of shape (..., K).
    b: float array of shape (K, N).
    acc_fmt: accumulator format (FloatFormat or FixedPoint); None means a plain float matmul.
    chunk: chunk length (Wang: 64), or None for one chunk (naive accumulation).

  Returns:
    Array of shape (..., N), dtype result_type(a, b), every value representable in acc_fmt
    (before the final cast to that dtype).

  Raises:
    ValueError: shapes do not contract or bad chunk. TypeError: non-float input or bad acc_fmt.
  """
  a = _check_float(a, "a", "chunked_dot")
  b = _check_float(b, "b", "chunked_dot")
  _check_acc(acc_fmt, chunk, "chunked_dot")
  if a.ndim < 1 or b.ndim != 2 or a.shape[-1] != b.shape[0]:
    raise ValueError(f"chunked_dot: expected a of shape (..., K) and b of shape (K, N), got "
                     f"{a.shape} and {b.shape}.")
  out_dtype = jnp.result_type(a, b)
  if acc_fmt is None:
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST).astype(out_dtype)
  lead = a.shape[:-1]
  a2 = a.reshape((-1, a.shape[-1])) if a.ndim != 2 else a
  out = _chunked_matmul(a2, b, acc_fmt, chunk)
  return out.reshape(lead + (b.shape[1],)).astype(out_dtype)


def chunked_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                        preferred_element_type=None, *, acc_fmt: Format | None,
                        chunk: int | None = 64, **unused) -> jax.Array:
  """`lax.dot_general` with chunk-based low-precision accumulation (see `chunked_dot`).

  Same signature and output layout as `lax.dot_general` (batch dims, lhs free dims, rhs free
  dims), so `functools.partial(chunked_dot_general, acc_fmt=FP16_WANG)` can be passed to
  `flax.linen.Dense(dot_general=...)`. `precision` is ignored (the simulation is exact).

  Args:
    lhs, rhs: float arrays.
    dimension_numbers: ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)).
    preferred_element_type: output dtype (default result_type(lhs, rhs)).
    acc_fmt: accumulator format; None = plain `lax.dot_general` at HIGHEST precision.
    chunk: chunk length or None.
  """
  del precision, unused
  lhs = _check_float(lhs, "lhs", "chunked_dot_general")
  rhs = _check_float(rhs, "rhs", "chunked_dot_general")
  _check_acc(acc_fmt, chunk, "chunked_dot_general")
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  if acc_fmt is None:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=lax.Precision.HIGHEST,
                           preferred_element_type=out_dtype)
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, lb, rb = (tuple(int(i) for i in t) for t in (lc, rc, lb, rb))
  if len(lc) != len(rc) or len(lb) != len(rb):
    raise ValueError(f"chunked_dot_general: bad dimension_numbers {dimension_numbers}.")
  lf = tuple(i for i in range(lhs.ndim) if i not in lc + lb)
  rf = tuple(i for i in range(rhs.ndim) if i not in rc + rb)
  shp = lambda x, dims: tuple(x.shape[i] for i in dims)
  if shp(lhs, lc) != shp(rhs, rc) or shp(lhs, lb) != shp(rhs, rb):
    raise ValueError(f"chunked_dot_general: contracting/batch shapes differ: lhs {lhs.shape}, "
                     f"rhs {rhs.shape}, dimension_numbers {dimension_numbers}.")
  nb, nm = math.prod(shp(lhs, lb)), math.prod(shp(lhs, lf))
  nk, nn = math.prod(shp(lhs, lc)), math.prod(shp(rhs, rf))
  l3 = jnp.transpose(lhs, lb + lf + lc).reshape(nb, nm, nk)
  r3 = jnp.transpose(rhs, rb + rc + rf).reshape(nb, nk, nn)
  out = jax.vmap(lambda x, y: _chunked_matmul(x, y, acc_fmt, chunk))(l3, r3)
  out = out.reshape(shp(lhs, lb) + shp(lhs, lf) + shp(rhs, rf))
  return out.astype(out_dtype)


def chunked_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                 padding, lhs_dilation=None, rhs_dilation=None,
                                 dimension_numbers=None, feature_group_count: int = 1,
                                 batch_group_count: int = 1, precision=None,
                                 preferred_element_type=None, *, acc_fmt: Format | None,
                                 chunk: int | None = 64) -> jax.Array:
  """`lax.conv_general_dilated` with chunk-based low-precision accumulation.

  Lowers the convolution to a matmul of image patches (`lax.conv_general_dilated_patches`,
  computed exactly at HIGHEST precision) with the reshaped kernel, contracting over
  in_features * prod(window) in the order (feature, window...), and accumulates it with
  `chunked_dot`. Same signature as `lax.conv_general_dilated`, so
  `functools.partial(chunked_conv_general_dilated, acc_fmt=FP16_WANG)` can be passed to
  `flax.linen.Conv(conv_general_dilated=...)`.

  Raises:
    ValueError: feature_group_count or batch_group_count other than 1 (not supported).
  """
  del precision
  lhs = _check_float(lhs, "lhs", "chunked_conv_general_dilated")
  rhs = _check_float(rhs, "rhs", "chunked_conv_general_dilated")
  _check_acc(acc_fmt, chunk, "chunked_conv_general_dilated")
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  if acc_fmt is None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=lax.Precision.HIGHEST,
        preferred_element_type=out_dtype)
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError("chunked_conv_general_dilated supports feature_group_count=1 and "
                     f"batch_group_count=1 only, got {feature_group_count}, {batch_group_count}.")
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  filter_shape = tuple(rhs.shape[d] for d in dn.rhs_spec[2:])
  patches = lax.conv_general_dilated_patches(
      lhs, filter_shape, window_strides, padding, lhs_dilation, rhs_dilation, dn,
      precision=lax.Precision.HIGHEST)
  order = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
  patches = jnp.transpose(patches, order)  # (batch, spatial..., in_features * prod(window))
  kernel = jnp.transpose(rhs, (dn.rhs_spec[1],) + tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[0],))
  kernel = kernel.reshape(-1, rhs.shape[dn.rhs_spec[0]])
  y = chunked_dot(patches, kernel, acc_fmt, chunk)  # (batch, spatial..., out_features)
  return jnp.transpose(y, tuple(np.argsort(order))).astype(out_dtype)


# ---------------------------------------------------------------------------------------------
# Quantised dot_general / conv for layers.


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """Which tensors of a Dense/Conv layer are rounded to which format (None = kept as is).

  Attributes:
    weights: format of the kernel in the forward pass (straight-through gradient).
    activations: format of the layer input in the forward pass (straight-through gradient).
    gradients: format of the backward-pass tensors: the error gradient arriving at the layer
      output dL/dy, the weight gradient dL/dW and the error gradient leaving dL/dx (each rounded
      by `quantize_grad`). The bias gradient is not rounded here (round the update instead).
    accumulation: accumulator format of the matmul/conv (`chunked_dot`), None for float32.
    chunk: chunk length of the accumulation (Wang: 64), None for naive accumulation.
    mode: rounding of weights and activations, "nearest" or "stochastic".
    grad_mode: rounding of gradients, "nearest" or "stochastic".
    rng: random-bit source for stochastic rounding, "hash" or "jax".

  Examples (Wang et al. 2018, Sec. 4: FP8 operands, FP16 chunked accumulation):
    QuantConfig(weights=FP8_E5M2, activations=FP8_E5M2, gradients=FP8_E5M2,
                accumulation=FP16_WANG, chunk=64)
  Gupta et al. 2015 (16-bit fixed point, stochastic rounding):
    QuantConfig(weights=FixedPoint(2, 14), activations=FixedPoint(6, 10),
                gradients=FixedPoint(2, 14), mode="stochastic", grad_mode="stochastic")
  """
  weights: Format | None = None
  activations: Format | None = None
  gradients: Format | None = None
  accumulation: Format | None = None
  chunk: int | None = 64
  mode: str = "nearest"
  grad_mode: str = "nearest"
  rng: str = "hash"

  def __post_init__(self):
    for name in ("weights", "activations", "gradients", "accumulation"):
      value = getattr(self, name)
      if value is not None and not isinstance(value, (FixedPoint, FloatFormat)):
        raise TypeError(
            f"QuantConfig.{name} must be a FixedPoint, FloatFormat or None, got {value!r}.")
    for name, choices in (("mode", ROUNDING_MODES), ("grad_mode", ROUNDING_MODES),
                          ("rng", RNG_SOURCES)):
      if getattr(self, name) not in choices:
        raise ValueError(
            f"QuantConfig.{name} must be one of {choices}, got {getattr(self, name)!r}.")
    _check_acc(self.accumulation, self.chunk, "QuantConfig")

  @property
  def needs_key(self) -> bool:
    """Whether some tensor is rounded stochastically (a key is then required)."""
    fwd = self.mode == "stochastic" and (self.weights is not None or self.activations is not None)
    return fwd or (self.grad_mode == "stochastic" and self.gradients is not None)


def _config_keys(config: QuantConfig, key: jax.Array | None, fn: str):
  if not isinstance(config, QuantConfig):
    raise TypeError(f"{fn}: config must be a QuantConfig, got {type(config).__name__}.")
  if not config.needs_key:
    return [None] * 5
  key = check_key(key, fn, purpose="stochastic rounding")
  return [jax.random.fold_in(key, i) for i in range(5)]


def _quantize_operands(lhs, rhs, config, keys):
  c = config
  fwd_key = lambda k: k if c.mode == "stochastic" else None
  grad_key = lambda k: k if c.grad_mode == "stochastic" else None
  lhs = quantize(lhs, c.activations, c.mode, key=fwd_key(keys[0]), rng=c.rng)
  lhs = quantize_grad(lhs, c.gradients, c.grad_mode, key=grad_key(keys[1]),
                                  rng=c.rng)
  rhs = quantize(rhs, c.weights, c.mode, key=fwd_key(keys[2]), rng=c.rng)
  rhs = quantize_grad(rhs, c.gradients, c.grad_mode, key=grad_key(keys[3]),
                                  rng=c.rng)
  return lhs, rhs


def quantized_dot_general(config: QuantConfig, key: jax.Array | None = None):
  """A `lax.dot_general` replacement that quantises operands, gradients and accumulation.

  Forward: y = dot(Q_act(x), Q_w(W)) with accumulation in `config.accumulation` (chunked) or
  float32. Backward: dL/dy, dL/dW and dL/dx rounded to `config.gradients` (see QuantConfig).

  Args:
    config: a QuantConfig.
    key: PRNG key, required when config.needs_key (stochastic rounding); five independent keys are
      derived from it with `fold_in`. Use a fresh key per step and per layer.

  Returns:
    f(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None) -> array, e.g. for
    `flax.linen.Dense(features, dot_general=quantized_dot_general(cfg, key))`.

  Raises:
    ValueError: stochastic config without key. TypeError: config not a QuantConfig.
  """
  keys = _config_keys(config, key, "quantized_dot_general")

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    lhs, rhs = _quantize_operands(lhs, rhs, config, keys)
    if config.accumulation is None:
      y = lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                          preferred_element_type=preferred_element_type, **kw)
    else:
      y = chunked_dot_general(lhs, rhs, dimension_numbers,
                              preferred_element_type=preferred_element_type,
                              acc_fmt=config.accumulation, chunk=config.chunk)
    key4 = keys[4] if config.grad_mode == "stochastic" else None
    return quantize_grad(y, config.gradients, config.grad_mode, key=key4,
                                  rng=config.rng)

  dot_general._fastnets_quantized = True
  return dot_general


def quantized_conv_general_dilated(config: QuantConfig, key: jax.Array | None = None):
  """A `lax.conv_general_dilated` replacement; see `quantized_dot_general`.

  Returns:
    f(lhs, rhs, window_strides, padding, ..., **kwargs) with `lax.conv_general_dilated`'s
    signature, e.g. for `flax.linen.Conv(..., conv_general_dilated=...)`.
  """
  keys = _config_keys(config, key, "quantized_conv_general_dilated")

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                           precision=None, preferred_element_type=None):
    lhs, rhs = _quantize_operands(lhs, rhs, config, keys)
    if config.accumulation is None:
      y = lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                   dimension_numbers, feature_group_count, batch_group_count,
                                   precision=precision,
                                   preferred_element_type=preferred_element_type)
    else:
      y = chunked_conv_general_dilated(
          lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, preferred_element_type=preferred_element_type,
          acc_fmt=config.accumulation, chunk=config.chunk)
    key4 = keys[4] if config.grad_mode == "stochastic" else None
    return quantize_grad(y, config.gradients, config.grad_mode, key=key4,
                                  rng=config.rng)

  conv_general_dilated._fastnets_quantized = True
  return conv_general_dilated


# ---------------------------------------------------------------------------------------------
# Optimizer: weights kept in a low-precision format (Gupta Sec. 4; Wang Sec. 3.3).


class RoundToFormatState(NamedTuple):
  """State of `round_to_format`: the step counter (the step's key is fold_in(key, count))."""
  count: jax.Array  # int32 scalar


def _round_params(params, updates, fmt: FormatSpec, mode: str, key, rng: str):
  """(new_params, new_updates) with new_params = Q(params + updates) leaf by leaf."""
  p_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  u_leaves = treedef.flatten_up_to(updates)
  new_p, new_u = [], []
  for i, ((path, p), u) in enumerate(zip(p_leaves, u_leaves)):
    leaf_fmt = leaf_format(fmt, path, p) if u is not None else None
    if leaf_fmt is None:
      new_p.append(None if u is None else p + u)
      new_u.append(u)
      continue
    p = jnp.asarray(p)
    cdt = jnp.float64 if p.dtype == jnp.float64 else jnp.float32  # sum in float32 even for bf16
    p32 = p.astype(cdt)
    target = p32 + jnp.asarray(u).astype(cdt)
    leaf_key = jax.random.fold_in(key, i) if mode == "stochastic" else None
    q = round_with_mode(target, leaf_fmt, mode, leaf_key, rng)
    new_p.append(q.astype(p.dtype))
    new_u.append(q - p32)
  return treedef.unflatten(new_p), treedef.unflatten(new_u)


def round_to_format(fmt: FormatSpec, *, mode: str = "stochastic", key: jax.Array | None = None,
                    rng: str = "hash") -> optax.GradientTransformation:
  """Optax transformation making the next parameters representable: u -> Q(p + u) - p.

  Put it last in a chain (or use `low_precision_updates`). After
  `params = optax.apply_updates(params, updates)` the parameters equal Q(params + u), rounded
  stochastically (unbiased, so updates smaller than a grid step still move the weights on average:
  Gupta Sec. 3, Wang Sec. 3.3) or to nearest (Gupta's failing baseline: such updates vanish).

  The sum p + u is formed in float32 (float64 for float64 parameters), so updates below a
  bfloat16/float16 parameter's own precision are not lost before rounding; keep the parameters in a
  dtype that holds fmt exactly (float32 always does).

  Exactness: `optax.apply_updates` computes p + (Q - p) in float32, which gives back Q exactly
  whenever Q - p is exact in float32: always for fixed point with words up to 23 bits and for float
  formats unless a weight's magnitude changes by more than 2^(24 - precision) (2^14 for FP16 1-6-9)
  in one step; otherwise the result may be off by one float32 ulp. `apply_updates_low_precision`
  forms Q(p + u) directly and is always exact.

  Args:
    fmt: one format for every parameter, or a callable (key_path, leaf) -> format or None (None
      leaves that parameter in float32, e.g. Wang's first and last layers in 16 bits).
    mode: "stochastic" (default) or "nearest".
    key: PRNG key (`jax.random.key(seed)`), needed by mode="stochastic"; step t uses
      fold_in(key, t) (the counter is in the state, so a restored checkpoint continues the same
      random stream).
    rng: "hash" or "jax" random bits.

  Returns:
    An optax.GradientTransformation whose update requires `params`.

  Raises:
    ValueError: update called without params; bad mode/rng.
  """
  check_choice("mode", mode, ROUNDING_MODES, "round_to_format")
  check_choice("rng", rng, RNG_SOURCES, "round_to_format")
  base_key = (check_key(key, "round_to_format", purpose="stochastic rounding")
              if mode == "stochastic" else jax.random.key(0))  # "nearest" draws nothing.
  if not callable(fmt) or isinstance(fmt, (FixedPoint, FloatFormat)):
    leaf_format(fmt, (), jnp.zeros(()))  # validates now; a callable is checked per leaf

  def init_fn(params):
    del params
    return RoundToFormatState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("round_to_format needs the current parameters: call "
                       "tx.update(updates, state, params).")
    step_key = jax.random.fold_in(base_key, state.count)
    _, new_updates = _round_params(params, updates, fmt, mode, step_key, rng)
    return new_updates, RoundToFormatState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def low_precision_updates(tx: optax.GradientTransformation, fmt: FormatSpec, *,
                          mode: str = "stochastic", key: jax.Array | None = None,
                          rng: str = "hash") -> optax.GradientTransformationExtraArgs:
  """Wraps an optimizer so the weights stay in `fmt`: `optax.chain(tx, round_to_format(...))`.

  Usage in a training loop (tx -> tx):
    tx = low_precision_updates(optax.sgd(0.01), FixedPoint(2, 14), key=jax.random.key(0))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  Round the initial parameters first with `quantize_tree(params, fmt)` so they start in fmt.
  Arguments as `round_to_format`.
  """
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(f"low_precision_updates: tx must be an optax.GradientTransformation, got "
                    f"{type(tx).__name__}.")
  return optax.chain(tx, round_to_format(fmt, mode=mode, key=key, rng=rng))


def apply_updates_low_precision(params: Any, updates: Any, fmt: FormatSpec, *,
                                key: jax.Array | None = None, mode: str = "stochastic",
                                rng: str = "hash") -> Any:
  """Like `optax.apply_updates`, but returns Q(params + updates), exactly representable in fmt.

  Args:
    params, updates: pytrees of the same structure (float32 arrays).
    fmt: format, or callable (key_path, leaf) -> format or None (None: plain p + u).
    key: PRNG key (required for mode="stochastic"); leaf i uses fold_in(key, i).
    mode: "stochastic" (default) or "nearest".
    rng: "hash" or "jax".
  """
  check_choice("mode", mode, ROUNDING_MODES, "apply_updates_low_precision")
  check_choice("rng", rng, RNG_SOURCES, "apply_updates_low_precision")
  if mode == "stochastic":
    key = check_key(key, "apply_updates_low_precision", purpose="stochastic rounding")
  new_params, _ = _round_params(params, updates, fmt, mode, key, rng)
  return new_params


# ---------------------------------------------------------------------------------------------
# Loss scaling (Wang et al. 2018, Sec. 4; Micikevicius et al. 2018).


@jax.custom_vjp
def _scale_grad(tree, scale):
  del scale
  return tree


def _scale_grad_fwd(tree, scale):
  return tree, scale


def _scale_grad_bwd(scale, g):
  return jax.tree.map(lambda v: v * scale.astype(v.dtype), g), None


_scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


def scale_grad(tree: Any, scale: jax.Array) -> Any:
  """The identity on `tree`, whose backward pass multiplies the cotangent by `scale`.

  Loss scaling without touching the loss value: wrap the logits in `scale_grad(logits, s)` so
  the backward pass carries s * dL (small low-precision gradients do not underflow), and wrap
  the parameters in `scale_grad(params, 1 / s)` so their gradients come out unscaled again
  (exact when s is a power of two). `scale` gets no gradient.

  Args:
    tree: a pytree of float arrays.
    scale: a float scalar array (e.g. `jnp.float32(1024.0)`); each cotangent leaf is multiplied
      by it cast to that leaf's dtype.

  Returns:
    `tree`, unchanged.
  """
  scale = jnp.asarray(scale)
  if scale.ndim != 0 or not jnp.issubdtype(scale.dtype, jnp.floating):
    raise ValueError(f"scale_grad: scale must be a float scalar, got shape {scale.shape} and "
                     f"dtype {scale.dtype}.")
  return _scale_grad(tree, scale)
