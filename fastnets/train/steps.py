"""Train state and the jit-able classification train and eval steps.

A *loss function* is the plug-in point for techniques: any function
`loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))`
can be turned into a train step. `classification_loss(model)` is the default.
"""

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from fastnets import ops

LossFn = Callable[[Any, Any, Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, tuple[Any, dict]]]


class TrainState(struct.PyTreeNode):
  """What changes during training: everything needed for exact resumption.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: trainable parameters ("params" collection).
    model_state: the model's other variable collections (e.g. "batch_stats").
    opt_state: the optimizer's state.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                     sample_input: jax.Array) -> TrainState:
  """Initialises model variables (`model.init(key, x, train=False)`) and optimizer state.

  `fit` and `fit_seeds` call it op by op, not under `jit`: each initializer's program (e.g. a
  truncated normal of one kernel shape, which XLA:CPU compiles slowly) then compiles once per
  shape and is reused by every seed, every layer and model of that shape and, through a
  persistent compilation cache, every process. One jitted initialisation compiles all of them
  again for each model and, with seeds unrolled, for each seed. Initializer draws are bit for
  bit the same either way; a parameter computed from draws (Fastfood's scaling S) can differ in
  the last bit, because one jitted program fuses that arithmetic differently.
  """
  variables = model.init({"params": key, "dropout": key}, sample_input, train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=tx.init(params))


def classification_loss(model: nn.Module, label_smoothing: float = 0.0,
                        rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """The default loss: softmax cross-entropy of `model(batch["image"], train=True)`.

  Returns:
    loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, {"accuracy": ...})).
    Mutable collections (batch statistics) are updated once per call; each name in `rng_streams`
    gets an independent key derived from `rng`.
  """

  def loss_fn(params, model_state, batch, rng):
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(rng_streams)}
    logits, new_state = model.apply({"params": params, **model_state}, batch["image"], train=True,
                                    rngs=rngs, mutable=list(model_state))
    loss = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return loss, (dict(new_state), {"accuracy": ops.accuracy(logits, batch["label"])})

  return loss_fn


# Every key of a run derives from `jax.random.key(seed)`: step s trains with `fold_in(key, s)` and
# initialisation takes an index no step reaches.
INIT_KEY_INDEX = 2**31 - 1


def init_key(seed: int) -> jax.Array:
  """The key that initialises the model of the run with `seed` (`fit`, `fit_seeds`)."""
  return jax.random.fold_in(jax.random.key(seed), INIT_KEY_INDEX)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, seed: int):
  """Builds `train_step(state, batch, metric_sums) -> (state, metric_sums)` (not jitted).

  `metric_sums` accumulates the step metrics ("loss", "grad_norm" and the loss function's own)
  between progress reports, plus "count" and "first_nonfinite_step" (-1 while the loss and the
  gradients are finite), so that the host reads them only when it reports (no per-step sync).
  The step's PRNG key is `fold_in(key(seed), step)`: identical whether or not the run resumed.
  """
  keyed_step = make_keyed_train_step(loss_fn, tx)
  run_key = jax.random.key(seed)

  def train_step(state: TrainState, batch, metric_sums):
    return keyed_step(state, batch, metric_sums, run_key)

  return train_step


def make_keyed_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  """`make_train_step` with the run's key as an argument instead of a constant.

  Returns `train_step(state, batch, metric_sums, run_key) -> (state, metric_sums)` where
  `run_key = jax.random.key(seed)`; the step's key is `fold_in(run_key, state.step)`. With the key
  an argument, one program can train several seeds (`fit_seeds` maps it over stacked states).
  """

  def train_step(state: TrainState, batch, metric_sums, run_key):
    rng = jax.random.fold_in(run_key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (new_model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch,
                                                        rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree_utils.tree_norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, **metrics}
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    sums = dict(metric_sums)
    for name, value in metrics.items():
      sums[name] = sums.get(name, jnp.zeros((), jnp.float32)) + jnp.asarray(value, jnp.float32)
    sums["count"] = metric_sums["count"] + 1
    sums["first_nonfinite_step"] = jnp.where(
        (metric_sums["first_nonfinite_step"] < 0) & ~finite, state.step,
        metric_sums["first_nonfinite_step"])
    new_state = state.replace(step=state.step + 1, params=params, model_state=new_model_state,
                              opt_state=opt_state)
    return new_state, sums

  return train_step


def empty_metric_sums(metric_names: Sequence[str]) -> dict:
  """Zeroed accumulators for `make_train_step` (names: the step's metrics, see there)."""
  sums = {name: jnp.zeros((), jnp.float32) for name in metric_names}
  sums["count"] = jnp.zeros((), jnp.int32)
  sums["first_nonfinite_step"] = jnp.full((), -1, jnp.int32)
  return sums


def make_eval_step(model: nn.Module):
  """Builds `eval_step(state, batch) -> {"correct", "loss_sum", "count"}` over masked examples."""

  def eval_step(state: TrainState, batch):
    logits = model.apply({"params": state.params, **state.model_state}, batch["image"],
                         train=False)
    mask = batch["mask"]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"correct": jnp.sum(correct * mask), "loss_sum": jnp.sum(nll * mask),
            "count": jnp.sum(mask)}

  return eval_step
