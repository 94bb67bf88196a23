"""GAN losses and the maxout activation (pure functions on logits and arrays).

The losses are the ones of the PacGAN code (Lin et al. 2018; Goodfellow et al. 2014, Section 3,
"non-saturating" generator loss): with D's logits l (sigmoid(l) = probability of "real"),
  discriminator: mean(softplus(-l_real)) + mean(softplus(l_fake))  = -log D(x) - log(1 - D(G(z)))
  generator:     mean(softplus(-l_fake))                            = -log D(G(z))
softplus keeps both finite for any logit (no log(sigmoid) underflow).
"""

import jax
import jax.numpy as jnp


def _check_logits(logits, name):
  if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
    raise TypeError(f"{name} must be floating-point logits, got dtype {jnp.result_type(logits)}.")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The discriminator's cross-entropy: mean softplus(-real) + mean softplus(fake).

  Args:
    real_logits: (n_real,) or (n_real, 1) float logits of D on real (packs of) samples.
    fake_logits: (n_fake,) or (n_fake, 1) float logits on generated (packs of) samples.

  Returns:
    float32 scalar.
  """
  _check_logits(real_logits, "real_logits")
  _check_logits(fake_logits, "fake_logits")
  real = jnp.asarray(real_logits, jnp.float32)
  fake = jnp.asarray(fake_logits, jnp.float32)
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The non-saturating generator loss -log D(G(z)) = mean softplus(-fake_logits).

  Args:
    fake_logits: (n,) or (n, 1) float logits of D on generated (packs of) samples.

  Returns:
    float32 scalar.
  """
  _check_logits(fake_logits, "fake_logits")
  return jnp.mean(jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)))


def maxout(x: jax.Array, pieces: int) -> jax.Array:
  """Maxout (Goodfellow et al. 2013): each unit is the max of `pieces` linear pieces.

  The last axis of width pieces * units is read as (pieces, units): unit u is the max of
  x[..., p * units + u] over p. (Blocks' `LinearMaxout`, used by the PacGAN code, reads it as
  (units, pieces); with i.i.d. initial weights the two are the same model up to a permutation of
  the preceding layer's columns. This layout reduces over a non-minor axis, which XLA on CPU
  differentiates several times faster than a reduction over the minor axis.)

  Args:
    x: (..., pieces * units) pre-activations.
    pieces: number of linear pieces per unit (>= 1).

  Returns:
    (..., units).

  Raises:
    ValueError: the last axis does not divide by `pieces`, or pieces < 1.
  """
  if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
    raise ValueError(f"pieces must be a positive int, got {pieces!r}.")
  if x.shape[-1] % pieces:
    raise ValueError(f"the last axis of x ({x.shape[-1]}) must be divisible by pieces={pieces}.")
  if pieces == 1:
    return x
  return jnp.max(x.reshape(x.shape[:-1] + (pieces, x.shape[-1] // pieces)), axis=-2)
