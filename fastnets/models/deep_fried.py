"""The deep fried convnet (Yang et al., "Deep Fried Convnets", ICCV 2015) and its dense twin.

A LeNet-style convolutional trunk (conv-ReLU-maxpool twice, as in the paper's MNIST experiments)
followed by fully connected hidden layers that are either `nn.Dense` (the baseline) or Fastfood
layers (`fastnets.nn.FastfoodDense`, adaptive or not), and a dense softmax classifier. As in the
paper, the Fastfood transform replaces the hidden fully connected layers, which hold most of the
parameters; the small classification layer stays dense.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn.fastfood import FastfoodDense

__all__ = ["DeepFriedConvnet", "FC_KINDS", "fc_param_count"]

FC_KINDS = ("dense", "fastfood_adaptive", "fastfood_nonadaptive")


class DeepFriedConvnet(nn.Module):
  """Conv trunk + hidden FC layers (dense or Fastfood) + dense classifier.

  Layers: for each of `channels`: `Conv(c, kernel_size, VALID)` - ReLU - 2x2 max-pool; flatten;
  for each width h in `hidden`: FC(h) - ReLU (- dropout), where FC is `nn.Dense(h)` (fc="dense"),
  `FastfoodDense(h, adaptive=True)` ("fastfood_adaptive", Deep Fried Convnets' adaptive Fastfood,
  Sec. 3) or `FastfoodDense(h, adaptive=False)` ("fastfood_nonadaptive", Le et al.'s fixed random
  Fastfood); then `nn.Dense(num_classes)`. The hidden layers are named `fc_0`, `fc_1`, ... (see
  `fc_param_count`), the classifier `classifier`.

  With the defaults on 28x28x1 MNIST: trunk 28 -> 24 -> 12 -> 8 -> 4, 800 features; `fc_0` has
  820,224 parameters as a Dense layer and 4,096 as an adaptive Fastfood layer (S, G, B of size
  1024 and the bias); the non-adaptive one trains only its 1,024 biases.

  Non-adaptive and adaptive Fastfood layers keep their permutation (and, non-adaptive, S, G, B) in
  the "fastfood_constants" variable collection: keep it with the model state.

  Attributes:
    num_classes: number of logits.
    fc: one of "dense", "fastfood_adaptive", "fastfood_nonadaptive".
    hidden: widths of the hidden FC layers.
    channels: output channels of the conv stages.
    kernel_size: square conv kernel size.
    dropout_rate: dropout after each hidden layer when training (needs the "dropout" rng if > 0).
    dtype: computation dtype of the layers (None: float32 parameters and inputs decide).
  """
  num_classes: int = 10
  fc: str = "fastfood_adaptive"
  hidden: Sequence[int] = (1024,)
  channels: Sequence[int] = (20, 50)
  kernel_size: int = 5
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: `(batch, height, width, channels)` float images (NHWC).
      train: enables dropout.

    Returns:
      `(batch, num_classes)` float32 logits.

    Raises:
      ValueError: if x is not 4-D or `fc` is unknown.
    """
    if self.fc not in FC_KINDS:
      raise ValueError(f"DeepFriedConvnet: fc must be one of {FC_KINDS}, got {self.fc!r}")
    if x.ndim != 4:
      raise ValueError(
          f"DeepFriedConvnet: x must be NHWC (batch, height, width, channels), got shape {x.shape}")
    k = (self.kernel_size, self.kernel_size)
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, k, padding="VALID", dtype=self.dtype, name=f"conv_{i}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")
    x = x.reshape((x.shape[0], -1))
    for i, h in enumerate(self.hidden):
      name = f"fc_{i}"
      if self.fc == "dense":
        layer = nn.Dense(h, dtype=self.dtype, name=name)
      else:
        layer = FastfoodDense(h, adaptive=self.fc == "fastfood_adaptive", dtype=self.dtype,
                              name=name)
      x = nn.relu(layer(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def fc_param_count(params) -> int:
  """Number of trainable parameters in the hidden FC layers (`fc_*`) of a `DeepFriedConvnet`.

  Args:
    params: the "params" collection of a `DeepFriedConvnet`.

  Returns:
    The total size of the arrays under the top-level `fc_*` entries (the "replaced" layers).
  """
  return sum(int(a.size) for name, sub in params.items() if name.startswith("fc_")
             for a in jax.tree_util.tree_leaves(sub))
