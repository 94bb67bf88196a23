"""PacGAN's generators and discriminators (Lin, Khetan, Fanti, Oh, NeurIPS 2018, Section 4).

Synthetic (2-D ring and grid), as the paper's code (fjxmlzn/PacGAN, synthetic_data_experiments):
  * `MLPGenerator`: z (2-D N(0, I)) -> 400 -> 400 -> 400 -> 400 -> 2; each hidden layer is a
    Linear without bias, BatchNorm (learned scale and shift), ReLU; the output Linear has a bias.
  * `MaxoutDiscriminator`: 3 maxout layers (200 units, 5 pieces each) and a Linear logit; the
    input width is 2m for pack degree m (wrap it in `fastnets.nn.Packed`).
  * every weight ~ N(0, 0.02^2), biases 0.

Stacked MNIST (VEEGAN setting, Table 2): a small DCGAN pair (`DCGANGenerator`,
`DCGANDiscriminator`): transposed convolutions with BatchNorm and ReLU to a tanh 28x28x3 image;
strided convolutions with leaky ReLU to a logit. Narrower than the paper's TensorFlow DCGAN
(64/128 filters, no 4th stage) so it trains on a CPU; see `experiments/pacgan.py`.

These are generative models, not classifiers: they are deliberately not in the classification
registry (`fastnets.models.create_model`).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.models.cnn import SmallCNN
from fastnets.ops import gan as gan_ops

INIT_STD = 0.02


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


class MLPGenerator(nn.Module):
  """PacGAN's 2-D generator: `depth` x (Linear without bias, BatchNorm, ReLU), then Linear.

  Attributes:
    hidden: width of the hidden layers (the paper: 400).
    depth: number of hidden layers (the paper: 4).
    out_dim: output dimension (2).
    init_std: std of the N(0, std^2) weight initialisation (0.02).
    bn_momentum: running-average momentum of the BatchNorm statistics (the code: 0.95, i.e. new =
      0.95 old + 0.05 batch).
    bn_epsilon: BatchNorm epsilon (Blocks' default 1e-4).
  """
  hidden: int = 400
  depth: int = 4
  out_dim: int = 2
  init_std: float = INIT_STD
  bn_momentum: float = 0.95
  bn_epsilon: float = 1e-4

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Args: z: (batch, z_dim) float noise; train: batch statistics (True) or running ones.

    Returns: (batch, out_dim) float32 samples.
    """
    if z.ndim != 2:
      raise ValueError(f"z must be (batch, z_dim), got shape {z.shape}.")
    x = z
    for _ in range(self.depth):
      x = nn.Dense(self.hidden, use_bias=False, kernel_init=_normal(self.init_std))(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon)(x)
      x = nn.relu(x)
    return nn.Dense(self.out_dim, kernel_init=_normal(self.init_std))(x)


class MaxoutDiscriminator(nn.Module):
  """PacGAN's 2-D discriminator: `depth` maxout layers and a Linear logit.

  Input (batch, 2m) for pack degree m (use `fastnets.nn.Packed` to form the packs).

  Attributes:
    hidden: maxout units per layer (the paper: 200).
    pieces: linear pieces per maxout unit (5).
    depth: number of maxout layers (3).
    init_std: std of the N(0, std^2) weight initialisation (0.02).
  """
  hidden: int = 200
  pieces: int = 5
  depth: int = 3
  init_std: float = INIT_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, features) packed samples. Returns: (batch,) float32 logits."""
    del train  # No batch statistics or dropout.
    if x.ndim != 2:
      raise ValueError(f"x must be (batch, features), got shape {x.shape}.")
    for _ in range(self.depth):
      x = nn.Dense(self.hidden * self.pieces, kernel_init=_normal(self.init_std))(x)
      x = gan_ops.maxout(x, self.pieces)
    return nn.Dense(1, kernel_init=_normal(self.init_std))(x)[:, 0].astype(jnp.float32)


class DCGANGenerator(nn.Module):
  """A small DCGAN generator for 28x28 images (stacked MNIST: 3 channels).

  z -> Dense(7*7*4f) -> BN, ReLU -> ConvTranspose(2f, 4x4, stride 2) -> BN, ReLU ->
  ConvTranspose(channels, 4x4, stride 2) -> tanh.

  Attributes:
    features: base width f (the paper's DCGAN: 64; default 32 for CPU training).
    channels: output channels (3 for stacked MNIST).
    init_std: weight init std (DCGAN: 0.02).
  """
  features: int = 32
  channels: int = 3
  init_std: float = INIT_STD

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Args: z: (batch, z_dim). Returns: (batch, 28, 28, channels) float32 in [-1, 1]."""
    if z.ndim != 2:
      raise ValueError(f"z must be (batch, z_dim), got shape {z.shape}.")
    f = self.features
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    x = nn.Dense(7 * 7 * 4 * f, kernel_init=_normal(self.init_std))(z)
    x = nn.relu(bn()(x.reshape((-1, 7, 7, 4 * f))))
    x = nn.ConvTranspose(2 * f, (4, 4), strides=(2, 2), padding="SAME",
                         kernel_init=_normal(self.init_std))(x)
    x = nn.relu(bn()(x))
    x = nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2), padding="SAME",
                         kernel_init=_normal(self.init_std))(x)
    return jnp.tanh(x).astype(jnp.float32)


class DCGANDiscriminator(nn.Module):
  """A small DCGAN discriminator: Conv(f, 4x4, /2), lReLU, Conv(2f, 4x4, /2), lReLU, Dense logit.

  No batch norm (so packs of real and fake never share statistics); input (batch, 28, 28, 3m) for
  pack degree m via `fastnets.nn.Packed`.

  Attributes:
    features: base width f (default 32).
    init_std: weight init std (0.02).
  """
  features: int = 32
  init_std: float = INIT_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, H, W, C) images in [-1, 1]. Returns: (batch,) float32 logits."""
    del train
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got {x.shape}.")
    for features in (self.features, 2 * self.features):
      x = nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME",
                  kernel_init=_normal(self.init_std))(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(1, kernel_init=_normal(self.init_std))(x)[:, 0].astype(jnp.float32)


def digit_classifier(channels: Sequence[int] = (32, 64), hidden: int = 256) -> SmallCNN:
  """The SmallCNN that labels stacked-MNIST channels (train it with `fastnets.train.fit`; see
  `fastnets.train.gan.train_digit_classifier`)."""
  return SmallCNN(num_classes=10, channels=tuple(channels), hidden=hidden)
