"""Pure functions on arrays (no Flax state, no globals): the numerical core of fastnets.

Every op takes arrays (and, where random, an explicit `jax.random` key first) and returns arrays.
Custom gradients (`jax.custom_vjp`) live next to the forward function they differentiate.
"""

from fastnets.ops.losses import accuracy, cross_entropy_loss

__all__ = ["accuracy", "cross_entropy_loss"]
