"""A small CNN whose last pooling is a choice: GAP, iSQRT-COV covariance, or GM-SOP.

The same convolutional trunk feeds one of three heads, so that an experiment compares the
pooling alone (GM-SOP paper, Wang et al. NeurIPS 2018, Tables 1-2: GAP vs SR-SOP vs GM-SOP).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn.second_order import GMSOP, CovariancePooling

HEADS = ("gap", "covariance", "gm_sop")


class PoolingCNN(nn.Module):
  """Conv-ReLU-maxpool stages, a final conv, a pooling head, a linear classifier.

  Attributes:
    num_classes: output logits.
    head: "gap" (global average pooling), "covariance" (`nn.CovariancePooling`) or "gm_sop"
      (`nn.GMSOP`).
    channels: output channels of the conv stages (each followed by 2x2 max pooling), then a
      3x3 conv with `channels[-1]` outputs and no pooling (the map the head pools).
    sop_dim: channels of each second-order component after its 1x1 reduction.
    num_components, k: GM-SOP's N and K.
    num_iters: Newton-Schulz iterations.

  `__call__(x, train=False, return_features=False)`: x (batch, h, w, c) -> logits
  (batch, num_classes) float32, or (logits, pooled features) with return_features (the features
  PKT transfers and retrieval ranks).
  """
  num_classes: int = 10
  head: str = "gap"
  channels: Sequence[int] = (16, 32)
  sop_dim: int = 12
  num_components: int = 4
  k: int = 2
  num_iters: int = 5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    for features in self.channels:
      x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = nn.relu(nn.Conv(self.channels[-1], (3, 3), padding="SAME")(x))
    if self.head == "gap":
      features = jnp.mean(x, axis=(1, 2))
    elif self.head == "covariance":
      features = CovariancePooling(dim=self.sop_dim, num_iters=self.num_iters)(x)
    else:
      features = GMSOP(num_components=self.num_components, k=self.k, dim=self.sop_dim,
                       num_iters=self.num_iters)(x, train=train)
    logits = nn.Dense(self.num_classes)(features).astype(jnp.float32)
    return (logits, features) if return_features else logits
