"""Input fast-forwarding: FFNet (Ibrahim, Abbott, Hussein 2017, "Input Fast-Forwarding for Better
Deep Learning", ICIAR) and a generic fast-forward wrapper.

The released net (aicentral/FFNet `train_val.prototxt`): six stages; each stage has a main path of
three 3x3 convolutions with 64 channels and ReLU (the first two unpadded, the third with pad 1,
so the main path loses 4 pixels) and a fast-forward branch from the stage's input, a 5x5 unpadded
convolution with 64 channels and ReLU (also -4 pixels); the two are concatenated (branch first) to
128 channels. A 28x28 input gives 24, 20, 16, 12, 8, 4. Then three fully connected layers 400,
100, 10 with no nonlinearity between them (as released), softmax. Weights use Caffe's "xavier"
filler (uniform, variance 1 / fan_in), conv biases 0.2, FC biases 0. 24 conv layers (the
abstract says 20). Solver (not part of the model): SGD lr 0.001, momentum 0.9, weight decay 2e-4,
x0.96 every 20k of 400k iterations, batch 32, CIFAR-10 crops of 28 with mirroring.

`FFNet(fast_forward=False)` is the ablation: the same main paths without the branches (stages of
64 channels). `FastForward` adds an input fast-forward branch to any block.
"""

import inspect
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.checks import pair

# Caffe's "xavier" filler: U(-sqrt(3 / fan_in), sqrt(3 / fan_in)), i.e. variance 1 / fan_in.
caffe_xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
Size = Union[int, Sequence[int]]


def _optional_pair(value: Optional[Size], name: str) -> Optional[tuple[int, int]]:
  return None if value is None else pair(value, name)


def _check_nhwc(x: jax.Array, min_size: int, what: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f"{what} needs inputs of at least {min_size}x{min_size}, got spatial size "
                     f"{tuple(x.shape[1:3])}.")


class FFNetMainPath(nn.Module):
  """An FFNet stage's main path: conv3x3 (unpadded), conv3x3 (unpadded), conv3x3 (pad 1), each
  followed by ReLU; the spatial size shrinks by 4."""
  features: int = 64
  bias_init_value: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    conv = lambda name, padding: nn.Conv(
        self.features, (3, 3), padding=padding, kernel_init=caffe_xavier,
        bias_init=nn.initializers.constant(self.bias_init_value), name=name)
    x = nn.relu(conv("conv1", "VALID")(x))
    x = nn.relu(conv("conv2", "VALID")(x))
    return nn.relu(conv("conv3", ((1, 1), (1, 1)))(x))


class FFNetStage(nn.Module):
  """One FFNet stage: main path (64 ch) and, with `fast_forward`, a 5x5 unpadded conv + ReLU of
  the stage input concatenated before it (128 ch), as in the released prototxt."""
  features: int = 64
  fast_forward: bool = True
  ff_kernel: int = 5
  bias_init_value: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = FFNetMainPath(self.features, self.bias_init_value, name="main")(x, train)
    if not self.fast_forward:
      return y
    b = nn.Conv(self.features, (self.ff_kernel, self.ff_kernel), padding="VALID",
                kernel_init=caffe_xavier, bias_init=nn.initializers.constant(self.bias_init_value),
                name="ff")(x)
    return jnp.concatenate([nn.relu(b), y], axis=-1)


class FFNet(nn.Module):
  """The released FFNet (Ibrahim et al. 2017) and, with `fast_forward=False`, its ablation.

  Attributes:
    num_classes: logits (10 in the paper).
    features: channels of every conv (64 released; smaller for quick CPU runs).
    stages: number of stages (6); each removes 4 pixels, so inputs need 4 * stages + 1 pixels.
    fast_forward: the input fast-forward branches (False: the ablation).
    fc_features: the hidden fully connected layers (400, 100).
    fc_activation: applied after each hidden FC layer; None (the released net has none).
    bias_init_value: conv bias initialisation (0.2).
  """
  num_classes: int = 10
  features: int = 64
  stages: int = 6
  fast_forward: bool = True
  fc_features: Sequence[int] = (400, 100)
  fc_activation: Optional[Callable[[jax.Array], jax.Array]] = None
  bias_init_value: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (N, H, W, C), H, W >= 4 * stages + 1. Returns: (N, num_classes) float32 logits."""
    if self.stages < 1 or self.features < 1:
      raise ValueError(f"stages and features must be positive, got {self.stages}, "
                       f"{self.features}.")
    _check_nhwc(x, 4 * self.stages + 1, f"FFNet with {self.stages} stages (each -4 pixels)")
    for i in range(self.stages):
      x = FFNetStage(self.features, self.fast_forward, bias_init_value=self.bias_init_value,
                     name=f"stage{i + 1}")(x, train)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.fc_features):
      x = nn.Dense(width, kernel_init=caffe_xavier, name=f"fc{i + 1}")(x)
      if self.fc_activation is not None:
        x = self.fc_activation(x)
    x = nn.Dense(self.num_classes, kernel_init=caffe_xavier,
                 name=f"fc{len(self.fc_features) + 1}")(x)
    return x.astype(jnp.float32)


def ffnet_spatial_sizes(size: int, stages: int = 6) -> list[int]:
  """Spatial size after each FFNet stage for a `size` x `size` input (28 -> 24, 20, ..., 4)."""
  return [size - 4 * (i + 1) for i in range(stages)]


def _accepts_train(module: nn.Module) -> bool:
  try:
    return "train" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


class FastForward(nn.Module):
  """Generic input fast-forwarding (Ibrahim et al. 2017): `concat([act(branch(x)), body(x)])`.

  The branch is one convolution of the block's input whose geometry is chosen so that its output
  has the body's spatial size: with stride s and kernel k the padding is
  (H_out - 1) s + k - H_in (split low/high); by default k = H_in - (H_out - 1) s, i.e. no
  padding (an FFNet stage: 28 -> 24 gives the released 5x5 unpadded branch; a stride-2 block
  28 -> 14 with strides=2 gives a 2x2 stride-2 branch).

  Attributes:
    body: the wrapped block, called as `body(x, train=train)` if it takes `train`, else `body(x)`.
    features: branch channels (64 in FFNet).
    kernel_size: branch kernel (int or pair); None: the unpadded size (see above).
    strides: branch stride (int or pair), 1 by default (FFNet).
    activation: applied to the branch (ReLU); None for none.
    branch_first: concatenation order (FFNet puts the branch first).
  """
  body: nn.Module
  features: int = 64
  kernel_size: Optional[Size] = None
  strides: Size = 1
  activation: Optional[Callable[[jax.Array], jax.Array]] = nn.relu
  branch_first: bool = True
  kernel_init: Callable[..., Any] = caffe_xavier
  bias_init: Callable[..., Any] = nn.initializers.constant(0.2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (N, H, W, C). Returns: (N, H', W', features + body channels), body's H', W'."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    y = self.body(x, train=train) if _accepts_train(self.body) else self.body(x)
    if y.ndim != 4 or y.shape[0] != x.shape[0]:
      raise ValueError(f"body must map (N, H, W, C) to (N, H', W', C'), got {x.shape} -> "
                       f"{y.shape}.")
    strides = _optional_pair(self.strides, "strides")
    given = _optional_pair(self.kernel_size, "kernel_size")
    kernel, padding = [], []
    for d in range(2):
      h_in, h_out, s = x.shape[1 + d], y.shape[1 + d], strides[d]
      k = given[d] if given else h_in - (h_out - 1) * s
      pad = (h_out - 1) * s + k - h_in
      if k < 1 or pad < 0 or (h_in + pad - k) // s + 1 != h_out:
        raise ValueError(
            f"no fast-forward branch maps spatial size {h_in} to the body's {h_out} with "
            f"kernel_size={self.kernel_size!r}, strides={self.strides!r}; set strides (and "
            "kernel_size) to the body's downsampling.")
      kernel.append(k)
      padding.append((pad // 2, pad - pad // 2))
    b = nn.Conv(self.features, tuple(kernel), strides, padding=tuple(padding),
                kernel_init=self.kernel_init, bias_init=self.bias_init, name="branch")(x)
    if self.activation is not None:
      b = self.activation(b)
    b = b.astype(y.dtype)
    return jnp.concatenate([b, y] if self.branch_first else [y, b], axis=-1)
