"""One training run under several seeds as one compiled program: `fit_seeds`, `evaluate_seeds`.

Accuracy verdicts need several evaluation seeds. `fit_seeds` trains them together: the train
states of all seeds are stacked along a leading seed axis, and one jitted program, compiled once,
advances every seed by one step.

Seed s means what `fit` with `TrainConfig(seed=s)` means: the model is initialised from
`init_key(s)`, the batches are `train_batches(dataset, batch_size, s)` (same order, same
augmentation) and step t draws its dropout key from `fold_in(key(s), t)`. So seed s of `fit_seeds`
ends where `fit(seed=s)` ends, up to float summation order, and two arms trained on the same seeds
pair seed by seed (`evidence.paired_difference`).

How the program maps the seeds (`seed_batching`):

- "vmap": `jax.vmap` over the seed axis; the seeds become one wider computation. This is the
  mode for GPUs and TPUs, where one small model leaves most of the chip idle.
- "unroll": the one-seed step is written into the program once per seed. Vmapping a convolution
  over per-seed weights makes a grouped convolution, which XLA:CPU computes as a dense convolution
  with S times the output channels: work that grows with S squared. Unrolled, it grows with S.
- "auto" (default): "unroll" on CPU when the loss or the model contains a convolution, "vmap"
  otherwise.

On CPU a single run already keeps the cores busy, so S seeds cost about S runs there whatever the
mode; the one program saves S-1 compilations and shares the host work of every step.

Devices: the seed axis is replicated and each seed's batch is split over the mesh's "data" axis,
as `fit` splits its batch, so the batch size must divide over the devices, any number of seeds
runs on any mesh, and results do not depend on the device count. (Sharding the seeds instead
would need a seed count divisible by the device count and saves no arithmetic.)

Not supported, use `fit` for them: checkpoints and resumption (an interrupted `fit_seeds` starts
over), `step_variants` and host `callbacks`.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastnets.data import Dataset, eval_batches, train_batches
from fastnets.train import sharding as shd
from fastnets.train.config import TrainConfig
from fastnets.train.loop import NonFiniteLossError, TensorBoardWriter, eval_totals, progress_printer
from fastnets.train.optim import make_optimizer
from fastnets.train.steps import (
  LossFn,
  TrainState,
  classification_loss,
  empty_metric_sums,
  init_key,
  init_train_state,
  make_eval_step,
  make_keyed_train_step,
)

SEED_BATCHING = ("auto", "vmap", "unroll")
# Options of `fit` that `fit_seeds` refuses, with the reason.
_UNSUPPORTED = {
    "workdir": "fit_seeds neither checkpoints nor resumes",
    "run_info": "fit_seeds writes no run configuration",
    "step_variants": "fit_seeds compiles one loss function",
    "choose_variant": "fit_seeds compiles one loss function",
    "callbacks": "fit_seeds runs no host callbacks between steps",
}


@dataclasses.dataclass
class MultiSeedResult:
  """What `fit_seeds` returns.

  Attributes:
    seeds: the seeds, in the order of the seed axis.
    state: the final train states stacked along a leading seed axis (replicated over the mesh);
      `state_for(seed)` picks one.
    metrics: per-seed lists (index i is `seeds[i]`): val_accuracy, val_loss, test_accuracy and
      test_loss (None when the dataset's test split is hidden or absent), train_loss and
      train_accuracy (mean over the last logging window; train_accuracy None when the loss does
      not report "accuracy"); and shared scalars: steps, steps_per_sec (program steps, each
      advancing every seed; median over logging windows), wall_time_s.
    history: `history[i]` is seed `seeds[i]`'s list of records in `fit`'s format: one per
      progress report ({"step", "train_loss", ..., "steps_per_sec"}) and per evaluation
      ({"step", "val_accuracy", "val_loss"}).
    devices: number of devices trained on.
    seed_batching: "vmap" or "unroll", the mode that ran.
  """
  seeds: tuple
  state: TrainState
  metrics: dict
  history: list
  devices: int
  seed_batching: str

  def state_for(self, seed: int) -> TrainState:
    """The final train state of `seed` (no seed axis)."""
    if seed not in self.seeds:
      raise ValueError(f"seed {seed} was not trained; seeds are {list(self.seeds)}.")
    index = self.seeds.index(seed)
    return jax.tree.map(lambda x: x[index], self.state)


def map_seeds(fn: Callable, num_seeds: int, seed_batching: str, in_axes: Sequence[Any]):
  """Maps `fn` over a leading seed axis inside one program, by vmap or by unrolling.

  Args:
    fn: a one-seed function of pytrees.
    num_seeds: the length of the seed axis.
    seed_batching: "vmap" or "unroll" (see the module docstring; "auto" is resolved by the
      callers, which know the loss).
    in_axes: per argument of `fn`, 0 (stacked along a leading seed axis) or None (shared).

  Returns:
    `mapped(*args)`, with `fn`'s outputs stacked along a new leading seed axis; named
    `seeds_<fn's name>`, the name compilation logs show.
  """
  if seed_batching not in ("vmap", "unroll"):
    raise ValueError(f"seed_batching must be 'vmap' or 'unroll' here, got {seed_batching!r}.")
  if any(axis not in (0, None) for axis in in_axes):
    raise ValueError(f"in_axes entries must be 0 or None, got {tuple(in_axes)}.")

  def unrolled(*args):
    outs = []
    for i in range(num_seeds):
      sliced = [a if axis is None else jax.tree.map(lambda x, i=i: x[i], a)
                for a, axis in zip(args, in_axes)]
      outs.append(fn(*sliced))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  impl = jax.vmap(fn, in_axes=tuple(in_axes)) if seed_batching == "vmap" else unrolled

  def mapped(*args):
    return impl(*args)

  mapped.__name__ = mapped.__qualname__ = f"seeds_{getattr(fn, '__name__', 'fn')}"
  return mapped


def _has_convolution(jaxpr) -> bool:
  """Whether a jaxpr (or any jaxpr nested in its equations) contains a convolution."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      return True
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          if _has_convolution(sub):
            return True
  return False


def _resolve_seed_batching(seed_batching: str, jaxpr, mesh: jax.sharding.Mesh) -> str:
  if seed_batching not in SEED_BATCHING:
    raise ValueError(f"seed_batching must be one of {SEED_BATCHING}, got {seed_batching!r}.")
  if seed_batching != "auto":
    return seed_batching
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  return "unroll" if on_cpu and _has_convolution(jaxpr) else "vmap"


def _check_seeds(seeds: Sequence[int]) -> tuple:
  seeds = tuple(seeds)
  if not seeds:
    raise ValueError("seeds must name at least one seed, got none.")
  if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
    raise ValueError(f"seeds must be integers, got {list(seeds)}.")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct (repeated seeds are the same run), got "
                     f"{list(seeds)}.")
  return tuple(int(s) for s in seeds)


def _stack(tree: Any, num_seeds: int) -> Any:
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds,) + jnp.shape(x)), tree)


def _num_seeds(states: TrainState) -> int:
  leaves = jax.tree.leaves(states.params)
  if not leaves or jnp.ndim(leaves[0]) == 0:
    raise ValueError("states must be stacked train states with a leading seed axis "
                     "(MultiSeedResult.state).")
  return int(jnp.shape(leaves[0])[0])


def _seed_lists(totals: dict) -> dict:
  count = float(np.asarray(totals["count"]).reshape(-1)[0])
  return {"accuracy": [float(c) / count for c in np.asarray(totals["correct"])],
          "loss": [float(l) / count for l in np.asarray(totals["loss_sum"])],
          "count": int(count)}


def evaluate_seeds(model: nn.Module, states: TrainState, dataset: Dataset,
                   split: str = "validation", batch_size: int = 1000,
                   mesh: Optional[jax.sharding.Mesh] = None, *, seed_batching: str = "auto",
                   eval_step: Optional[Callable] = None) -> dict:
  """Accuracy and mean loss of each seed's state on a split, every example counted once.

  Args:
    model: the model the states belong to.
    states: train states stacked along a leading seed axis (`MultiSeedResult.state`).
    dataset: the dataset; `split` is "train", "validation" or "test".
    batch_size: evaluation batch size (rounded up to a multiple of the devices). All seeds see
      the same batches in one program.
    mesh: device mesh with a "data" axis; default all devices.
    seed_batching: "auto", "vmap" or "unroll" (see the module docstring).
    eval_step: a jitted seed-mapped eval step to reuse (`fit_seeds` passes its own).

  Returns:
    {"accuracy": [per seed], "loss": [per seed], "count": examples evaluated}.
  """
  mesh = mesh or shd.make_mesh()
  if eval_step is None:
    num_seeds = _num_seeds(states)
    one_state = jax.eval_shape(lambda s: jax.tree.map(lambda x: x[0], s), states)
    example = {"image": jax.ShapeDtypeStruct((1,) + tuple(dataset.image_shape), jnp.float32),
               "label": jax.ShapeDtypeStruct((1,), jnp.int32),
               "mask": jax.ShapeDtypeStruct((1,), jnp.float32)}
    jaxpr = jax.make_jaxpr(make_eval_step(model))(one_state, example)
    mode = _resolve_seed_batching(seed_batching, jaxpr, mesh)
    eval_step = jax.jit(map_seeds(make_eval_step(model), num_seeds, mode, (0, None)),
                        out_shardings=shd.replicated(mesh))
  return _seed_lists(eval_totals(eval_step, states, dataset, split, batch_size, mesh))


def fit_seeds(model: nn.Module,
              dataset: Dataset,
              config: TrainConfig,
              seeds: Sequence[int],
              *,
              loss_fn: Optional[LossFn] = None,
              tx_wrapper: Optional[Callable[[optax.GradientTransformation],
                                            optax.GradientTransformation]] = None,
              seed_batching: str = "auto",
              mesh: Optional[jax.sharding.Mesh] = None,
              tensorboard_dir: Optional[str] = None,
              verbose: bool = True,
              **unsupported: Any) -> MultiSeedResult:
  """Trains `model` on `dataset` once per seed, all seeds in one compiled program.

  Args:
    model: a Linen module called as `model(x, train=...)` returning (batch, classes) logits.
    dataset: from `fastnets.data.load_dataset`.
    config: the training configuration; `config.seed` is ignored (`seeds` replaces it) and so
      are the checkpoint fields.
    seeds: the distinct integer seeds; seed s trains as `fit` with `TrainConfig(seed=s)` does.
    loss_fn: replaces `classification_loss(model, config.label_smoothing)`, as in `fit`; it
      sees one seed's params, model state, batch and key.
    tx_wrapper: applied to the optimizer built from `config`, as in `fit`.
    seed_batching: "auto", "vmap" or "unroll" (see the module docstring).
    mesh: device mesh with a "data" axis; default all devices.
    tensorboard_dir: where TensorBoard scalars go, one run per seed (`seed_<s>/`); None: none.
    verbose: print progress lines (loss over seeds, steps/s, ETA) and evaluation results.
    **unsupported: `fit`'s workdir, run_info, step_variants, choose_variant and callbacks are
      refused with a ValueError saying why.

  Returns:
    A `MultiSeedResult` (per-seed metrics and histories, the stacked final states).

  Raises:
    ValueError: bad seeds, batch size not divisible over the devices, or an unsupported option.
    NonFiniteLossError: NaN/Inf loss or gradients in some seed (nothing is saved).
  """
  refused = [name for name in unsupported if name in _UNSUPPORTED]
  if refused:
    raise ValueError("fit_seeds does not support " + "; ".join(
        f"{name} ({_UNSUPPORTED[name]})" for name in refused) + ". Use fit for those.")
  if unsupported:
    raise TypeError(f"fit_seeds got unexpected arguments {sorted(unsupported)}.")
  seeds = _check_seeds(seeds)
  num_seeds = len(seeds)
  t_start = time.time()
  mesh = mesh or shd.make_mesh()
  n_devices = mesh.devices.size
  shd.check_batch_size(config.batch_size, mesh)
  say = progress_printer(verbose)

  loss_fn = loss_fn or classification_loss(model, config.label_smoothing)
  tx = make_optimizer(config)
  if tx_wrapper is not None:
    tx = tx_wrapper(tx)
  repl = shd.replicated(mesh)

  # One abstract trace of the loss (nothing runs) gives the metric names and whether it
  # convolves, which "auto" needs.
  sample = jnp.asarray(next(eval_batches(dataset, dataset.train, 1))["image"])
  one_state = jax.eval_shape(lambda key: init_train_state(model, tx, key, sample),
                             init_key(seeds[0]))
  example = {"image": jax.ShapeDtypeStruct((config.batch_size,) + tuple(dataset.image_shape),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  loss_jaxpr, (_, (_, aux_metrics)) = jax.make_jaxpr(loss_fn, return_shape=True)(
      one_state.params, one_state.model_state, example, jax.random.key(0))
  mode = _resolve_seed_batching(seed_batching, loss_jaxpr, mesh)
  metric_names = ["loss", "grad_norm", *aux_metrics]

  # Op by op, seed after seed (see `init_train_state`), then stacked.
  state = shd.replicate(
      jax.tree.map(lambda *xs: jnp.stack(xs),
                   *[init_train_state(model, tx, init_key(s), sample) for s in seeds]), mesh)
  # The run key of `make_train_step`: step t of seed s draws fold_in(key(s), t).
  run_keys = shd.replicate(jnp.stack([jax.random.key(s) for s in seeds]), mesh)
  step_fn = jax.jit(map_seeds(make_keyed_train_step(loss_fn, tx), num_seeds, mode, (0, 0, 0, 0)),
                    donate_argnums=(0, 2), out_shardings=(repl, repl))
  eval_step = jax.jit(map_seeds(make_eval_step(model), num_seeds, mode, (0, None)),
                      out_shardings=repl)
  empty_sums = lambda: shd.replicate(_stack(empty_metric_sums(metric_names), num_seeds), mesh)

  def evaluate_all(split):
    return evaluate_seeds(model, state, dataset, split, config.eval_batch_size, mesh,
                          eval_step=eval_step)

  histories = [[] for _ in seeds]
  writers = [TensorBoardWriter(os.path.join(tensorboard_dir, f"seed_{s}") if tensorboard_dir
                               else None) for s in seeds]

  def record_eval(step, ev):
    for i in range(num_seeds):
      histories[i].append({"step": step, "val_accuracy": ev["accuracy"][i],
                           "val_loss": ev["loss"][i]})
      writers[i].scalars(step, {"val_accuracy": ev["accuracy"][i], "val_loss": ev["loss"][i]})
    say(f"step {step}/{config.steps} | val accuracy over {num_seeds} seeds "
        f"{_spread(ev['accuracy'])}")

  def check_finite(host_sums, step):
    bad = np.asarray(host_sums["first_nonfinite_step"])
    if (bad >= 0).any():
      which = ", ".join(f"seed {s} at step {int(b) + 1}" for s, b in zip(seeds, bad) if b >= 0)
      raise NonFiniteLossError(
          f"the loss or the gradients became NaN/Inf ({which}; detected by step {step}); "
          "fit_seeds keeps no checkpoint. Lower the learning rate, clip gradients "
          "(grad_clip_norm) or check the data.")

  sums = empty_sums()
  step = 0
  try:
    say(f"training {config.steps} steps x {num_seeds} seeds {list(seeds)} ({mode}) on "
        f"{n_devices} device(s) ({mesh.devices.flat[0].platform}), batch {config.batch_size}")
    window_start, window_step = time.time(), 0
    streams = [train_batches(dataset, config.batch_size, s, num_steps=config.steps,
                             augment=config.augment) for s in seeds]
    for per_seed in zip(*streams):
      batch = {k: np.stack([b[k] for b in per_seed]) for k in per_seed[0]}
      state, sums = step_fn(state, shd.shard_batch(batch, mesh, axis=1), sums, run_keys)
      step += 1
      if step % config.log_every == 0 or step == config.steps:
        host_sums = jax.device_get(sums)
        check_finite(host_sums, step)
        elapsed = time.time() - window_start
        rate = (step - window_step) / max(elapsed, 1e-9)
        for i in range(num_seeds):
          count = int(host_sums["count"][i])
          record = {"step": step,
                    **{f"train_{k}": float(host_sums[k][i]) / count for k in metric_names},
                    "steps_per_sec": rate}
          histories[i].append(record)
          writers[i].scalars(step, {k: v for k, v in record.items() if k != "step"})
        losses = [h[-1]["train_loss"] for h in histories]
        eta = (config.steps - step) / max(rate, 1e-9)
        say(f"step {step}/{config.steps} | loss over {num_seeds} seeds {_spread(losses)} | "
            f"{rate:.2f} steps/s | ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        sums = empty_sums()
        window_start, window_step = time.time(), step
      if config.eval_every and step % config.eval_every == 0 and step < config.steps:
        record_eval(step, evaluate_all("validation"))

    ev = evaluate_all("validation")
    record_eval(step, ev)
    # The test split is read once, after training, and only when the dataset shows it.
    test_ev = evaluate_all("test") if dataset.has_test else None
  finally:
    for writer in writers:
      writer.close()

  def last(name):
    values = [next((h[name] for h in reversed(hist) if name in h), None) for hist in histories]
    return None if any(v is None for v in values) else values

  rates = [h["steps_per_sec"] for h in histories[0] if "steps_per_sec" in h]
  metrics = {
      "val_accuracy": ev["accuracy"],
      "val_loss": ev["loss"],
      "test_accuracy": test_ev["accuracy"] if test_ev else None,
      "test_loss": test_ev["loss"] if test_ev else None,
      "train_loss": last("train_loss"),
      "train_accuracy": last("train_accuracy"),
      "steps": step,
      "steps_per_sec": float(np.median(rates)) if rates else None,
      "wall_time_s": time.time() - t_start,
  }
  return MultiSeedResult(seeds=seeds, state=state, metrics=metrics, history=histories,
                         devices=n_devices, seed_batching=mode)


def _spread(values: Sequence[float]) -> str:
  return f"{np.mean(values):.4f} [{np.min(values):.4f}, {np.max(values):.4f}]"
