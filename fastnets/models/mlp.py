"""A multilayer perceptron classifier (LeNet-300-100 by default), the dense model of sparse
training papers (FreeTickets, Liu et al. 2022; RigL, Evci et al. 2020)."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten, Dense-ReLU per hidden width, Dense classifier.

  Attributes:
    num_classes: logits.
    hidden: hidden widths ((300, 100): LeNet-300-100 on 784 MNIST pixels).
  """
  num_classes: int = 10
  hidden: Sequence[int] = (300, 100)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (N, ...) float, flattened per example. Returns (N, num_classes) float32 logits."""
    del train
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)
