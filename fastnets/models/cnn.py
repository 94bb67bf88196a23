"""A small convolutional classifier: the fastnets baseline for MNIST-size inputs."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """Two conv-ReLU-maxpool stages, a dense hidden layer with dropout, and a linear classifier.

  The default configuration (32 and 64 channels, 3x3 kernels, 256 hidden units) is the familiar
  LeNet-style MNIST net; it is the baseline the technique papers compare against.

  Attributes:
    num_classes: number of output logits.
    channels: output channels of the conv stages.
    hidden: width of the dense hidden layer.
    dropout_rate: dropout before the classifier (training only; needs the "dropout" rng).
  """
  num_classes: int = 10
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, height, width, channels) float. Returns: (batch, num_classes) logits."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    for features in self.channels:
      x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)
