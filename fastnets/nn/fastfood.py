"""Fastfood layers: a drop-in replacement of `nn.Dense` with O(n) parameters (Deep Fried Convnets).

Yang, Moczulski, Denil, de Freitas, Smola, Song & Wang, "Deep Fried Convnets", ICCV 2015, Sec. 3:
a fully connected layer `y = W x + b` is replaced by stacked Fastfood blocks
`y = [V_1; ...; V_k] x + b`, `V_j = S_j H G_j Pi_j H B_j` (`fastnets.ops.fastfood_transform`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.ops.fastfood import fastfood_permutations, fastfood_scaling_init, fastfood_transform
from fastnets.ops.hadamard import next_power_of_two, pad_to_power_of_two

__all__ = ["FASTFOOD_CONSTANTS", "FastfoodDense"]

# Variable collection of the fixed (non-trained) parts of Fastfood layers.
FASTFOOD_CONSTANTS = "fastfood_constants"


class FastfoodDense(nn.Module):
  """`y = V x + b` with V stacked Fastfood blocks `S H G Pi H B` (Yang et al. 2015, Sec. 3).

  The input (`in_features` = last axis) is zero-padded to `d = next_power_of_two(in_features)`;
  `ceil(features / d)` blocks of size d are stacked and the `n_blocks * d` outputs are truncated to
  `features`. Each block is `S Hn G Pi Hn B` with the orthonormal Hadamard `Hn`
  (`fastnets.ops.fastfood_transform`).

  Variables:
    * adaptive=True (Deep Fried Convnets' "adaptive Fastfood"): `params` `S`, `G`, `B` of shape
      `(n_blocks, d)` are learned; the permutation `perm` `(n_blocks, d)` int32 lives in the
      `"fastfood_constants"` collection.
    * adaptive=False (Le et al. 2013's Fastfood): `S`, `G`, `B` and `perm` all live in the
      `"fastfood_constants"` collection, so an optimizer over `params` never updates them and
      `jax.grad` with respect to `params` never sees them. Only the bias (if any) is trained.
    Keep the collection with the model state and pass it back in `apply`
    (`model.apply({"params": p, "fastfood_constants": c}, x)`); `fastnets.train` keeps every
    non-"params" collection in `TrainState.model_state` and does so.
    `bias` `(features,)` is a param in both cases.

  Parameter count: `3 * n_blocks * d` (+ `features` for the bias) when adaptive, against
  `in_features * features` for `nn.Dense`: O(n) instead of O(n d).

  Initialisation: Le et al.'s random draws (as `fastfood_params_init`: B +-1, G normal, S from
  `fastfood_scaling_init`, perm from `fastfood_permutations`) with row scale
  `init_scale / sqrt(in_features)`: each row of V has the length of a row of i.i.d.
  `N(0, init_scale^2 / in_features)` entries, the LeCun-normal variance of `nn.Dense`'s default.

  Attributes:
    features: number of outputs.
    adaptive: learn S, G, B (True) or keep them fixed random (False).
    use_bias: add a learned bias.
    init_scale: multiplies the initial row scale `1 / sqrt(in_features)`.
    bias_init: bias initializer.
    dtype: computation dtype (default: result type of inputs and parameters).
    param_dtype: dtype of S, G, B and bias.
    impl: Hadamard implementation for `fastnets.ops.fwht` ("auto", "xla", "pallas").
  """
  features: int
  adaptive: bool = True
  use_bias: bool = True
  init_scale: float = 1.0
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer.

    Args:
      x: `(..., in_features)` floating input.

    Returns:
      `(..., features)` output.

    Raises:
      ValueError: if `features` is not a positive int or x is a scalar.
    """
    if isinstance(self.features, bool) or not isinstance(self.features, int) or self.features < 1:
      raise ValueError(f"FastfoodDense: features must be a positive int, got {self.features!r}")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] < 1:
      raise ValueError(f"FastfoodDense: x must have shape (..., in_features), got {x.shape}")
    in_features = x.shape[-1]
    d = next_power_of_two(in_features)
    n_blocks = -(-self.features // d)
    scale = self.init_scale / math.sqrt(in_features)

    shape = (n_blocks, d)
    pdt = self.param_dtype

    def init_b(key):
      return jax.random.rademacher(key, shape, dtype=pdt)

    def init_g(key):
      return jax.random.normal(key, shape, pdt)

    def init_s(key, g):  # S depends on the drawn G (row lengths ~ chi_d / ||G_j||)
      return fastfood_scaling_init(key, g, scale=scale, dtype=pdt)

    # Constants are drawn once, at init, from the "params" rng (the lambdas run only when the
    # variable does not exist yet).
    perm = self.variable(FASTFOOD_CONSTANTS, "perm",
                         lambda: fastfood_permutations(self.make_rng("params"), n_blocks, d)).value
    if self.adaptive:
      b = self.param("B", init_b)
      g = self.param("G", init_g)
      s = self.param("S", init_s, g)
    else:
      b = self.variable(FASTFOOD_CONSTANTS, "B", lambda: init_b(self.make_rng("params"))).value
      g = self.variable(FASTFOOD_CONSTANTS, "G", lambda: init_g(self.make_rng("params"))).value
      s = self.variable(FASTFOOD_CONSTANTS, "S",
                        lambda: init_s(self.make_rng("params"), g)).value
    for name, v in (("S", s), ("G", g), ("B", b), ("perm", perm)):
      if v.shape != shape:
        raise ValueError(f"FastfoodDense: variable {name} has shape {v.shape}, expected {shape} "
                         f"for in_features={in_features}, features={self.features}")

    x, s, g, b = nn.dtypes.promote_dtype(x, s, g, b, dtype=self.dtype)
    y = fastfood_transform(pad_to_power_of_two(x, axis=-1), s, g, b, perm, impl=self.impl)
    y = y[..., :self.features]
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + jnp.asarray(bias, y.dtype)
    return y
