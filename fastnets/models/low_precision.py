"""The small networks of the limited-precision experiments (Gupta et al. 2015; Wang et al. 2018).

`LowPrecisionNet` is an MLP (Gupta's MNIST network, 784-1000-1000-10, at any width) or the Caffe
"cifar10 quick"-style CNN Gupta used on CIFAR-10, with every Dense/Conv layer named `layer<i>` so
that per-layer number formats (`fastnets.ops.QuantConfig`, selected by module name inside
`fastnets.nn.quantized`) and per-parameter formats can address it. Its kernels can start in a
format (round-to-nearest at initialisation, so the weights begin representable), and its
evaluation can run the quantised forward pass, so that test accuracy measures the low-precision
network and not its float32 shadow.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import ops
from fastnets.nn.quantization import quantized
from fastnets.ops import QuantConfig

__all__ = ["LowPrecisionNet"]


def _rounded_init(base: Callable, fmt: Optional[ops.Format]) -> Callable:
  """Kernel initialiser whose values are rounded (to nearest) to `fmt`: params start in it."""
  if fmt is None:
    return base

  def init(key, shape, dtype=jnp.float32):
    return ops.round_nearest(base(key, shape, dtype), fmt)

  return init


class LowPrecisionNet(nn.Module):
  """An MLP or a small CNN whose layers are named layer0, layer1, ... (for per-layer formats).

  Attributes:
    num_classes: logits.
    kind: "mlp" (Dense layers of widths `features`) or "cnn" (5x5 SAME convs of `features`
      channels, each followed by ReLU and 2x2 max-pooling, then a Dense of `dense` units).
    features: see kind.
    dense: cnn only, the dense hidden width.
    kernel_formats: per layer, the format the initial kernel is rounded to (None: float32).
      Biases start at zero, which every format holds.
    eval_select: module -> QuantConfig or None, applied (round to nearest) when train=False, so
      that evaluation measures the low-precision network. None: float32 evaluation.
  """
  num_classes: int = 10
  kind: str = "mlp"
  features: Sequence[int] = (100, 100)
  dense: int = 64
  kernel_formats: Optional[tuple] = None
  eval_select: Optional[Callable] = None

  def num_layers(self) -> int:
    """Number of Dense/Conv layers (layer0 .. layer{n-1}), the length of `kernel_formats`."""
    return len(self.features) + (2 if self.kind == "cnn" else 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, H, W, C) float32 -> (batch, num_classes) float32 logits."""
    if self.kind not in ("mlp", "cnn"):
      raise ValueError(f"kind must be 'mlp' or 'cnn', got {self.kind!r}.")
    if not train and self.eval_select is not None:
      with quantized(QuantConfig(), select=self.eval_select):
        return self._forward(x)
    return self._forward(x)

  def _forward(self, x):
    fmts = self.kernel_formats or (None,) * self.num_layers()
    base = nn.initializers.lecun_normal()
    i = 0
    if self.kind == "cnn":
      for f in self.features:
        x = nn.Conv(f, (5, 5), padding="SAME", kernel_init=_rounded_init(base, fmts[i]),
                    name=f"layer{i}")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
        i += 1
      widths = [self.dense]
    else:
      widths = list(self.features)
    x = x.reshape((x.shape[0], -1))
    for f in widths:
      x = nn.relu(nn.Dense(f, kernel_init=_rounded_init(base, fmts[i]), name=f"layer{i}")(x))
      i += 1
    return nn.Dense(self.num_classes, kernel_init=_rounded_init(base, fmts[i]),
                    name=f"layer{i}")(x).astype(jnp.float32)
