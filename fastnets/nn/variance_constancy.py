"""The variance-constancy tap: where a model exposes activations to VCL (Littwin & Wolf 2018)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

VCL_COLLECTION = "vcl"


class VarianceConstancy(nn.Module):
  """An identity layer that owns VCL's learned beta and sows its input for the loss.

  Placed after an activation (the paper applies VCL to the ELU outputs), it returns `x` unchanged
  and, in training with the `collection` mutable, sows `activation` = x and `beta` into it. The
  loss itself (`fastnets.ops.variance_constancy_total`, Eq. 4) is computed by the training loss
  (`fastnets.train.variance_constancy_loss_fn`), which reads every tap's pair from the sown
  collection: no forward hooks, and models without taps are refused there.

  Attributes:
    beta_init: initial beta (the reference initialises it to 1), one per unit (last axis).
    collection: the sow collection.

  Shapes: x (batch, ..., units) -> the same x. Parameter `beta`: (units,) float32.
  """
  beta_init: float = 1.0
  collection: str = VCL_COLLECTION

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    beta = self.param("beta", nn.initializers.constant(self.beta_init), (x.shape[-1],),
                      jnp.float32)
    if train:
      self.sow(self.collection, "activation", x)
      self.sow(self.collection, "beta", beta)
    return x
