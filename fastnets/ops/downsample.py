"""Input and kernel downsampling, and analytic convolution FLOP counting.

Poulos, Nouri and Moshovos (2019), "Training CNNs faster with Dynamic Input and Kernel
Downsampling": for some mini-batches the input is pooled by a factor (2) and every convolution
kernel is pooled to a smaller size (3x3 -> 2x2); pooling is linear, hence differentiable, so the
gradient of such a "downsampled" step reaches the full-size kernels. With a 2x smaller input and
3x3 kernels averaged to 2x2, a convolution costs about 1/4 x 4/9 = 11% of its full FLOPs.

The functions here are pure: `pool_input` (NHWC average pooling by an integer factor),
`pool_kernel` (HWIO kernel averaging to a target size with a stride-1 window), `pooled_size`
(the default target: about half the kernel), `kernel_pooling_matrix` (the explicit linear map, the
test oracle) and `conv_flops_of` (FLOPs of every `conv_general_dilated` in a traced function,
forward or backward). The Flax side (running any model with pooled kernels) is
`fastnets.nn.downsample`; the training-loop option is `fastnets.train.downsampling`.
"""

import math
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Size2 = Union[int, Sequence[int]]


def _pair(value: Size2, name: str) -> tuple[int, int]:
  """(a, b) from an int or a length-2 sequence of positive ints; ValueError naming `name`."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    pair = (int(value), int(value))
  elif (isinstance(value, Sequence) and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
    pair = (int(value[0]), int(value[1]))
  else:
    raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}.")
  if min(pair) <= 0:
    raise ValueError(f"{name} must be positive, got {value!r}.")
  return pair


def pool_input(x: jax.Array, factor: Size2 = 2) -> jax.Array:
  """Average-pools an NHWC batch by an integer factor (non-overlapping factor x factor windows).

  Poulos et al. 2019, Sec. 3: the downsampled step's input. Height and width must be divisible by
  the factor (a silent crop would change what the network sees; pad or crop the data yourself).

  Args:
    x: (N, H, W, C) floating array.
    factor: int or (fh, fw); 1 returns `x` unchanged.

  Returns:
    (N, H // fh, W // fw, C) array of x's dtype: the mean of each window.

  Raises:
    ValueError: x is not 4-D, the factor is not a positive int (pair), or H, W not divisible.
    TypeError: x is not floating point.
  """
  fh, fw = _pair(factor, "factor")
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be floating point (normalised images), got {x.dtype}.")
  n, h, w, c = x.shape
  if h % fh or w % fw:
    raise ValueError(f"the input height and width {(h, w)} must be divisible by factor "
                     f"{(fh, fw)}; crop or pad the images, or choose another factor.")
  if (fh, fw) == (1, 1):
    return x
  return x.reshape(n, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4))


def pooled_size(kernel_size: Sequence[int]) -> tuple[int, ...]:
  """The default pooled kernel size: ceil(k / 2) per spatial dim (3 -> 2, 5 -> 3, 1 -> 1).

  Halving the kernel with the input keeps the receptive field about the same in input pixels,
  and maps an FFNet stage (two unpadded 3x3 convs beside one unpadded 5x5 conv) to one whose
  branches still agree in size (both lose 2 pixels instead of 4).
  """
  return tuple((int(k) + 1) // 2 for k in kernel_size)


def kernel_pooling_matrix(size: int, target: int) -> np.ndarray:
  """The (target, size) averaging matrix of `pool_kernel` along one axis.

  Row i averages entries i .. i + size - target of the axis (a stride-1 window of
  `size - target + 1` taps), so `pool_kernel(w)[i, j] = sum_ab P[i, a] w[a, b] Q[j, b]` with
  P = kernel_pooling_matrix(kh, th), Q = kernel_pooling_matrix(kw, tw). Float64 numpy.

  Raises:
    ValueError: target not in 1..size.
  """
  if not 1 <= target <= size:
    raise ValueError(f"target must be in 1..{size} (the kernel size), got {target}.")
  window = size - target + 1
  matrix = np.zeros((target, size))
  for i in range(target):
    matrix[i, i:i + window] = 1.0 / window
  return matrix


def pool_kernel(kernel: jax.Array, target: Size2 = (2, 2), rescale: bool = True) -> jax.Array:
  """Averages an HWIO convolution kernel to a smaller spatial size (differentiable).

  Poulos et al. 2019, Sec. 3 ("kernel downsampling"): tap (i, j) of the pooled kernel is the mean
  of the original taps in the stride-1 window of (kh - th + 1, kw - tw + 1) taps starting at
  (i, j); for 3x3 -> 2x2 that is average pooling with a 2x2 window and stride 1. The map is
  linear, so the gradient with respect to `kernel` is the pooled kernel's gradient spread back
  over the windows (every original tap receives gradient).

  `rescale=True` multiplies by (kh kw) / (th tw): the pooled taps are averages, so this keeps the
  total weight (the response to a constant input, hence the pre-activation scale) of a smooth
  kernel, exactly for a constant one (overlapping windows weight central taps more, so an
  arbitrary kernel's sum is not kept exactly). It matters for nets without normalisation and is
  irrelevant before batch norm. The paper's normalisation is not stated in what we have
  (unverified); this is our choice, configurable.

  Args:
    kernel: (kh, kw, in, out) floating array (Flax `nn.Conv` layout).
    target: int or (th, tw) with 1 <= th <= kh, 1 <= tw <= kw; equal sizes return the kernel.
    rescale: scale by (kh kw) / (th tw) (see above); False: plain average.

  Returns:
    (th, tw, in, out) array of the kernel's dtype.

  Raises:
    ValueError: kernel not 4-D, or a target larger than the kernel ("kernel smaller than the
      pool") or not positive.
    TypeError: kernel not floating point.
  """
  th, tw = _pair(target, "target")
  if kernel.ndim != 4:
    raise ValueError(f"kernel must be HWIO (kh, kw, in, out), got shape {kernel.shape}.")
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise TypeError(f"kernel must be floating point, got {kernel.dtype}.")
  kh, kw = kernel.shape[:2]
  if th > kh or tw > kw:
    raise ValueError(f"target {(th, tw)} is larger than the kernel's spatial size {(kh, kw)}: "
                     "the kernel is smaller than the pool; choose target <= kernel size.")
  if (th, tw) == (kh, kw):
    return kernel
  wh, ww = kh - th + 1, kw - tw + 1
  # Sum of shifted slices: a stride-1 window average, cheap and exactly differentiable.
  total = sum(kernel[a:a + th, b:b + tw] for a in range(wh) for b in range(ww))
  scale = (1.0 / (wh * ww)) * ((kh * kw) / (th * tw) if rescale else 1.0)
  return (total * scale).astype(kernel.dtype)


def _conv_eqn_flops(eqn) -> int:
  """2 x (MACs) of one conv_general_dilated equation, whatever its dimension numbers.

  Every output element is a dot product over the rhs's input-feature dim and its spatial window,
  so FLOPs = 2 * prod(out shape) * rhs_in_features * prod(rhs spatial). This holds for the
  forward conv and for both backward convs XLA/JAX emit (the weight gradient contracts over the
  batch, which appears as the rhs "in-feature" dim), and for grouped convs (rhs in-feature is
  already in / groups). Taps that fall on the zeros of an lhs (input) dilation are not counted,
  so the input gradient of a strided conv costs what its forward costs.
  """
  rhs_shape = eqn.invars[1].aval.shape
  out_shape = eqn.outvars[0].aval.shape
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec
  macs = math.prod(out_shape) * rhs_shape[rhs_spec[1]] * math.prod(
      rhs_shape[d] for d in rhs_spec[2:])
  # The input gradient of a strided conv is a conv over the input-dilated (zero-interleaved)
  # output gradient: only 1 / prod(lhs_dilation) of its taps multiply non-zeros.
  macs /= math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2 * int(round(macs))


def _jaxpr_conv_flops(jaxpr, multiplier: int = 1) -> list[dict]:
  records = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      records.append({
          "lhs": tuple(eqn.invars[0].aval.shape), "rhs": tuple(eqn.invars[1].aval.shape),
          "out": tuple(eqn.outvars[0].aval.shape), "flops": multiplier * _conv_eqn_flops(eqn)})
      continue
    inner_mult = multiplier * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" \
        else multiplier
    subs = []
    for value in eqn.params.values():
      for item in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(item, jax.extend.core.ClosedJaxpr):
          subs.append(item.jaxpr)
        elif isinstance(item, jax.extend.core.Jaxpr):
          subs.append(item)
    if eqn.primitive.name == "cond":  # Only one branch runs: count the most expensive.
      branches = [_jaxpr_conv_flops(sub, inner_mult) for sub in subs]
      records.extend(max(branches, key=lambda r: sum(x["flops"] for x in r), default=[]))
    else:  # pjit, remat, custom_jvp/vjp calls, scan (x length), while (body counted once).
      for sub in subs:
        records.extend(_jaxpr_conv_flops(sub, inner_mult))
  return records


def conv_flops_of(fn: Callable[..., Any], *args: Any, per_conv: bool = False,
                  **kwargs: Any) -> Union[int, list[dict]]:
  """Analytic FLOPs of all convolutions that `fn(*args, **kwargs)` executes.

  Traces `fn` to a jaxpr (nothing runs; args may be `jax.ShapeDtypeStruct`s) and adds
  2 x multiply-accumulates of every `lax.conv_general_dilated` in it, including nested jaxprs
  (jit, remat, custom_vjp, scan bodies times their length; the costliest branch of a cond; a
  while body once). Pass a gradient function to count the backward convolutions too: then the
  count is the whole training step's conv FLOPs (about 3x the forward). Zero padding is counted
  as work, as is usual for analytic counts. For one convolution given by shapes (and the FLOPs of
  its sparse version) see `fastnets.ops.conv_flops`.

  Args:
    fn: any JAX-traceable function.
    *args, **kwargs: its arguments (arrays or ShapeDtypeStructs).
    per_conv: return one record per conv {"lhs", "rhs", "out", "flops"} instead of the total.

  Returns:
    The total FLOPs (int) or the per-conv records.
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  records = _jaxpr_conv_flops(closed.jaxpr)
  return records if per_conv else int(sum(r["flops"] for r in records))
