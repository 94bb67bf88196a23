"""Fastfood layers: a drop-in replacement of `nn.Dense` with O(n) parameters (Deep Fried Convnets).

Yang, Moczulski, Denil, de Freitas, Smola, Song & Wang, "Deep Fried Convnets", ICCV 2015, Sec. 3:
a fully connected layer `y = W x + b` is replaced by stacked Fastfood blocks
`y = [V_1; ...; V_k] x + b`, `V_j = S_j H G_j Pi_j H B_j` (`fastnets.ops.fastfood_transform`).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fastnets.ops.fastfood import fastfood_permutations, fastfood_scaling_init, fastfood_transform
from fastnets.ops.hadamard import next_power_of_two, pad_to_power_of_two

__all__ = ["FASTFOOD_CONSTANTS", "FASTFOOD_DIAGONALS", "FastfoodDense",
           "scale_fastfood_updates"]

# Variable collection of the fixed (non-trained) parts of Fastfood layers.
FASTFOOD_CONSTANTS = "fastfood_constants"
# The learned diagonals of an adaptive layer: its `params` leaves of these names.
FASTFOOD_DIAGONALS = ("S", "G", "B")


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
    non-"params" collection in `TrainState.model_state` and does so. To use the plain Flax idiom
    (`model.apply({"params": params}, x)`) instead, set `constants_seed`: the constants are then
    no variables at all but trace-time constants drawn from that seed and the layer's path in the
    model (distinct per layer, identical on every call). Applying a layer without its constants
    and without `constants_seed` raises an error that says so.
    `bias` `(features,)` is a param in both cases.

  Training the adaptive diagonals: with Adam at the learning rate of the rest of a network, the
  S, G, B updates are too small to move them (Deep Fried Convnets trains them at a larger rate);
  chain `scale_fastfood_updates(mult)` after the optimizer (fastnets' deep_fried experiment
  tunes `mult` on the validation split).

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
    constants_seed: None (constants live in the `"fastfood_constants"` collection, drawn from the
      "params" rng at init) or an int (trace-time constants from this seed: no collection).
  """
  features: int
  adaptive: bool = True
  use_bias: bool = True
  init_scale: float = 1.0
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  impl: str = "auto"
  constants_seed: Optional[int] = None

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
    if not (isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale)
            and self.init_scale > 0):
      raise ValueError("FastfoodDense: init_scale must be a positive finite number, got "
                       f"{self.init_scale!r}")
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

    if self.constants_seed is not None:
      if isinstance(self.constants_seed, bool) or not isinstance(self.constants_seed, int):
        raise ValueError("FastfoodDense: constants_seed must be None or an int, got "
                         f"{self.constants_seed!r}")
      # The layer's path makes two layers of one model draw different constants.
      path_hash = zlib.crc32("/".join(self.scope.path).encode())
      const_key = jax.random.fold_in(jax.random.key(self.constants_seed), path_hash)
      keys = iter(jax.random.split(const_key, 4))
      constant = lambda name, init: init(next(keys))
    else:
      if not self.is_initializing() and not self.has_variable(FASTFOOD_CONSTANTS, "perm"):
        raise ValueError(
            f"FastfoodDense at {'/'.join(self.scope.path) or '<root>'}: the "
            f"{FASTFOOD_CONSTANTS!r} collection is missing. Pass every collection init "
            "returned, `model.apply(variables, x)` (not only {'params': ...}), or build the "
            "layer with constants_seed=<int> to make its constants trace-time constants.")
      # Drawn once, at init, from the "params" rng (the lambdas run only when the variable does
      # not exist yet).
      constant = lambda name, init: self.variable(
          FASTFOOD_CONSTANTS, name, lambda: init(self.make_rng("params"))).value
    perm = constant("perm", lambda key: fastfood_permutations(key, n_blocks, d))
    if self.adaptive:
      b = self.param("B", init_b)
      g = self.param("G", init_g)
      s = self.param("S", init_s, g)
    else:
      b = constant("B", init_b)
      g = constant("G", init_g)
      s = constant("S", lambda key: init_s(key, g))
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


def _key_name(k):
  return getattr(k, "key", getattr(k, "name", None))


def fastfood_diagonal_mask(tree: Any) -> Any:
  """A pytree of bools like `tree`: True at the Fastfood diagonals S, G and B.

  A leaf is a diagonal when its name is one of `FASTFOOD_DIAGONALS` and its parent (the layer's
  dict, as `FastfoodDense` creates) holds a leaf of each of the three names; everything else is
  False. Use it as the mask of `optax.masked` to treat the diagonals apart.
  """
  paths = [tuple(map(_key_name, path)) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
  names = set(paths)
  parents = {n[:-1] for n in names if n[-1] in FASTFOOD_DIAGONALS}
  layers = {p for p in parents if all(p + (d,) in names for d in FASTFOOD_DIAGONALS)}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (tuple(map(_key_name, path[:-1])) in layers
                       and _key_name(path[-1]) in FASTFOOD_DIAGONALS), tree)


def scale_fastfood_updates(mult: float) -> optax.GradientTransformation:
  """An optax transformation that multiplies the updates of Fastfood diagonals by `mult`.

  Chain it after the optimizer, `optax.chain(optax.adam(lr), scale_fastfood_updates(30.0))`: the
  adaptive layer's S, G and B (any dict of `params` holding all three of `FASTFOOD_DIAGONALS`, as
  `FastfoodDense` does) then train at `mult` times the learning rate, everything else at the rate
  given. Deep Fried Convnets (Yang et al. 2015) trains the diagonals at their own rate; with Adam a
  larger one is needed for them to move at all. It is `optax.masked(optax.scale(mult),
  fastfood_diagonal_mask)`.

  Args:
    mult: positive finite multiplier.

  Raises:
    ValueError: `mult` not positive and finite.
  """
  if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) \
      or mult <= 0:
    raise ValueError(f"scale_fastfood_updates: mult must be a positive finite number, got {mult!r}")

  return optax.masked(optax.scale(mult), fastfood_diagonal_mask)
