"""ABC-Net layers (Lin, Zhao, Pan, NeurIPS 2017) and their bit-packed inference path.

`ABCDense` and `ABCConv` own a full-precision kernel W, N activation shifts v_n and N activation
scales beta_n (and a bias). Their forward pass is the paper's binary layer

    y = sum_m sum_n alpha_m beta_n  B_m (*) H_{v_n}(x)  (+ bias),

with B_m, alpha_m from `fastnets.ops.binary_bases(W, M)` (recomputed from W at every call) and
H_{v_n} from `fastnets.ops.binary_activations`. Training and `model.apply` evaluate it in float as
one product of the combined activation sum_n beta_n H_n with the combined weight sum_m alpha_m B_m
(mathematically the same value, M * N times cheaper), with straight-through gradients.

Packed inference. `pack_binary_variables(variables, M)` replaces each ABC layer's kernel by a
`PackedBinaryKernel`: the signs of its M bases packed into uint32 words (bit 1 for +1) and the
coefficients alpha. With such variables (`binary_apply(model, packed_variables, x)`) an ABC layer
binarises its input into N sign planes, packs them, and computes every binary dot product as
XNOR + population count (`fastnets.ops.packed_matmul`): exact int32 counts count_mn, combined as
sum_mn alpha_m beta_n count_mn. `binary_apply(model, variables, x, impl="float")` is the float
evaluation of the same binary network: each count_mn is a float product of +-1 tensors (an exact
integer in float32) and the combination is the same computation, so the two paths give identical
logits and predictions. (The training-time evaluation, one product of the combined tensors,
rounds differently; a value close to a binarisation threshold in a later layer can then flip.)
Convolutions go through im2col patches; zero padding is carried as a validity mask, so padded
positions count zero, as in the float convolution. Everything else in the model (first and last
full-precision layers, batch norm, pooling) runs unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fastnets.ops import binary as _binary

__all__ = ["ABCConv", "ABCDense", "PackedBinaryKernel", "binary_apply", "binary_layer_paths",
           "is_binary_layer", "pack_binary_variables"]

_MARKER = "act_shifts"  # Only ABC layers own this parameter: it identifies them in variables.


@flax.struct.dataclass
class PackedBinaryKernel:
  """The packed binary bases of one ABC layer.

  Attributes:
    words: (M, O, W) uint32: row o of base m holds the K signs of output unit o's weights
      (conv kernels in (C, kh, kw) order, the order of `lax.conv_general_dilated_patches`).
    alpha: (M,) float32 coefficients of the bases.
    length: K, the fan-in (static).
    kernel_shape: shape of the float kernel it came from (static).
  """
  words: jax.Array
  alpha: jax.Array
  length: int = flax.struct.field(pytree_node=False)
  kernel_shape: tuple = flax.struct.field(pytree_node=False)


def _activation_shift_init(num: int) -> Callable:
  """Shifts whose thresholds 0.5 - v_n split [-1, 1] into N + 1 equal parts (v = 0.5, i.e.
  sign(x), when N = 1): for batch-normalised inputs the N planes then start at distinct levels."""
  def init(key, shape, dtype=jnp.float32):
    del key
    thresholds = np.linspace(-1.0, 1.0, num + 2)[1:-1]
    return jnp.asarray(0.5 - thresholds, dtype).reshape(shape)
  return init


def _check_bases(module) -> tuple[int, int]:
  for name in ("weight_bases", "activation_bases"):
    value = getattr(module, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{type(module).__name__}: {name} must be an int >= 1, got {value!r}.")
  return int(module.weight_bases), int(module.activation_bases)


def _packed_kernel_or_none(module) -> PackedBinaryKernel | None:
  if module.has_variable("params", "kernel"):
    kernel = module.get_variable("params", "kernel")
    if isinstance(kernel, PackedBinaryKernel):
      return kernel
  return None


def _combine(counts: jax.Array, alpha: jax.Array, scales: jax.Array) -> jax.Array:
  """sum_mn alpha_m beta_n counts[n, p, m, o] -> (p, o) float32."""
  return jnp.einsum("npmo,n,m->po", counts.astype(jnp.float32), scales.astype(jnp.float32),
                    alpha.astype(jnp.float32), precision=lax.Precision.HIGHEST)


def _check_packed(module, packed: PackedBinaryKernel, fan_in: int, m: int) -> None:
  name = "/".join(module.scope.path) if module.scope is not None else type(module).__name__
  if packed.words.shape[0] != m:
    raise ValueError(f"layer {name!r}: packed kernel has {packed.words.shape[0]} bases, the layer "
                     f"has weight_bases={m}.")
  if packed.length != fan_in:
    raise ValueError(f"layer {name!r}: packed kernel has fan-in {packed.length}, the input gives "
                     f"{fan_in}.")


class ABCDense(nn.Module):
  """A dense layer with M binary weight bases and N binary activations (ABC-Net).

  Attributes:
    features: output units.
    weight_bases: M >= 1.
    activation_bases: N >= 1.
    use_bias: add a float bias after the binary product.
    kernel_init: initialiser of the full-precision kernel (in, out).
  """
  features: int
  weight_bases: int = 1
  activation_bases: int = 1
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., in) float. Returns (..., features) float32."""
    m, n = _check_bases(self)
    x = jnp.asarray(x, jnp.float32)
    shifts = self.param(_MARKER, _activation_shift_init(n), (n,))
    scales = self.param("act_scales", nn.initializers.constant(1.0 / n), (n,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else 0.0
    packed = _packed_kernel_or_none(self)
    if packed is not None:
      _check_packed(self, packed, x.shape[-1], m)
      return self._packed(x, packed, shifts, scales) + bias
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    activations = jnp.tensordot(scales, _binary.binary_activations(x, shifts), axes=1)
    weights = _binary.binary_weights(kernel, m)
    return jnp.dot(activations, weights, precision=lax.Precision.HIGHEST) + bias

  def _packed(self, x, packed: PackedBinaryKernel, shifts, scales):
    batch_shape, k = x.shape[:-1], x.shape[-1]
    planes = lax.stop_gradient(_binary.binary_activations(x, shifts)).reshape(len(shifts), -1, k)
    a = _binary.pack_bits(planes).reshape(-1, _binary.packed_words(k))
    m, o, w = packed.words.shape
    counts = _binary.packed_matmul(a, packed.words.reshape(m * o, w), k)
    counts = counts.reshape(len(shifts), -1, m, o)
    return _combine(counts, packed.alpha, scales).reshape(batch_shape + (o,))


class ABCConv(nn.Module):
  """A 2-D convolution (NHWC, HWIO kernel) with M binary weight bases and N binary activations.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: "SAME", "VALID" or explicit ((lo, hi), (lo, hi)); padded positions are zeros after
      binarisation (they contribute nothing), in float and packed alike.
    weight_bases: M >= 1.
    activation_bases: N >= 1.
    use_bias, kernel_init: as `ABCDense`.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  weight_bases: int = 1
  activation_bases: int = 1
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (batch, height, width, channels) float. Returns (batch, h', w', features) float32."""
    m, n = _check_bases(self)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
      raise ValueError(f"ABCConv: x must be NHWC (batch, height, width, channels), got shape "
                       f"{x.shape}.")
    kh, kw = self.kernel_size
    shifts = self.param(_MARKER, _activation_shift_init(n), (n,))
    scales = self.param("act_scales", nn.initializers.constant(1.0 / n), (n,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else 0.0
    packed = _packed_kernel_or_none(self)
    if packed is not None:
      _check_packed(self, packed, kh * kw * x.shape[-1], m)
      return self._packed(x, packed, shifts, scales) + bias
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    activations = jnp.tensordot(scales, _binary.binary_activations(x, shifts), axes=1)
    weights = _binary.binary_weights(kernel, m)
    y = lax.conv_general_dilated(activations, weights, tuple(self.strides), self.padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
    return y + bias

  def _packed(self, x, packed: PackedBinaryKernel, shifts, scales):
    n = len(shifts)
    planes = lax.stop_gradient(_binary.binary_activations(x, shifts))
    planes = planes.reshape((-1,) + x.shape[1:])  # (N * batch, H, W, C)
    patches = lax.conv_general_dilated_patches(
        planes, tuple(self.kernel_size), tuple(self.strides), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # zeros where padded
    out_hw = patches.shape[1:3]
    k = patches.shape[-1]
    patches = patches.reshape(-1, k)
    a = _binary.pack_bits(patches)
    # Zero padding: patch entries that are exactly 0 are padding (binary activations are +-1).
    padded = self.padding != "VALID"
    mask = _binary.pack_bits(jnp.where(patches != 0, 1.0, -1.0)) if padded else None
    m, o, w = packed.words.shape
    counts = _binary.packed_matmul(a, packed.words.reshape(m * o, w), k, mask=mask)
    counts = counts.reshape(n, -1, m, o)
    return _combine(counts, packed.alpha, scales).reshape((x.shape[0],) + out_hw + (o,))


def is_binary_layer(params: Any) -> bool:
  """True for the params dict of an ABC layer (it has a kernel and activation shifts)."""
  return isinstance(params, dict) and _MARKER in params and "kernel" in params


def binary_layer_paths(params: Any, prefix: tuple = ()) -> list[tuple[str, ...]]:
  """The paths (tuples of module names) of every ABC layer in a params tree, in tree order."""
  found = []
  if is_binary_layer(params):
    return [prefix]
  if isinstance(params, dict):
    for key, value in params.items():
      found += binary_layer_paths(value, prefix + (key,))
  return found


@functools.partial(jax.jit, static_argnums=1)
def _packed_rows(kernel: jax.Array, weight_bases: int) -> tuple[jax.Array, jax.Array]:
  """(M, O, W) packed sign words of the bases of a kernel, and alpha (one compiled program)."""
  bases, alpha = _binary.binary_bases(kernel, weight_bases)
  if kernel.ndim == 4:  # HWIO -> (C, kh, kw) fan-in order, the order of the im2col patches
    bases = jnp.transpose(bases, (0, 3, 1, 2, 4))
  m, o = bases.shape[0], bases.shape[-1]
  rows = jnp.swapaxes(bases.reshape(m, -1, o), 1, 2)  # (M, O, K)
  return _binary.pack_bits(rows), alpha


def _pack_kernel(kernel, weight_bases: int) -> PackedBinaryKernel:
  kernel = jnp.asarray(kernel, jnp.float32)
  if kernel.ndim not in (2, 4):
    raise ValueError(f"pack_binary_variables: kernel must be (in, out) or HWIO, got shape "
                     f"{kernel.shape}.")
  words, alpha = _packed_rows(kernel, int(weight_bases))
  return PackedBinaryKernel(words=words, alpha=alpha, length=int(np.prod(kernel.shape[:-1])),
                            kernel_shape=tuple(kernel.shape))


def pack_binary_variables(variables: Any, weight_bases: int | dict, *,
                          layers: Sequence[Sequence[str]] | None = None,
                          collection: str = "params") -> Any:
  """Replaces the kernels of a trained model's ABC layers by `PackedBinaryKernel`s.

  Args:
    variables: the model's variables ({"params": ..., "batch_stats": ...}); concrete arrays.
    weight_bases: M of every ABC layer (an int), or a dict from layer path ("a/b") to M.
    layers: paths (tuples of module names) of the layers to pack; default every ABC layer.
    collection: the collection holding the params.

  Returns:
    A copy of variables whose selected kernels are packed (other leaves shared).

  Raises:
    ValueError: no ABC layer in variables, a requested layer that is missing or not binary, or a
      missing collection.
  """
  if collection not in variables:
    raise ValueError(f"variables has no collection {collection!r}; it has {list(variables)}.")
  params = variables[collection]
  params = params.unfreeze() if hasattr(params, "unfreeze") else params
  binary = binary_layer_paths(params)
  if layers is None:
    if not binary:
      raise ValueError("variables holds no binary (ABC) layer: nothing to pack (only ABCDense / "
                       "ABCConv layers run on the packed path).")
    layers = binary
  layers = [tuple(path) for path in layers]

  def pack_one(tree, path, full):
    if not path:
      if not is_binary_layer(tree):
        raise ValueError(f"layer {'/'.join(full)!r} is not binary (an ABCDense / ABCConv layer): "
                         "only binary layers can be packed.")
      m = weight_bases if isinstance(weight_bases, int) else weight_bases["/".join(full)]
      return {**tree, "kernel": _pack_kernel(tree["kernel"], m)}
    if not isinstance(tree, dict) or path[0] not in tree:
      raise ValueError(f"layer {'/'.join(full)!r} is not in variables[{collection!r}].")
    return {**tree, path[0]: pack_one(tree[path[0]], path[1:], full)}

  for path in layers:
    params = pack_one(params, path, path)
  return {**variables, collection: params}


def _has_packed(tree: Any) -> bool:
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda v: isinstance(v, PackedBinaryKernel))
  return any(isinstance(v, PackedBinaryKernel) for v in leaves)


def _term_by_term_call(module, x):
  """An ABC layer evaluated in float one binary product at a time: counts_mn = B_m (*) H_n as float
  products of +-1 tensors (exact integers in float32), then the packed path's `_combine`, so both
  paths round the same numbers the same way and give identical outputs."""
  m, n = _check_bases(module)
  x = jnp.asarray(x, jnp.float32)
  kernel = module.get_variable("params", "kernel")
  shifts = module.get_variable("params", _MARKER)
  scales = module.get_variable("params", "act_scales")
  bias = module.get_variable("params", "bias") if module.use_bias else 0.0
  bases, alpha = _binary.binary_bases(jnp.asarray(kernel, jnp.float32), m)
  planes = _binary.binary_activations(x, shifts)
  if isinstance(module, ABCDense):
    counts = jnp.einsum("npk,mko->npmo", planes.reshape(n, -1, x.shape[-1]), bases,
                        precision=lax.Precision.HIGHEST)
    return _combine(counts, alpha, scales).reshape(x.shape[:-1] + (-1,)) + bias
  kh, kw, c, o = kernel.shape
  stacked = jnp.transpose(bases, (1, 2, 3, 0, 4)).reshape(kh, kw, c, m * o)
  y = lax.conv_general_dilated(planes.reshape((-1,) + x.shape[1:]), stacked,
                               tuple(module.strides), module.padding,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  out_shape = (x.shape[0],) + y.shape[1:3] + (o,)
  return _combine(y.reshape(n, -1, m, o), alpha, scales).reshape(out_shape) + bias


def _make_interceptor(impl: str):
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not module.has_variable("params", "kernel"):
      return next_fun(*args, **kwargs)
    packed = isinstance(module.get_variable("params", "kernel"), PackedBinaryKernel)
    if not isinstance(module, (ABCDense, ABCConv)):
      if packed:
        raise ValueError(f"layer {'/'.join(module.scope.path)!r} ({type(module).__name__}) has a "
                         "packed binary kernel but is not binary: only ABCDense / ABCConv run "
                         "packed.")
      return next_fun(*args, **kwargs)
    if impl == "float":
      if packed:
        raise ValueError(f"binary_apply(impl='float'): layer {'/'.join(module.scope.path)!r} is "
                         "packed; pass the unpacked variables.")
      return _term_by_term_call(module, *args)
    return next_fun(*args, **kwargs)

  return interceptor


def binary_apply(model: nn.Module, variables: Any, *args, impl: str = "packed", **kwargs):
  """Runs a trained ABC model with its binary layers evaluated product by product.

  Args:
    model: the trained Linen model (unchanged).
    variables: for impl="packed", the output of `pack_binary_variables` (the binary layers run as
      XNOR + popcount on uint32 words); for impl="float", the ordinary float variables (every
      binary layer runs as M * N float products of +-1 tensors: the float evaluation of the binary
      network, identical to the packed path).
    impl: "packed" or "float".
    *args, **kwargs: passed to `model.apply` (e.g. `train=False`).

  Raises:
    ValueError: an unknown impl, packed variables without any packed layer (or with packed layers
      for impl="float"), or a packed kernel in a layer that is not an ABC layer.
  """
  if impl not in ("packed", "float"):
    raise ValueError(f"binary_apply: impl must be 'packed' or 'float', got {impl!r}.")
  if impl == "packed" and not _has_packed(variables):
    raise ValueError("binary_apply: variables has no packed binary layer; call "
                     "pack_binary_variables(variables, weight_bases) first.")
  with nn.intercept_methods(_make_interceptor(impl)):
    return model.apply(variables, *args, **kwargs)
