"""The adversarial noise layer (ANL / CANL; You et al. 2018, "Adversarial Noise Layer")."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import ops

# Collections: the layer's state (running scale, CANL's class table), the per-step noise
# directions the training loss passes in, and Flax's perturbation collection, through which the
# loss reads dL/d(activation).
ANL_STATE = "adversarial_noise"
ANL_DIRECTIONS = "noise_directions"
ANL_PERTURBATIONS = "perturbations"
ANL_RNG = "adversarial_noise"


class AdversarialNoise(nn.Module):
  """Adds adversarial noise to its input in training; the identity at evaluation.

  In training, with a direction d for this step in the `noise_directions` collection (per
  example, the shape of x), the output is

      x + r * sigma * d / ||d||_inf     (per example; r ~ clip(N(eps/2, (eps/4)^2), 0, eps))

  (`fastnets.ops.adversarial_noise`), where sigma is a running estimate of the activation's
  standard deviation (state `adversarial_noise/scale`, an exponential average with `momentum`,
  updated whenever the state is mutable). The output then passes through `self.perturb`, so a loss
  that differentiates with respect to the `perturbations` collection gets dL/dx of this layer.
  The directions come from the training losses of `fastnets.train.adversarial`: ANL's are the
  current batch's own gradients (a clean pass first), CANL's the class table kept here
  (`class_direction`, (num_classes, *x.shape[1:]), when `num_classes` > 0), which the CANL loss
  refreshes from each step's recorded gradients. Without directions (plain `fit`, evaluation)
  nothing is added.

  Attributes:
    eps: the relative noise level (> 0; the paper's official configs use small values such as
      0.02 to 0.1).
    num_classes: > 0 keeps CANL's class table.
    momentum: of the running scale.

  Shapes: x (batch, ...) -> the same shape and dtype. Needs the "adversarial_noise" rng when
  directions are given.
  """
  eps: float = 0.05
  num_classes: int = 0
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ops.check_eps(self.eps, "AdversarialNoise")
    scale = self.variable(ANL_STATE, "scale",
                          lambda: jnp.std(jax.lax.stop_gradient(x)).astype(jnp.float32))
    if self.num_classes:
      self.variable(ANL_STATE, "class_direction",
                    lambda: jnp.zeros((self.num_classes,) + x.shape[1:], jnp.float32))
    if not train:
      return x
    if self.is_mutable_collection(ANL_STATE) and not self.is_initializing():
      batch_std = jnp.std(jax.lax.stop_gradient(x)).astype(jnp.float32)
      scale.value = self.momentum * scale.value + (1 - self.momentum) * batch_std
    if self.has_variable(ANL_DIRECTIONS, "activation"):
      direction = self.get_variable(ANL_DIRECTIONS, "activation")
      if direction.shape != x.shape:
        raise ValueError(f"AdversarialNoise: the noise direction has shape {direction.shape}, "
                         f"the activation {x.shape}.")
      r = ops.noise_magnitudes(self.make_rng(ANL_RNG), x.shape[0], self.eps)
      x = x + ops.adversarial_noise(direction, r * scale.value).astype(x.dtype)
    return self.perturb("activation", x, collection=ANL_PERTURBATIONS)
