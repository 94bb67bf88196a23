"""Classification losses and metrics shared by every model and experiment."""

import jax
import jax.numpy as jnp
import numpy as np


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> None:
  if logits.ndim != 2:
    raise ValueError(f"logits must have shape (batch, classes), got shape {logits.shape}.")
  if labels.shape != logits.shape[:1]:
    raise ValueError(
        f"labels must have shape (batch,) = {logits.shape[:1]} matching logits, "
        f"got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}.")


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy.

  Args:
    logits: float array of shape (batch, classes).
    labels: integer array of shape (batch,) with values in [0, classes).
    label_smoothing: mass moved uniformly over all classes (Szegedy et al. 2016), in [0, 1).

  Returns:
    Scalar float32 loss, computed in float32 whatever the logits' dtype. A label outside
    [0, classes) is an error when the labels are concrete; under `jit` (traced labels) it makes
    the loss NaN, which the training loop stops on, instead of silently contributing zero.
  """
  _check_logits_labels(logits, labels)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  num_classes = logits.shape[-1]
  in_range = (labels >= 0) & (labels < num_classes)
  if not isinstance(labels, jax.core.Tracer):
    # numpy, not jnp: under an outer jit a jnp op on concrete labels gives a tracer.
    concrete = np.asarray(labels)
    concrete_in_range = (concrete >= 0) & (concrete < num_classes)
    if not concrete_in_range.all():
      bad = concrete[~concrete_in_range]
      raise ValueError(f"labels must lie in [0, {num_classes}) (the logits' classes), got "
                       f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}.")
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
  return jnp.where(jnp.all(in_range), loss, jnp.nan)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose arg-max equals the label: float32 scalar in [0, 1].

  Args:
    logits: float array of shape (batch, classes).
    labels: integer array of shape (batch,).
  """
  _check_logits_labels(logits, labels)
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float = 4.0) -> jax.Array:
  """Hinton et al. (2015) knowledge distillation: T^2 KL(softmax(t / T) || softmax(s / T)).

  The T^2 factor keeps the soft targets' gradient magnitude independent of T (Sec. 2 of the
  paper). The teacher logits are used as given: wrap them in `jax.lax.stop_gradient` when the
  teacher must not move.

  Args:
    student_logits, teacher_logits: (batch, classes) float, the same shape.
    temperature: T > 0.

  Returns: scalar float32, the batch mean.
  """
  if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
    raise ValueError(f"student_logits and teacher_logits must both be (batch, classes), got "
                     f"{student_logits.shape} and {teacher_logits.shape}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature}.")
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature**2 * jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))
