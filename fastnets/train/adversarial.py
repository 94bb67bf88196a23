"""Training losses for adversarial noise layers (ANL, CANL; You et al. 2018), FGSM adversarial
training (Goodfellow et al. 2015), and the FGSM evaluation.

Where the gradient with respect to the noisy activation comes from:

- ANL (`anl_loss_fn`): a two-pass step inside one loss function. A clean forward/backward pass
  (parameters held constant) gives dL/dx at every `fastnets.nn.AdversarialNoise` layer for the
  current batch; the noisy forward pass then uses it, and only that pass is differentiated with
  respect to the parameters. ANL needs each example's own gradient, which only exists after a
  pass over that example, hence about twice the cost of a plain step.
- CANL (`canl_loss_fn`): one pass. The noise uses each layer's class table (directions recorded
  on earlier steps); the same backward pass that gives the parameter gradients also gives dL/dx,
  recorded into the table for the next steps (`value_and_recorded_grad`: a custom VJP whose
  forward runs the forward and the backward pass of the loss once and returns the activation
  gradient beside the loss, and whose backward rule reuses the parameter gradient).

Both are ordinary `fit` loss functions (`loss_fn(params, model_state, batch, rng)`), so they run
under `jit`, `fit_seeds` and data parallelism like any other.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fastnets import ops
from fastnets.data import Dataset, eval_batches
from fastnets.nn.adversarial_noise import ANL_DIRECTIONS, ANL_PERTURBATIONS, ANL_RNG, ANL_STATE
from fastnets.train.steps import LossFn, TrainState


def _rngs(rng, streams):
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(streams)}


def value_and_recorded_grad(f: Callable, params, side, *args):
  """Runs `f(params, side, *args) -> (loss, aux)` forward and backward once.

  Returns `(loss, aux, dloss/dside)`; `loss` is differentiable with respect to `params` (its
  gradient is the one computed in the same backward pass, not a second one), while `side` and
  `args` are treated as constants; `f` must not close over traced values (pass them in `args`).
  This is how a loss records the gradient at an intermediate
  activation (`side`: zero perturbations added to it) during the training step that also
  computes the parameter gradients.
  """

  def both(params, side, args):
    (loss, aux), (g_params, g_side) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        params, side, *args)
    return (loss, aux, g_side), g_params

  @jax.custom_vjp
  def run(params, side, args):
    return both(params, side, args)[0]

  def fwd(params, side, args):
    return both(params, side, args)

  def bwd(g_params, cotangents):
    ct_loss = cotangents[0]
    return jax.tree.map(lambda g: (ct_loss * g).astype(g.dtype), g_params), None, None

  run.defvjp(fwd, bwd)
  return run(params, side, tuple(args))


def zero_perturbations(model: nn.Module, variables, images, rngs, mutable: Sequence[str]):
  """Zeros for every `AdversarialNoise` layer's perturbation (shapes only are traced)."""
  shapes = jax.eval_shape(
      lambda v: model.apply(v, images, train=True, rngs=rngs,
                            mutable=list(mutable) + [ANL_PERTURBATIONS])[1][ANL_PERTURBATIONS],
      variables)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(shapes))


def activation_grads(model: nn.Module, variables, batch, rngs, label_smoothing: float = 0.0):
  """dL/dx at every `AdversarialNoise` layer for `batch` (a clean pass, no noise added).

  Returns the tree of the `perturbations` collection: {layer path: {"activation": dL/dx}}.
  The model state is not updated, and no gradient flows to `variables`.
  """
  variables = jax.lax.stop_gradient(variables)
  mutable = [k for k in variables if k != "params"]
  perts = zero_perturbations(model, variables, batch["image"], rngs, mutable)
  if not perts:
    raise ValueError(f"model: {type(model).__name__} has no AdversarialNoise layer.")

  def clean_loss(perts):
    logits, _ = model.apply({**variables, ANL_PERTURBATIONS: perts}, batch["image"], train=True,
                            rngs=rngs, mutable=mutable)
    return ops.cross_entropy_loss(logits, batch["label"], label_smoothing)

  return jax.grad(clean_loss)(perts)


def anl_loss_fn(model: nn.Module, label_smoothing: float = 0.0,
                rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """ANL training (You et al. 2018): noise from each example's own gradient, a two-pass step.

  Metrics: "accuracy" (of the noisy pass; the clean pass only provides directions). The model
  must contain `fastnets.nn.AdversarialNoise` layers.
  """
  streams = tuple(rng_streams) + (ANL_RNG,)

  def loss_fn(params, model_state, batch, rng):
    rngs = _rngs(rng, streams)
    variables = {"params": params, **model_state}
    # The perturbation tree and the directions tree share their layout.
    directions = activation_grads(model, variables, batch, rngs, label_smoothing)
    logits, new_state = model.apply({**variables, ANL_DIRECTIONS: directions}, batch["image"],
                                    train=True, rngs=rngs, mutable=list(model_state))
    loss = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return loss, (dict(new_state), {"accuracy": ops.accuracy(logits, batch["label"])})

  return loss_fn


def _class_tables(model_state):
  flat = traverse_util.flatten_dict(dict(model_state.get(ANL_STATE, {})))
  return {path[:-1]: table for path, table in flat.items() if path[-1] == "class_direction"}


def canl_loss_fn(model: nn.Module, label_smoothing: float = 0.0,
                 rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """CANL training: class-level adversarial noise in one forward/backward pass.

  Each `AdversarialNoise(num_classes=C)` layer adds noise along its class table's row of each
  example's label; the step's own dL/dx (recorded in the same backward pass) refreshes the rows of
  the classes in the batch (`ops.class_directions`), for the next step. Before a class has been
  seen its row is zero and adds no noise.

  Metrics: "accuracy".
  """
  streams = tuple(rng_streams) + (ANL_RNG,)

  def loss_fn(params, model_state, batch, rng):
    rngs = _rngs(rng, streams)
    tables = _class_tables(model_state)
    if not tables:
      raise ValueError(f"model: {type(model).__name__} has no AdversarialNoise layer with "
                       "num_classes > 0 (CANL's class tables).")
    labels = batch["label"]
    directions = traverse_util.unflatten_dict(
        {path + ("activation",): table[labels] for path, table in tables.items()})
    perts = zero_perturbations(model, {"params": params, **model_state}, batch["image"], rngs,
                               list(model_state))

    # Everything traced is an explicit argument: a custom VJP must not close over tracers.
    def f(params, perts, model_state, batch, directions, rngs):
      logits, new_state = model.apply(
          {"params": params, **model_state, ANL_DIRECTIONS: directions,
           ANL_PERTURBATIONS: perts}, batch["image"], train=True, rngs=rngs,
          mutable=list(model_state))
      return ops.cross_entropy_loss(logits, batch["label"], label_smoothing), (new_state, logits)

    loss, (new_state, logits), grads = value_and_recorded_grad(f, params, perts, model_state,
                                                               batch, directions, rngs)
    flat_grads = traverse_util.flatten_dict(dict(grads))
    flat_state = traverse_util.flatten_dict(dict(new_state[ANL_STATE]))
    for path, table in tables.items():
      flat_state[path + ("class_direction",)] = ops.class_directions(
          flat_grads[path + ("activation",)], labels, table.shape[0], previous=table)
    new_state = {**dict(new_state), ANL_STATE: traverse_util.unflatten_dict(flat_state)}
    return loss, (new_state, {"accuracy": ops.accuracy(logits, labels)})

  return loss_fn


def input_grads(model: nn.Module, variables, images, labels, train: bool = False, rngs=None):
  """dCE/d(images) of the model (evaluation mode by default), batch-mean loss."""
  variables = jax.lax.stop_gradient(variables)
  mutable = [k for k in variables if k != "params"] if train else False

  def loss(x):
    out = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable)
    logits = out[0] if train else out
    return ops.cross_entropy_loss(logits, labels)

  return jax.grad(loss)(images)


def fgsm_training_loss_fn(model: nn.Module, eps, lo=None, hi=None, adv_weight: float = 0.5,
                          rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """FGSM adversarial training (Goodfellow et al. 2015, Eq. 6):

      (1 - adv_weight) * CE(x) + adv_weight * CE(x + eps * sign(dCE/dx))

  the adversarial inputs made from the current parameters in training mode, both halves in one
  forward pass of the concatenated batch. `eps`, `lo`, `hi` are in the model's input units (for
  normalised images: pixel eps / std and the normalised pixel range; see `fgsm_input_range`).
  """
  if not 0 <= adv_weight <= 1:
    raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight!r}.")

  def loss_fn(params, model_state, batch, rng):
    rngs = _rngs(rng, rng_streams)
    x, labels = batch["image"], batch["label"]
    g = input_grads(model, {"params": params, **model_state}, x, labels, train=True, rngs=rngs)
    x_adv = ops.fgsm(x, g, eps, lo, hi)
    logits, new_state = model.apply({"params": params, **model_state},
                                    jnp.concatenate([x, x_adv]), train=True, rngs=rngs,
                                    mutable=list(model_state))
    n = x.shape[0]
    clean = ops.cross_entropy_loss(logits[:n], labels)
    adv = ops.cross_entropy_loss(logits[n:], labels)
    loss = (1 - adv_weight) * clean + adv_weight * adv
    return loss, (dict(new_state), {"accuracy": ops.accuracy(logits[:n], labels),
                                    "adv_accuracy": ops.accuracy(logits[n:], labels)})

  return loss_fn


def fgsm_input_range(dataset: Dataset, eps: float):
  """(eps, lo, hi) in normalised input units for a pixel-scale (0..1) FGSM step `eps`."""
  eps = ops.check_eps(eps, "fgsm_input_range")
  std, mean = np.asarray(dataset.std, np.float32), np.asarray(dataset.mean, np.float32)
  return (jnp.asarray(eps / std), jnp.asarray((0.0 - mean) / std),
          jnp.asarray((1.0 - mean) / std))


def fgsm_evaluator(model: nn.Module, dataset: Dataset, eps_values, split: str = "test",
                   batch_size: int = 1000) -> Callable[[TrainState], dict]:
  """`evaluate(state) -> {eps: accuracy}` on `split` under white-box FGSM at each pixel-scale
  eps (0: clean), every example counted once; the attack is compiled once for all states and
  eps values (call it for each seed's state)."""
  eps_values = [float(e) for e in eps_values]
  if any(e < 0 for e in eps_values):
    raise ValueError(f"eps_values must be >= 0, got {eps_values}.")
  ranges = []
  for e in eps_values:
    step, lo, hi = fgsm_input_range(dataset, e if e > 0 else 1.0)
    ranges.append((step if e > 0 else jnp.zeros_like(step), lo, hi))

  @jax.jit
  def correct(variables, images, labels, mask, eps, lo, hi):
    g = input_grads(model, variables, images, labels)
    x = ops.fgsm(images, g, eps, lo, hi)
    pred = jnp.argmax(model.apply(variables, x, train=False), -1)
    return jnp.sum((pred == labels) * mask)

  batches = [{k: jnp.asarray(v) for k, v in b.items()}
             for b in eval_batches(dataset, dataset.split(split), batch_size)]
  count = sum(float(b["mask"].sum()) for b in batches)

  def evaluate(state: TrainState) -> dict:
    variables = {"params": state.params, **state.model_state}
    # Summed on the device; one transfer to the host for all eps values and batches.
    totals = jax.device_get({
        e: sum(correct(variables, b["image"], b["label"], b["mask"], *r) for b in batches)
        for e, r in zip(eps_values, ranges)})
    return {e: float(t) / max(count, 1.0) for e, t in totals.items()}

  return evaluate
