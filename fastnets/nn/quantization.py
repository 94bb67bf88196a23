"""Quantise the Dense and Conv layers of any Flax Linen model, without rewriting it.

Papers: Gupta et al. 2015 (fixed-point training with stochastic rounding) and Wang et al. 2018
(FP8 operands and gradients, FP16 chunk-based accumulation). The numerics are in
`fastnets.ops` (`rounding`, `quantization`, `low_precision`); this module only routes a model's
layers to them.

    cfg = QuantConfig(weights=FP8_E5M2, activations=FP8_E5M2, gradients=FP8_E5M2,
                      accumulation=FP16_WANG, chunk=64)

    def loss_fn(params, x, y, key):
      with quantized(cfg, key):                 # enter the context INSIDE the jitted function
        logits = model.apply(params, x)
      return cross_entropy_loss(logits, y)

    grads = jax.jit(jax.grad(loss_fn))(params, x, y, jax.random.fold_in(key, step))

How: `quantized` registers a `flax.linen.intercept_methods` interceptor. When an `nn.Dense`,
`nn.DenseGeneral` or `nn.Conv` (shared weights) is called, the interceptor calls instead a clone of
the module bound to the same scope (same parameters, same names) whose `dot_general` /
`conv_general_dilated` attribute is `quantized_dot_general(cfg, key)` /
`quantized_conv_general_dilated(cfg, key)`. Flax's own code for padding, batch dims, bias, dtype
promotion and initialisation runs unchanged. Other modules are untouched; a module that already
sets its own `dot_general(_cls)` / `conv_general_dilated(_cls)` is left alone.

Randomness for stochastic rounding: either an explicit `key` (each layer call gets
fold_in(fold_in(key, crc32(module path)), n) with n counting calls of that module inside the
context), or, with key=None, the Linen rng stream `rng_collection` ("quantize" by default):
`model.apply(params, x, rngs={"quantize": key})`. Inside lifted transforms that trace a module
once for many uses (`nn.scan`), use the rng stream (with `split_rngs={"quantize": True}`): an
explicit key would give every iteration the same random bits.

jit caveat: the interceptor acts while a function is traced. Enter the context inside the function
you jit (as above), never around a call of an already-jitted function (the cached trace would keep
the first configuration and key).
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Callable, Iterator

import flax.linen as nn
import jax

from fastnets.checks import check_key
from fastnets.ops import low_precision as lp

__all__ = ["quantized", "quantized_layer_kind"]


def quantized_layer_kind(module: nn.Module) -> str | None:
  """"dot" for nn.Dense / nn.DenseGeneral, "conv" for a shared-weight nn.Conv, else None."""
  if isinstance(module, (nn.Dense, nn.DenseGeneral)):
    return "dot"
  if isinstance(module, nn.Conv) and getattr(module, "shared_weights", True):
    return "conv"
  return None


_ATTRS = {"dot": ("dot_general", "dot_general_cls"),
          "conv": ("conv_general_dilated", "conv_general_dilated_cls")}


@contextlib.contextmanager
def quantized(config: lp.QuantConfig, key: jax.Array | None = None, *,
              select: Callable[[nn.Module], lp.QuantConfig | None] | None = None,
              rng_collection: str = "quantize") -> Iterator[None]:
  """Context manager: inside it, every Dense/DenseGeneral/Conv call is quantised per `config`.

  Args:
    config: the QuantConfig applied to every selected layer.
    key: PRNG key for stochastic rounding (one per training step, e.g. fold_in(key, step)); with
      None, stochastic configs draw from the Linen rng stream `rng_collection`.
    select: optional callable module -> QuantConfig or None, to choose per layer (None leaves the
      layer in full precision). It receives the bound module, whose `.name` and `.scope.path` are
      set; e.g. Wang's first and last layers in 16 bits:
      `select=lambda m: cfg16 if m.name in ("Conv_0", "Dense_1") else cfg8`.
    rng_collection: the rng stream used when key is None.

  Yields:
    None. Use `model.apply` / `model.init` inside the `with` block.

  Raises:
    TypeError: config not a QuantConfig (at entry) or select returns something else. ValueError
      (at the layer call): a stochastic config without key or rng stream.
  """
  if not isinstance(config, lp.QuantConfig):
    raise TypeError(f"quantized: config must be a QuantConfig, got {type(config).__name__}.")
  if key is not None:
    key = check_key(key, "quantized", purpose="stochastic rounding")
  calls: dict[str, int] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    kind = quantized_layer_kind(module) if context.method_name == "__call__" else None
    if kind is None:
      return next_fun(*args, **kwargs)
    attr, cls_attr = _ATTRS[kind]
    current = getattr(module, attr, None)
    if getattr(current, "_fastnets_quantized", False):
      return next_fun(*args, **kwargs)  # our own clone
    if current is not None or getattr(module, cls_attr, None) is not None:
      return next_fun(*args, **kwargs)  # the user's own dot_general / conv: leave alone
    cfg = select(module) if select is not None else config
    if cfg is None:
      return next_fun(*args, **kwargs)
    if not isinstance(cfg, lp.QuantConfig):
      raise TypeError(f"quantized: select(module) must return a QuantConfig or None, got {cfg!r}.")
    layer_key = None
    if cfg.needs_key:
      path = "/".join(str(p) for p in module.scope.path)
      if key is not None:
        n = calls.get(path, 0)
        calls[path] = n + 1
        layer_key = jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(path.encode())), n)
      elif module.has_rng(rng_collection):
        layer_key = module.make_rng(rng_collection)
      else:
        raise ValueError(
            f"quantized: layer {path!r} rounds stochastically but no key was given: pass "
            f"quantized(config, key) or apply the model with rngs={{{rng_collection!r}: key}}.")
    if kind == "dot":
      fn = lp.quantized_dot_general(cfg, layer_key)
    else:
      fn = lp.quantized_conv_general_dilated(cfg, layer_key)
    clone = module.clone(parent=module.scope, **{attr: fn})
    return clone(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
