"""Training-dynamics tools: the VCL loss for `fit`, per-layer statistics, learning-rate sweeps.

- `variance_constancy_loss_fn`: cross-entropy plus the variance-constancy loss (Littwin & Wolf
  2018) of every `fastnets.nn.VarianceConstancy` tap the model sows.
"""

from typing import Sequence

import flax.linen as nn
import jax

from fastnets import ops
from fastnets.nn.variance_constancy import VCL_COLLECTION
from fastnets.train.steps import LossFn

# The VCL sub-batches draw from fold_in(step key, _VCL_STREAM), a stream no rng_streams index uses.
_VCL_STREAM = 1_000_003


def variance_constancy_loss_fn(model: nn.Module, weight: float = 1.0, sub_batch: int = 5,
                               collection: str = VCL_COLLECTION, label_smoothing: float = 0.0,
                               rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """`fit`'s loss: CE + `weight` * sum over taps of VCL (Littwin & Wolf 2018, Eq. 4).

  The model is applied once with `collection` mutable; each `VarianceConstancy` tap sows its
  activation and learned beta there (never stored in the model state). The two sub-batches of
  each tap are drawn from the step's key, so a run is reproducible and resumes exactly.

  Args:
    model: a model containing `fastnets.nn.VarianceConstancy` taps, called as
      `model(x, train=True)`.
    weight: the VCL weight (> 0).
    sub_batch: examples per sub-batch; at most half the per-step batch.
    collection: the taps' sow collection.

  Returns:
    loss_fn with metrics "accuracy" and "vcl" (the unweighted sum).

  Raises (when traced):
    ValueError: the model sowed no activations into `collection`.
  """
  if not weight > 0:
    raise ValueError(f"weight must be > 0, got {weight!r}.")
  if not isinstance(sub_batch, int) or sub_batch < 2:
    raise ValueError(f"sub_batch must be an int >= 2, got {sub_batch!r}.")

  def loss_fn(params, model_state, batch, rng):
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(rng_streams)}
    logits, new_state = model.apply({"params": params, **model_state}, batch["image"], train=True,
                                    rngs=rngs, mutable=list(model_state) + [collection])
    new_state = dict(new_state)
    acts, betas = ops.sown_pairs(new_state.pop(collection, {}))
    if not acts:
      raise ValueError(f"model: {type(model).__name__} sowed no activations into collection "
                       f"{collection!r}; VCL needs fastnets.nn.VarianceConstancy taps in it.")
    vcl = ops.variance_constancy_total(jax.random.fold_in(rng, _VCL_STREAM), acts, betas,
                                       sub_batch)
    ce = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return ce + weight * vcl, (new_state, {"accuracy": ops.accuracy(logits, batch["label"]),
                                           "vcl": vcl})

  return loss_fn
