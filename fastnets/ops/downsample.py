"""Input and kernel downsampling.

Poulos, Nouri and Moshovos (2019), "Training CNNs faster with Dynamic Input and Kernel
Downsampling": for some mini-batches the input is pooled by a factor (2) and every convolution
kernel is pooled to a smaller size (3x3 -> 2x2); pooling is linear, hence differentiable, so the
gradient of such a "downsampled" step reaches the full-size kernels. With a 2x smaller input and
3x3 kernels averaged to 2x2, a convolution costs about 1/4 x 4/9 = 11% of its full FLOPs.

The functions here are pure: `pool_input` (NHWC average pooling by an integer factor),
`pool_kernel` (HWIO kernel averaging to a target size with a stride-1 window), `pooled_size`
(the default target: about half the kernel), `kernel_pooling_matrix` (the explicit linear map, the
test oracle). FLOP counting lives in `fastnets.ops.flops`. The Flax side (running any model with
pooled kernels) is `fastnets.nn.downsample`; the training-loop option is
`fastnets.train.downsampling`.
"""

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.checks import pair

Size2 = Union[int, Sequence[int]]


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
  fh, fw = pair(factor, "factor")
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
  th, tw = pair(target, "target")
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
