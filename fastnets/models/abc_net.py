"""A small ABC-Net CNN (Lin, Zhao, Pan, NeurIPS 2017) for MNIST-size inputs, and its float twin.

Layout (as the paper, the first and the last layer stay in full precision):

    Conv(c0, 3x3) -> max-pool -> BN -> [binary] Conv(c1, 3x3) -> max-pool -> BN
    -> [binary] Dense(hidden) -> BN -> Dense(num_classes)

With `binary=True` the bracketed layers are `fastnets.nn.ABCConv` / `ABCDense` with M weight bases
and N binary activations (the binarisation of their input is the nonlinearity); with
`binary=False` they are `nn.Conv` / `nn.Dense` preceded by a ReLU: the full-precision network the
binary one is compared with. Batch norm keeps running statistics (`batch_stats`, mutable in
training).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn.binary import ABCConv, ABCDense


class ABCCNN(nn.Module):
  """Attributes:
    num_classes: output logits.
    channels: (c0, c1) conv channels; c0 is the full-precision first layer.
    hidden: units of the (binary) dense hidden layer.
    binary: ABC layers in the middle (True) or their full-precision counterparts (False).
    weight_bases: M of the ABC layers.
    activation_bases: N of the ABC layers.
  """
  num_classes: int = 10
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  binary: bool = True
  weight_bases: int = 1
  activation_bases: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, height, width, channels) float. Returns: (batch, num_classes) logits."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    mn = dict(weight_bases=self.weight_bases, activation_bases=self.activation_bases)
    x = nn.Conv(self.channels[0], (3, 3), padding="SAME")(x)
    x = norm()(nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))
    if self.binary:
      x = ABCConv(self.channels[1], (3, 3), padding="SAME", **mn)(x)
    else:
      x = nn.Conv(self.channels[1], (3, 3), padding="SAME")(nn.relu(x))
    x = norm()(nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))
    x = x.reshape((x.shape[0], -1))
    x = ABCDense(self.hidden, **mn)(x) if self.binary else nn.Dense(self.hidden)(nn.relu(x))
    x = norm()(x)
    if not self.binary:
      x = nn.relu(x)
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)
