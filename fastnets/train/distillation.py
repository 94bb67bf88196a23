"""Loss functions for `fit`: auxiliary losses a model sows, and knowledge transfer (PKT, KD).

Both return `loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))`, the
`fit(..., loss_fn=...)` hook.
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import ops
from fastnets.train.steps import LossFn

# A fixed map from images to (teacher logits or None, teacher features); it is evaluated under
# `stop_gradient`, so it may close over trained teacher parameters or be a handcrafted projection.
TeacherFn = Callable[[jax.Array], tuple[Optional[jax.Array], jax.Array]]


def _rngs(rng, streams):
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(streams)}


def with_sown_losses(model: nn.Module, weight: float = 1.0, collection: str = "losses",
                     label_smoothing: float = 0.0, rng_streams=("dropout",)) -> LossFn:
  """Cross-entropy plus `weight` times the sum of everything the model sows into `collection`.

  For example GM-SOP's gate balance loss (`fastnets.nn.GMSOP` sows "losses"/"gate_balance").
  The sown values are read from a fresh collection each step (never stored in the model state).
  Metrics: "accuracy" and "aux_loss" (the unweighted sown sum).
  """

  def loss_fn(params, model_state, batch, rng):
    logits, new_state = model.apply({"params": params, **model_state}, batch["image"], train=True,
                                    rngs=_rngs(rng, rng_streams),
                                    mutable=list(model_state) + [collection])
    new_state = dict(new_state)
    sown = new_state.pop(collection, {})
    new_state.pop("intermediates", None)
    aux = sum((jnp.sum(jnp.asarray(v)) for v in jax.tree.leaves(sown)), jnp.zeros((), jnp.float32))
    ce = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return ce + weight * aux, (new_state, {"accuracy": ops.accuracy(logits, batch["label"]),
                                           "aux_loss": aux})

  return loss_fn


def distillation_loss(student: nn.Module, teacher_fn: TeacherFn, *, pkt_weight: float = 0.0,
                      kd_weight: float = 0.0, temperature: float = 4.0, ce_weight: float = 1.0,
                      rng_streams=("dropout",)) -> LossFn:
  """Student training with probabilistic knowledge transfer and/or Hinton distillation.

      loss = ce_weight * CE(student logits, labels)
             + pkt_weight * PKT(student features, teacher features)     (Passalis & Tefas 2018)
             + kd_weight * T^2 KL(teacher soft targets || student's)    (Hinton et al. 2015)

  Args:
    student: a model called as `student(x, train=True, return_features=True)` returning
      (logits, features) (e.g. `fastnets.models.PoolingCNN`).
    teacher_fn: images -> (teacher logits or None, teacher features); evaluated under
      `jax.lax.stop_gradient`. Logits are needed only when kd_weight > 0.
    pkt_weight, kd_weight, temperature, ce_weight: the weights above (>= 0).

  Metrics: "accuracy", "ce", "pkt", "kd".
  """
  if min(pkt_weight, kd_weight, ce_weight) < 0:
    raise ValueError(f"weights must be >= 0, got pkt_weight={pkt_weight}, kd_weight={kd_weight}, "
                     f"ce_weight={ce_weight}.")

  def loss_fn(params, model_state, batch, rng):
    (logits, features), new_state = student.apply(
        {"params": params, **model_state}, batch["image"], train=True, return_features=True,
        rngs=_rngs(rng, rng_streams), mutable=list(model_state))
    t_logits, t_features = jax.lax.stop_gradient(teacher_fn(batch["image"]))
    ce = ops.cross_entropy_loss(logits, batch["label"])
    zero = jnp.zeros((), jnp.float32)
    pkt = ops.pkt_loss(features, t_features) if pkt_weight else zero
    if kd_weight:
      if t_logits is None:
        raise ValueError("kd_weight > 0 needs teacher logits; teacher_fn returned None.")
      kd = ops.distillation_kl(logits, t_logits, temperature)
    else:
      kd = zero
    loss = ce_weight * ce + pkt_weight * pkt + kd_weight * kd
    return loss, (dict(new_state), {"accuracy": ops.accuracy(logits, batch["label"]), "ce": ce,
                                    "pkt": pkt, "kd": kd})

  return loss_fn
