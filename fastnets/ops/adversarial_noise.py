"""Adversarial noise for hidden activations (ANL / CANL; You et al. 2018) and FGSM on inputs.

An adversarial noise layer (ANL) adds to an activation x, in training only, noise along the
gradient of the loss with respect to x, scaled relative to the activation's magnitude:

    x~ = x + r * sigma(x) * g / ||g||_inf,   r ~ clip(N(eps/2, (eps/4)^2), 0, eps)

per example, where g = dL/dx of that example and sigma(x) a running estimate of the activation's
standard deviation (the official code's rule: a clipped normal around eps/2 times the input's
scale). The class-level variant (CANL) replaces each example's g by a direction kept per class
(the normalised sum of the class's gradients of the last step that saw the class), so the noise
needs no second forward/backward pass.

FGSM (Goodfellow et al. 2015) perturbs the input instead: x + eps * sign(dL/dx), clipped to the
valid range; it is both a training-time augmentation and the attack the paper evaluates.

Pure functions; randomness comes in as an explicit key (first argument).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from fastnets import checks


def check_eps(eps, fn: str) -> float:
  """`eps` as a float, or ValueError naming `fn` unless it is a finite number > 0."""
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
    raise ValueError(f"{fn}: eps must be a finite number > 0, got {eps!r}.")
  return float(eps)


def noise_magnitudes(key: jax.Array, n: int, eps: float) -> jax.Array:
  """Per-example relative noise magnitudes r ~ clip(N(eps/2, (eps/4)^2), 0, eps).

  Returns: (n,) float32 in [0, eps].
  """
  checks.check_key(key, "noise_magnitudes")
  eps = check_eps(eps, "noise_magnitudes")
  r = eps / 2 + eps / 4 * jax.random.normal(key, (n,), jnp.float32)
  return jnp.clip(r, 0.0, eps)


def adversarial_noise(direction: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Noise along `direction` with per-example max-norm `magnitude`.

  Args:
    direction: (batch, ...) gradient (or class direction) per example.
    magnitude: (batch,) non-negative norms (e.g. `noise_magnitudes(...) * sigma`).

  Returns:
    (batch, ...) noise n with ||n_i||_inf = magnitude_i where direction_i is non-zero, and n_i = 0
    where it is zero (no gradient recorded yet). Not differentiated (a constant of the step).
  """
  if magnitude.shape != direction.shape[:1]:
    raise ValueError(f"adversarial_noise: magnitude must have shape (batch,) = "
                     f"{direction.shape[:1]}, got {magnitude.shape}.")
  direction = jax.lax.stop_gradient(direction)
  axes = tuple(range(1, direction.ndim))
  peak = jnp.max(jnp.abs(direction), axis=axes, keepdims=True)
  unit = jnp.where(peak > 0, direction / jnp.where(peak > 0, peak, 1.0), 0.0)
  shape = (-1,) + (1,) * (direction.ndim - 1)
  return jax.lax.stop_gradient(unit * magnitude.reshape(shape).astype(unit.dtype))


def class_directions(grads: jax.Array, labels: jax.Array, num_classes: int,
                     previous: Optional[jax.Array] = None) -> jax.Array:
  """CANL's per-class noise directions from one step's per-example gradients.

  Args:
    grads: (batch, ...) gradients of the loss with respect to the activation.
    labels: (batch,) int class ids in [0, num_classes).
    num_classes: rows of the table.
    previous: (num_classes, ...) the table so far; classes absent from this batch keep their row
      (None: they get zeros).

  Returns:
    (num_classes, ...) table: row c is the sum of class c's gradients scaled to max-norm 1.
  """
  if labels.shape != grads.shape[:1]:
    raise ValueError(f"class_directions: labels must have shape (batch,) = {grads.shape[:1]}, "
                     f"got {labels.shape}.")
  sums = jax.ops.segment_sum(jax.lax.stop_gradient(grads), labels, num_segments=num_classes)
  axes = tuple(range(1, sums.ndim))
  peak = jnp.max(jnp.abs(sums), axis=axes, keepdims=True)
  table = jnp.where(peak > 0, sums / jnp.where(peak > 0, peak, 1.0), 0.0)
  if previous is None:
    return table
  if previous.shape != table.shape:
    raise ValueError(f"class_directions: previous must have shape {table.shape}, got "
                     f"{previous.shape}.")
  seen = jnp.zeros((num_classes,), bool).at[labels].set(True).reshape((-1,) + (1,) * len(axes))
  return jnp.where(seen, table, previous)


def fgsm(x: jax.Array, grad: jax.Array, eps, lo=None, hi=None) -> jax.Array:
  """The fast gradient sign perturbation x + eps * sign(grad), clipped to [lo, hi].

  Args:
    x: inputs (any shape); grad: dL/dx of the same shape.
    eps: step (> 0), a scalar or broadcastable to x (per channel for normalised images).
    lo, hi: the valid range (broadcastable), or None for no clipping.
  """
  if grad.shape != x.shape:
    raise ValueError(f"fgsm: grad must have the shape of x {x.shape}, got {grad.shape}.")
  if isinstance(eps, (int, float)):
    check_eps(eps, "fgsm")
  out = x + eps * jnp.sign(jax.lax.stop_gradient(grad))
  if lo is not None or hi is not None:
    out = jnp.clip(out, lo, hi)
  return out
