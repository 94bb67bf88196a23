"""Sparse inference for pruned Flax Linen CNNs (Escort; Chen, 2018).

A pruned model keeps its zeros in dense kernels. `sparsify_variables` replaces the 4-D conv
kernels of its variables by `fastnets.ops.SparseKernel`s (per-output-channel nonzeros and
coordinates), and `sparse_apply` runs the *unchanged* model with those variables: a Flax method
interceptor (`nn.intercept_methods`) catches every `nn.Conv.__call__` whose kernel is a
`SparseKernel` and computes it with `fastnets.ops.sparse_conv2d` (direct sparse convolution; the
Pallas kernel on GPU), reproducing `nn.Conv`'s semantics (extra batch dims, padding modes, bias,
dtype promotion). Every other module, and convs that kept a dense kernel, run as usual. Predictions
equal the dense model's up to float rounding.

Usage:

  pruned, masks = fastnets.ops.magnitude_prune(variables["params"], 0.9)
  sparse_vars = sparsify_variables({**variables, "params": pruned})
  logits = sparse_apply(model, sparse_vars, x)               # or under jax.jit
  with sparse_convs(impl="xla"):                               # same, as a context manager
    logits = model.apply(sparse_vars, x)

A ticket of dynamic sparse training (FreeTickets / RigL, `fastnets.ops.dynamic_sparse_training`)
runs the same way; its masks (`fastnets.ops.dst_masks(state.opt_state)`) say which weights exist:

  sparse_vars = sparsify_variables(variables, masks=ops.dst_masks(state.opt_state))
  logits = jax.jit(lambda v, x: sparse_apply(model, v, x))(sparse_vars, x)
"""

from __future__ import annotations

import contextlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

from fastnets.ops import pruning as _pruning
from fastnets.ops import sparse_conv as _sc

__all__ = ["conv_kernel_prunable", "sparse_apply", "sparse_convs", "sparsify_variables"]


def conv_kernel_prunable(path, leaf) -> bool:
  """True for 2-D conv kernels: a leaf named 'kernel' with 4 dims (HWIO)."""
  return _pruning.default_prunable(path, leaf) and getattr(leaf, "ndim", 0) == 4


def sparsify_variables(variables: Any, *, min_sparsity: float = 0.0,
                       prunable=conv_kernel_prunable, collection: str = "params",
                       masks: Any = None) -> Any:
  """Replaces the conv kernels of a Linen variables dict by `SparseKernel`s.

  Args:
    variables: the model's variables, e.g. {"params": ..., "batch_stats": ...}, with pruned
      (mostly zero) dense kernels. Must be concrete (call outside jit).
    min_sparsity: convert only kernels at least this sparse (dense-ish layers such as the first
      conv are often faster dense); in [0, 1].
    prunable: predicate `(path, leaf) -> bool` selecting the kernels to convert (paths are relative
      to `variables[collection]`); exclude `nn.ConvTranspose` / dilated / grouped convs with it.
    collection: the variables collection holding the kernels.
    masks: optional masks over `variables[collection]` (the pytrees of `fastnets.ops.pruning`:
      bool arrays on masked leaves, None elsewhere), e.g. a dynamic-sparse-training ticket's
      `fastnets.ops.dst_masks`. The weights outside the masks are zeroed first
      (`fastnets.ops.apply_masks`), and only kernels with a mask are converted.

  Returns:
    A copy of `variables` whose selected kernels are `SparseKernel`s (other leaves shared).

  Raises:
    ValueError: `min_sparsity` outside [0, 1], `collection` missing, or `masks` not shaped like
      `variables[collection]`.
  """
  if not 0.0 <= float(min_sparsity) <= 1.0:
    raise ValueError(f"min_sparsity must be in [0, 1]; got {min_sparsity!r}.")
  if collection not in variables:
    raise ValueError(f"variables has no collection {collection!r}; it has {list(variables)}.")
  tree = variables[collection]
  masked = None
  if masks is not None:
    try:
      tree = _pruning.apply_masks(tree, masks)
      masked = jax.tree.map(lambda m, _: m is not None, masks, tree,
                            is_leaf=lambda x: x is None)
    except (ValueError, TypeError) as e:
      raise ValueError(f"masks must be a pytree of bool arrays (None for unmasked leaves) "
                       f"shaped like variables[{collection!r}]: {e}") from e
    masked = {p: m for p, m in jax.tree_util.tree_flatten_with_path(masked)[0]}

  def convert(path, leaf):
    if isinstance(leaf, _sc.SparseKernel) or not prunable(path, leaf):
      return leaf
    if masked is not None and not masked.get(path, False):
      return leaf
    arr = np.asarray(leaf)
    if 1.0 - np.count_nonzero(arr) / arr.size < min_sparsity:
      return leaf
    return _sc.to_sparse_kernel(arr)

  out = dict(variables)
  out[collection] = jax.tree_util.tree_map_with_path(convert, tree)
  return out


def _broadcast(v, n):
  if v is None:
    return (1,) * n
  if isinstance(v, int):
    return (v,) * n
  return tuple(v)


def _sparse_conv_call(module: nn.Conv, inputs, w: _sc.SparseKernel, impl, config, interpret):
  """nn.Conv.__call__ with a SparseKernel, mirroring flax.linen.linear._Conv.__call__."""
  name = "/".join(module.scope.path) if module.scope is not None else type(module).__name__
  kernel_size = ((module.kernel_size,) if isinstance(module.kernel_size, int)
                 else tuple(module.kernel_size))
  problems = []
  if len(kernel_size) != 2:
    problems.append(f"{len(kernel_size)}-D kernel")
  if _broadcast(module.input_dilation, len(kernel_size)) != (1,) * len(kernel_size):
    problems.append("input_dilation")
  if _broadcast(module.kernel_dilation, len(kernel_size)) != (1,) * len(kernel_size):
    problems.append("kernel_dilation")
  if module.feature_group_count != 1:
    problems.append("feature_group_count")
  if module.mask is not None:
    problems.append("mask")
  if problems:
    raise ValueError(
      f"layer {name!r} has a SparseKernel but uses {', '.join(problems)}, which sparse_conv2d "
      "does not support; leave it dense (sparsify_variables(..., prunable=...)).")
  if tuple(w.kernel_shape[:2]) != kernel_size:
    raise ValueError(
      f"layer {name!r}: SparseKernel kernel_shape {w.kernel_shape} does not match kernel_size "
      f"{kernel_size}.")
  batch_dims = inputs.ndim - 3
  batch_shape = inputs.shape[:batch_dims]
  if batch_dims != 1:
    inputs = jnp.reshape(inputs, (-1,) + inputs.shape[batch_dims:])
  padding = canonicalize_padding(module.padding, 2)
  if padding in ("CIRCULAR", "REFLECT"):
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel_size] + [(0, 0)]
    inputs = jnp.pad(inputs, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
    padding = "VALID"
  elif padding == "CAUSAL":
    raise ValueError(f"layer {name!r}: CAUSAL padding is 1-D only.")
  bias = module.get_variable("params", "bias") if module.use_bias else None
  dtype = module.dtype or jnp.result_type(inputs.dtype, w.values.dtype,
                                          *(() if bias is None else (bias.dtype,)))
  inputs = inputs.astype(dtype)
  w = w.replace(values=w.values.astype(dtype))
  if bias is not None:
    if tuple(bias.shape) != (w.kernel_shape[3],):
      raise ValueError(f"layer {name!r}: bias of shape {bias.shape} is not per output channel.")
    bias = bias.astype(dtype)
  strides = _broadcast(module.strides, 2)
  y = _sc.sparse_conv2d(inputs, w, strides, padding, bias=bias, impl=impl, config=config,
                        interpret=interpret)
  if batch_dims != 1:
    y = jnp.reshape(y, batch_shape + y.shape[1:])
  return y


def _make_interceptor(impl, config, interpret):
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Conv):
      return next_fun(*args, **kwargs)
    if not module.has_variable("params", "kernel"):
      return next_fun(*args, **kwargs)  # init: let the dense layer create its params
    w = module.get_variable("params", "kernel")
    if not isinstance(w, _sc.SparseKernel):
      return next_fun(*args, **kwargs)
    (inputs,) = args
    return _sparse_conv_call(module, inputs, w, impl, config, interpret)

  return interceptor


@contextlib.contextmanager
def sparse_convs(impl: str = "auto", *, config=None, interpret: bool = False):
  """Context manager: inside it, `nn.Conv` layers whose kernel is a SparseKernel run sparse.

  Args:
    impl: passed to `fastnets.ops.sparse_conv2d` ("auto", "xla", "native", "dense" or
      "pallas"); "auto" picks per layer with `fastnets.ops.sparse_conv.choose_sparse_conv_impl`
      (on a CPU: the native kernel for kernels sparse enough, the dense convolution below).
    config: optional `fastnets.kernels.sparse_conv.SparseConvConfig` for the Pallas kernel.
    interpret: run the Pallas kernel in interpret mode.
  """
  if impl not in _sc.SPARSE_CONV_IMPLS:
    raise ValueError(f"impl must be one of {_sc.SPARSE_CONV_IMPLS}; got {impl!r}.")
  with nn.intercept_methods(_make_interceptor(impl, config, interpret)):
    yield


def sparse_apply(model: nn.Module, variables: Any, *args, impl: str = "auto", config=None,
                 interpret: bool = False, **kwargs):
  """`model.apply(variables, *args, **kwargs)` with sparse convolutions where kernels are sparse.

  Args:
    model: the Linen module (unchanged).
    variables: output of `sparsify_variables`.
    *args, **kwargs: passed to `model.apply` (e.g. `train=False`, `method=...`, `mutable=...`).
    impl, config, interpret: see `sparse_convs`.

  Returns:
    Whatever `model.apply` returns.
  """
  with sparse_convs(impl, config=config, interpret=interpret):
    return model.apply(variables, *args, **kwargs)
