"""Run any Flax CNN with pooled convolution kernels, without copying the model.

Poulos et al. 2019 ("Dynamic Input and Kernel Downsampling"): a downsampled training step runs
the same parameters on an input pooled by a factor with every convolution kernel pooled to a
smaller size; the pooling is differentiable, so the gradients reach the full-size kernels.

`pooled_kernels()` is a context manager installing a Flax method interceptor
(`nn.intercept_methods`): inside it, every `nn.Conv.__call__` of any model (ResNet blocks, the
small CNN, FFNet, user models) runs a clone of that conv whose kernel is
`fastnets.ops.pool_kernel(kernel)`, read from the model's own variables, so `jax.grad` with respect
to the original parameters flows through the pooling. Explicit paddings are shrunk with the
kernel ("SAME"-like stays "SAME"-like, unpadded stays unpadded); strides, dilations, groups, dtype
and bias are the conv's own. Kernels already at (or below) their target size run unchanged
(1x1 projections). Only `flax.linen.Conv` with two spatial dims is pooled; other layers
(ConvTranspose, ConvLocal, 1-D/3-D convs, custom conv modules that do not use nn.Conv) run
unchanged.

`downsampled_apply` pools the input too; `model_conv_flops` counts a model's convolution FLOPs
analytically (full or downsampled, forward or a whole training step).
"""

import contextlib
import threading
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax

from fastnets import ops
from fastnets.checks import pair
from fastnets.ops import flops

Target = Union[None, int, Sequence[int], Callable[[tuple[int, int]], Sequence[int]]]


class _Guard(threading.local):
  """Depth of pooled-clone calls in progress (the clone's own __call__ must not be pooled)."""
  depth = 0


_GUARD = _Guard()


def resolve_target(target: Target, kernel_size: Sequence[int]) -> tuple[int, int]:
  """The pooled size of a (kh, kw) kernel under `target`, clipped to the kernel size.

  Args:
    target: None (default `ops.pooled_size`: ceil(k / 2), 3 -> 2, 5 -> 3), an int or (th, tw)
      (one size for every kernel, clipped so smaller kernels run unchanged), or a callable
      (kh, kw) -> (th, tw).
    kernel_size: (kh, kw).

  Returns:
    (th, tw) with 1 <= th <= kh, 1 <= tw <= kw.

  Raises:
    ValueError: a non-positive or malformed target.
  """
  kh, kw = int(kernel_size[0]), int(kernel_size[1])
  if target is None:
    th, tw = ops.pooled_size((kh, kw))
  elif callable(target):
    th, tw = (int(v) for v in target((kh, kw)))
  else:
    th, tw = pair(target, "target")
  if th <= 0 or tw <= 0:
    raise ValueError(f"target must give positive sizes, got {(th, tw)} for kernel {(kh, kw)}.")
  return min(th, kh), min(tw, kw)


def _pooled_padding(padding, kernel: tuple[int, int], target: tuple[int, int],
                    dilation: tuple[int, int]):
  """Explicit paddings scaled with the kernel: total pad T -> round(T (t_eff-1) / (k_eff-1)).

  A "SAME"-like pad (T = k - 1) becomes t - 1 and no padding stays none, so padded and unpadded
  convs keep their roles at the lower resolution. Strings ("SAME", "VALID", ...) are kept.
  """
  if isinstance(padding, str):
    return padding
  if isinstance(padding, int):
    pairs = [(padding, padding)] * 2
  else:
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pairs) == 1:
      pairs = pairs * 2
  out = []
  for (lo, hi), k, t, d in zip(pairs, kernel, target, dilation):
    k_eff, t_eff = d * (k - 1) + 1, d * (t - 1) + 1
    total = lo + hi if k_eff == 1 else round((lo + hi) * (t_eff - 1) / (k_eff - 1))
    out.append((total // 2, total - total // 2))
  return tuple(out)


def _aspair(value, default: int = 1) -> tuple[int, int]:
  if value is None:
    return (default, default)
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  return value * 2 if len(value) == 1 else value


def _make_interceptor(target: Target, rescale: bool, select: Optional[Callable[[nn.Conv], bool]]):

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if _GUARD.depth or context.method_name != "__call__" or not isinstance(module, nn.Conv):
      return next_fun(*args, **kwargs)
    if select is not None and not select(module):
      return next_fun(*args, **kwargs)
    if module.is_initializing() or not module.has_variable("params", "kernel"):
      return next_fun(*args, **kwargs)  # Init creates the full-size parameters.
    kernel = module.get_variable("params", "kernel")
    if kernel.ndim != 4:  # Only 2-D convolutions are pooled.
      return next_fun(*args, **kwargs)
    size = tuple(kernel.shape[:2])
    new_size = resolve_target(target, size)
    if new_size == size:
      return next_fun(*args, **kwargs)
    if module.mask is not None:
      kernel = kernel * module.mask
    params = {"kernel": ops.pool_kernel(kernel, new_size, rescale=rescale)}
    if module.use_bias:
      params["bias"] = module.get_variable("params", "bias")
    padding = _pooled_padding(module.padding, size, new_size, _aspair(module.kernel_dilation))
    pooled = module.clone(parent=None, kernel_size=new_size, padding=padding, mask=None)
    _GUARD.depth += 1
    try:
      return pooled.apply({"params": params}, *args, **kwargs)
    finally:
      _GUARD.depth -= 1

  return interceptor


@contextlib.contextmanager
def pooled_kernels(target: Target = None, rescale: bool = True,
                   select: Optional[Callable[[nn.Conv], bool]] = None):
  """Context in which every 2-D `nn.Conv` of every model runs with its kernel pooled.

  Use it inside the function you differentiate or jit (the interception happens at trace time):

      def loss(params, x):
        with pooled_kernels():
          logits = model.apply({"params": params}, ops.pool_input(x, 2))
        ...

  Gradients with respect to `params` reach the full-size kernels through `ops.pool_kernel`.
  `model.init` inside the context is unaffected (it creates full-size kernels).

  Args:
    target: pooled size, see `resolve_target` (default: ceil(k / 2): 3x3 -> 2x2, 5x5 -> 3x3).
    rescale: scale pooled kernels by (kh kw) / (th tw) (see `ops.pool_kernel`).
    select: optional predicate on the conv module (e.g. by `module.name`); convs where it is
      False run unchanged.
  """
  with nn.intercept_methods(_make_interceptor(target, rescale, select)):
    yield


def downsampled_apply(model: nn.Module, variables: Any, x: jax.Array, *args: Any,
                      factor: int = 2, target: Target = None, rescale: bool = True,
                      **kwargs: Any) -> Any:
  """`model.apply(variables, pool_input(x, factor), ...)` with pooled kernels (one call).

  Args:
    model, variables: as for `model.apply`.
    x: (N, H, W, C) input, H and W divisible by `factor`.
    *args, **kwargs: passed on to `model.apply` (e.g. `train=True, mutable=[...], rngs=...`).
    factor: input pooling factor.
    target, rescale: kernel pooling, see `pooled_kernels`.

  Returns:
    Whatever `model.apply` returns.
  """
  with pooled_kernels(target, rescale):
    return model.apply(variables, ops.pool_input(x, factor), *args, **kwargs)


def model_conv_flops(model: nn.Module, input_shape: Sequence[int], *, downsampled: bool = False,
                     factor: int = 2, target: Target = None, training_step: bool = True,
                     variables: Any = None) -> int:
  """Analytic convolution FLOPs of a Linen model's full or downsampled forward or training step.

  `fastnets.ops.flops.model_conv_flops` (the counter) with, when `downsampled`, the model applied
  through `downsampled_apply` (input pooled by `factor`, kernels by `target`).

  Args:
    model: a Linen module called as `model(x, train=...)`.
    input_shape: full-resolution (N, H, W, C).
    downsampled: count the downsampled step.
    factor, target: as in `downsampled_apply`.
    training_step: forward + backward (True) or forward only (False).
    variables: the model's variables (default: `model.init` traced abstractly).

  Returns:
    FLOPs (2 per multiply-accumulate) as an int.
  """
  apply_fn = None
  if downsampled:
    def apply_fn(variables, x, **kwargs):
      return downsampled_apply(model, variables, x, factor=factor, target=target, **kwargs)
  return flops.model_conv_flops(model, input_shape, training_step=training_step,
                                variables=variables, apply_fn=apply_fn)
