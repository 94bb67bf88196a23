"""Training-dynamics tools: the VCL loss for `fit`, per-layer statistics, learning-rate sweeps.

- `variance_constancy_loss_fn`: cross-entropy plus the variance-constancy loss (Littwin & Wolf
  2018) of every `fastnets.nn.VarianceConstancy` tap the model sows.
- `layer_statistics` / `LayerStatsRecorder`: mean, standard deviation and largest magnitude of
  every selected layer's output and of the loss gradient with respect to it (Bjorck et al. 2018
  study how both grow with depth with and without batch norm). The outputs are captured by a Flax
  method interceptor that adds a zero to each selected output, so the model needs no changes and
  gains no parameters; the recorder is a `fit` callback on a fixed probe batch, compiled once.
- `lr_sweep`: one run per learning rate, where a run that diverges (NaN/Inf) is a result that is
  recorded, and the sweep goes on.
"""

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import ops
from fastnets.nn.variance_constancy import VCL_COLLECTION
from fastnets.train.loop import NonFiniteLossError
from fastnets.train.steps import LossFn, TrainState

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


STAT_NAMES = ("mean", "std", "max_abs")


def _stats(x):
  x = x.astype(jnp.float32)
  return {"mean": jnp.mean(x), "std": jnp.std(x), "max_abs": jnp.max(jnp.abs(x))}


def _default_select(module: nn.Module) -> bool:
  return len(module.path) == 1  # The model's direct submodules (blocks and layers).


def layer_statistics(model: nn.Module, variables, batch: Mapping[str, jax.Array], *,
                     train: bool = True, rngs: Optional[dict] = None,
                     select: Callable[[nn.Module], bool] = _default_select) -> dict:
  """Per-layer statistics of activations and of the loss gradient with respect to them.

  Args:
    model: a classifier called as `model(x, train=...)`.
    variables: its variables ({"params", ...}); not modified (batch statistics computed in
      training mode are discarded).
    batch: {"image", "label"}; the loss is the mean cross-entropy.
    train: apply the model in training mode (batch norm with batch statistics, as training sees
      it).
    rngs: rngs for training mode (e.g. {"dropout": key}).
    select: which modules' `__call__` outputs to record (default: the model's direct
      submodules, e.g. a ResNet's stem, blocks and head).

  Returns:
    {layer path ("stage1_block1"): {"act_mean", "act_std", "act_max_abs", "grad_mean",
    "grad_std", "grad_max_abs"}} as scalar float32 arrays (jit-able), layers in call order
    (a jitted call returns the dict key-sorted).
  """
  mutable = [k for k in variables if k != "params"] if train else False

  def run(deltas):
    acts = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if (context.method_name == "__call__" and module.path and select(module)
          and isinstance(out, jax.Array)):
        name = "/".join(module.path)
        if deltas is not None:
          out = out + deltas[name]
        acts[name] = out
      return out

    with nn.intercept_methods(interceptor):
      out = model.apply(variables, batch["image"], train=train, rngs=rngs, mutable=mutable)
    logits = out[0] if train else out
    return ops.cross_entropy_loss(logits, batch["label"]), acts

  order = []  # Call order (input to output); pytree transformations return dicts key-sorted.

  def shapes_in_order():
    acts = run(None)[1]
    order.extend(acts)
    return acts

  shapes = jax.eval_shape(shapes_in_order)
  if not shapes:
    raise ValueError(f"select: no module of {type(model).__name__} was selected.")
  zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
  grads, acts = jax.grad(run, has_aux=True)(zeros)
  return {name: {**{f"act_{k}": v for k, v in _stats(acts[name]).items()},
                 **{f"grad_{k}": v for k, v in _stats(grads[name]).items()}}
          for name in order}


class LayerStatsRecorder:
  """A `fit` callback recording `layer_statistics` on a fixed probe batch at chosen steps.

  `fit(..., callbacks=[recorder])`; after training `recorder.records` holds one
  {"step", "layers": {path: {stat: float}}} per recorded step, layers in call order (input to
  output; also in `recorder.layer_order`). The statistics function is jitted
  once (the probe batch has a fixed shape); it adds no parameters or state to the model and does
  not change the training step. `recorder.record(step, state)` records outside `fit`, e.g. at
  initialisation (step 0).

  Args:
    model, probe_batch, train, select: as in `layer_statistics` (rngs from `seed`).
    steps: the steps after which to record (e.g. (0, 1, 2, 5, 10, 100)).
  """

  def __init__(self, model: nn.Module, probe_batch: Mapping[str, Any], steps: Sequence[int],
               *, train: bool = True, select: Callable[[nn.Module], bool] = _default_select,
               seed: int = 0):
    self.steps = {int(s) for s in steps}
    self.records: list = []
    batch = {"image": jnp.asarray(probe_batch["image"]),
             "label": jnp.asarray(probe_batch["label"])}
    rngs = {"dropout": jax.random.key(seed)}
    self._traces = 0

    self.layer_order: list = []

    def stats(variables):
      self._traces += 1  # Runs only while tracing: counts compilations.
      out = layer_statistics(model, variables, batch, train=train, rngs=rngs, select=select)
      # The call order (input to output); jit returns dicts with sorted keys.
      self.layer_order = list(out)
      return out

    self._stats = jax.jit(stats)

  def record(self, step: int, state: TrainState) -> None:
    stats = jax.device_get(self._stats({"params": state.params, **state.model_state}))
    self.records.append({"step": int(step), "layers": {
        name: {k: float(v) for k, v in stats[name].items()} for name in self.layer_order}})

  def __call__(self, step: int, state: TrainState) -> None:
    if step in self.steps:
      self.record(step, state)

  def compilations(self) -> int:
    """How many times the statistics function was traced and compiled (1 after any number of
    records)."""
    return self._traces


def lr_sweep(run_fn: Callable[[float], Mapping[str, Any]], learning_rates: Sequence[float],
             stable_fn: Optional[Callable[[Mapping[str, Any]], bool]] = None,
             verbose: bool = True) -> dict:
  """Runs `run_fn(lr)` for each learning rate; divergence is a recorded result, not an error.

  Args:
    run_fn: trains at one learning rate and returns its metrics (JSON-able); raises
      `NonFiniteLossError` (as `fit` and `fit_seeds` do) when the loss or gradients became NaN or
      Inf, or returns metrics with non-finite values.
    learning_rates: the grid, in any order (records come back sorted by learning rate).
    stable_fn: whether a finished run counts as stable (e.g. validation accuracy above chance);
      default: every finite run is stable.

  Returns:
    {"runs": [{"learning_rate", "diverged", "stable", "error", "metrics"}], "max_stable_lr"
     (the largest stable learning rate, None if none), "first_diverged_lr" (the smallest that
     diverged, None if none)}.
  """
  if not learning_rates:
    raise ValueError("learning_rates must hold at least one value.")
  if any(not lr > 0 for lr in learning_rates):
    raise ValueError(f"learning_rates must be > 0, got {list(learning_rates)}.")
  runs = []
  for lr in sorted(float(v) for v in learning_rates):
    try:
      metrics, error = dict(run_fn(lr)), None
    except (NonFiniteLossError, FloatingPointError) as e:
      metrics, error = {}, str(e)
    finite = error is None and all(
        math.isfinite(v) for v in _numbers(metrics))
    diverged = not finite
    stable = (not diverged) and (stable_fn is None or bool(stable_fn(metrics)))
    runs.append({"learning_rate": lr, "diverged": diverged, "stable": stable, "error": error,
                 "metrics": metrics})
    if verbose:
      print(f"[lr_sweep] lr {lr:g}: " + ("diverged" if diverged else
                                         "stable" if stable else "finished, not stable"),
            flush=True)
  stable_lrs = [r["learning_rate"] for r in runs if r["stable"]]
  diverged_lrs = [r["learning_rate"] for r in runs if r["diverged"]]
  return {"runs": runs, "max_stable_lr": max(stable_lrs) if stable_lrs else None,
          "first_diverged_lr": min(diverged_lrs) if diverged_lrs else None}


def _numbers(tree) -> list:
  out = []
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
      out.append(float(leaf))
  return out
