"""The classification training loop every fastnets model and experiment uses.

`fit` trains a Flax model on a `fastnets.data.Dataset` data-parallel over all devices, logs
progress and TensorBoard scalars, evaluates, checkpoints every N steps and resumes exactly, and
stops on a non-finite loss without saving the bad state. Techniques plug in through:

- `loss_fn`: a custom loss / forward pass (quantisation interceptors, auxiliary losses, ...);
- `tx_wrapper`: `optax.GradientTransformation -> GradientTransformation` (pruning masks,
  low-precision weight updates, ...);
- `step_variants` + `choose_variant`: several loss functions, one picked per batch on the host
  (dynamic downsampling); each is compiled once and reused;
- `callbacks`: host functions called after each step that may replace the state.
"""

import dataclasses
import math
import os
import time
import warnings
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastnets.data import Dataset, eval_batches, train_batches
from fastnets.train import sharding as shd
from fastnets.train.checkpoint import Checkpointer, check_or_record_run_config
from fastnets.train.config import REPORTING_FIELDS, TrainConfig
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

Callback = Callable[[int, TrainState], Optional[TrainState]]


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN or Inf; the last checkpoint (if any) is intact."""


@dataclasses.dataclass
class TrainResult:
  """What `fit` returns.

  Attributes:
    state: the final train state (replicated over the mesh).
    metrics: final numbers: val_accuracy, val_loss, test_accuracy and test_loss (None when the
      dataset's test split is hidden or absent), train_loss (mean over the last logging
      window), train_accuracy (idem), steps, steps_per_sec, wall_time_s.
    history: one dict per progress report ({"step", "train_loss", ...}) and per evaluation
      ({"step", "val_accuracy", "val_loss"}), including those of the run before a resume.
    resumed_from: the checkpoint step this run started from (None for a fresh run).
    devices: number of devices trained on.
  """
  state: TrainState
  metrics: dict
  history: list
  resumed_from: Optional[int]
  devices: int


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TensorBoardWriter:
  """TensorBoard scalars via tensorboardX (no TensorFlow needed); a no-op without a workdir, and
  without tensorboardX, which is optional (a warning says so and training goes on)."""

  def __init__(self, logdir: Optional[str]):
    self._writer = None
    if logdir is not None and jax.process_index() == 0:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        warnings.warn("tensorboardX is not installed: no TensorBoard events are written "
                      "(pip install tensorboardX).", RuntimeWarning, stacklevel=2)
        return
      self._writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is not None:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def progress_printer(verbose: bool) -> Callable[[str], None]:
  """Where a training loop's progress lines go: printed (flushed) on process 0 when `verbose`,
  dropped otherwise."""
  if verbose and jax.process_index() == 0:
    return lambda msg: print(msg, flush=True)
  return lambda msg: None


def evaluate(model: nn.Module, state: TrainState, dataset: Dataset, batch_size: int,
             mesh: Optional[jax.sharding.Mesh] = None, split: str = "validation",
             eval_step=None) -> dict:
  """Accuracy and mean loss of `state` on a split, every example counted once.

  Returns: {"accuracy": float, "loss": float, "count": int}.
  """
  mesh = mesh or shd.make_mesh()
  eval_step = eval_step or jax.jit(make_eval_step(model), out_shardings=shd.replicated(mesh))
  totals = eval_totals(eval_step, state, dataset, split, batch_size, mesh)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss_sum"]) / count,
          "count": int(count)}


def eval_totals(eval_step, state: TrainState, dataset: Dataset, split: str, batch_size: int,
                mesh: jax.sharding.Mesh) -> dict:
  """Sums `eval_step(state, batch)` (e.g. `make_eval_step`'s "correct", "loss_sum", "count") over
  every example of a split once, in batches of `batch_size` rounded up to a multiple of the
  mesh's devices and split over them. Returns the totals as host numpy arrays."""
  n = mesh.devices.size
  batch_size = int(math.ceil(batch_size / n) * n)
  totals = None
  for batch in eval_batches(dataset, dataset.split(split), batch_size):
    out = eval_step(state, shd.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return jax.device_get(totals)


def fit(model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        workdir: Optional[str] = None,
        *,
        loss_fn: Optional[LossFn] = None,
        tx_wrapper: Optional[Callable[[optax.GradientTransformation],
                                      optax.GradientTransformation]] = None,
        step_variants: Optional[Mapping[str, LossFn]] = None,
        choose_variant: Optional[Callable[[int], str]] = None,
        callbacks: Sequence[Callback] = (),
        run_info: Optional[dict] = None,
        mesh: Optional[jax.sharding.Mesh] = None,
        verbose: bool = True) -> TrainResult:
  """Trains `model` on `dataset` according to `config`.

  Args:
    model: a Linen module called as `model(x, train=...)` returning (batch, classes) logits.
    dataset: from `fastnets.data.load_dataset`.
    config: the training configuration.
    workdir: where checkpoints (`checkpoints/`), TensorBoard events (`tb/`) and the run
      configuration go. Rerunning with the same workdir resumes from its last checkpoint and ends
      identical to an uninterrupted run; a different configuration is refused. None: no files.
    loss_fn: replaces `classification_loss(model, config.label_smoothing)`; see
      `fastnets.train.steps` for the signature. Its metrics dict must hold the same keys at
      every step.
    tx_wrapper: applied to the optimizer built from `config`.
    step_variants: name -> loss function; with `choose_variant(step) -> name` picks the loss of
      each step on the host. Must be deterministic in the step for exact resumption. All variants
      must return the same metric keys.
    callbacks: `cb(step, state) -> new state or None`, called on the host after each step
      (`step` counts completed steps). Must be deterministic for exact resumption.
    run_info: extra JSON-able identity of the run (model name, dataset, technique options)
      recorded in and checked against the workdir.
    mesh: device mesh with a "data" axis; default all devices.
    verbose: print progress lines (steps/s, ETA) and evaluation results.

  Returns:
    A `TrainResult`.

  Raises:
    ValueError: batch size not divisible over the devices, or workdir of another configuration.
    NonFiniteLossError: NaN/Inf loss or gradients; the last checkpoint before it is kept.
  """
  t_start = time.time()
  mesh = mesh or shd.make_mesh()
  n_devices = mesh.devices.size
  shd.check_batch_size(config.batch_size, mesh)
  say = progress_printer(verbose)

  if step_variants is None:
    step_variants = {"default": loss_fn or classification_loss(model, config.label_smoothing)}
    choose_variant = lambda step: "default"
  elif loss_fn is not None or choose_variant is None:
    raise ValueError("pass either loss_fn, or step_variants together with choose_variant.")

  tx = make_optimizer(config)
  if tx_wrapper is not None:
    tx = tx_wrapper(tx)

  sample = next(eval_batches(dataset, dataset.train, 1))["image"]
  # Op by op, not jitted: see `init_train_state`.
  state = shd.replicate(init_train_state(model, tx, init_key(config.seed), jnp.asarray(sample)),
                        mesh)

  # Metric names come from tracing one variant once (shapes only, nothing runs).
  first_loss = next(iter(step_variants.values()))
  example = {"image": jnp.zeros((config.batch_size,) + dataset.image_shape, jnp.float32),
             "label": jnp.zeros((config.batch_size,), jnp.int32)}
  _, (_, aux_metrics) = jax.eval_shape(first_loss, state.params, state.model_state, example,
                                       jax.random.key(0))
  metric_names = ["loss", "grad_norm", *aux_metrics]
  repl = shd.replicated(mesh)
  run_key = jax.random.key(config.seed)
  steps_fn = {name: jax.jit(make_keyed_train_step(fn, tx), donate_argnums=(0, 2),
                            out_shardings=(repl, repl))
              for name, fn in step_variants.items()}
  eval_step = jax.jit(make_eval_step(model), out_shardings=repl)

  history: list = []
  resumed_from = None
  checkpointer = None
  sums = shd.replicate(empty_metric_sums(metric_names), mesh)
  if workdir is not None:
    run_config = {"train": {k: v for k, v in config.to_dict().items()},
                  "model": repr(model), "dataset": dataset.name,
                  **(run_info or {})}
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    latest = checkpointer.latest_step()
    check_or_record_run_config(workdir, run_config, ignore=REPORTING_FIELDS,
                               has_checkpoint=latest is not None)
    if latest is not None:
      (state, sums), meta = checkpointer.restore(latest, (state, sums))
      history = list(meta.get("history", []))
      resumed_from = latest
      say(f"resumed from the checkpoint of step {latest} in {checkpointer.directory}")
  tb = TensorBoardWriter(os.path.join(workdir, "tb") if workdir else None)

  def save(step):
    if checkpointer is not None:
      checkpointer.save(step, (state, sums), {"history": history, "step": step})

  def check_finite(host_sums, step):
    bad = int(host_sums["first_nonfinite_step"])
    if bad >= 0:
      last = checkpointer.latest_step() if checkpointer else None
      kept = (f"the last good checkpoint (step {last}) in {checkpointer.directory} is kept"
              if last is not None else "no checkpoint was written")
      raise NonFiniteLossError(
          f"the loss or the gradients became NaN/Inf at step {bad + 1} (detected by step {step}); "
          f"{kept}. Lower the learning rate, clip gradients (grad_clip_norm) or check the data.")

  try:
    step = int(jax.device_get(state.step))
    window_start, window_step = time.time(), step
    batches = train_batches(dataset, config.batch_size, config.seed, start_step=step,
                            num_steps=config.steps - step, augment=config.augment)
    if step < config.steps:
      say(f"training {config.steps} steps on {n_devices} device(s) "
          f"({jax.devices()[0].platform}), batch {config.batch_size}, from step {step}")
    for batch in batches:
      state, sums = steps_fn[choose_variant(step)](state, shd.shard_batch(batch, mesh), sums,
                                                   run_key)
      step += 1
      for cb in callbacks:
        new_state = cb(step, state)
        state = state if new_state is None else new_state
      report = step % config.log_every == 0 or step == config.steps
      checkpoint = checkpointer is not None and (
          (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps)
      if report or checkpoint:
        host_sums = jax.device_get(sums)
        check_finite(host_sums, step)
      if report and int(host_sums["count"]):
        count = int(host_sums["count"])
        record = {"step": step, **{f"train_{k}": float(host_sums[k]) / count for k in metric_names}}
        elapsed = time.time() - window_start
        record["steps_per_sec"] = (step - window_step) / max(elapsed, 1e-9)
        history.append(record)
        tb.scalars(step, {k: v for k, v in record.items() if k != "step"})
        eta = (config.steps - step) / max(record["steps_per_sec"], 1e-9)
        extras = " | ".join(f"{k[6:]} {v:.4g}" for k, v in record.items()
                            if k.startswith("train_") and k != "train_loss")
        say(f"step {step}/{config.steps} | loss {record['train_loss']:.4f} | {extras} | "
            f"{record['steps_per_sec']:.1f} steps/s | ETA {_format_eta(eta)}")
        sums = shd.replicate(empty_metric_sums(metric_names), mesh)
        window_start, window_step = time.time(), step
      if config.eval_every and step % config.eval_every == 0 and step < config.steps:
        ev = evaluate(model, state, dataset, config.eval_batch_size, mesh, eval_step=eval_step)
        history.append({"step": step, "val_accuracy": ev["accuracy"], "val_loss": ev["loss"]})
        tb.scalars(step, {"val_accuracy": ev["accuracy"], "val_loss": ev["loss"]})
        say(f"step {step}/{config.steps} | val accuracy {ev['accuracy']:.4f} | "
            f"val loss {ev['loss']:.4f}")
      if checkpoint:
        save(step)

    ev = evaluate(model, state, dataset, config.eval_batch_size, mesh, eval_step=eval_step)
    if not history or history[-1].get("val_accuracy") is None or history[-1]["step"] != step:
      history.append({"step": step, "val_accuracy": ev["accuracy"], "val_loss": ev["loss"]})
      tb.scalars(step, {"val_accuracy": ev["accuracy"], "val_loss": ev["loss"]})
    say(f"final | val accuracy {ev['accuracy']:.4f} | val loss {ev['loss']:.4f} "
        f"({ev['count']} examples)")
    # The test split is read once, after training, and only when the dataset shows it (tuning
    # code passes `dataset.without_test()`, so its runs never see test numbers).
    test_ev = (evaluate(model, state, dataset, config.eval_batch_size, mesh, split="test",
                        eval_step=eval_step) if dataset.has_test else None)
  finally:  # Also on errors and interrupts: flush events, finish checkpoint writes.
    tb.close()
    if checkpointer is not None:
      checkpointer.close()
  train_records = [h for h in history if "train_loss" in h]
  last = train_records[-1] if train_records else {}
  rates = [h["steps_per_sec"] for h in train_records]
  metrics = {
      "val_accuracy": ev["accuracy"],
      "val_loss": ev["loss"],
      "test_accuracy": test_ev["accuracy"] if test_ev else None,
      "test_loss": test_ev["loss"] if test_ev else None,
      "train_loss": last.get("train_loss"),
      "train_accuracy": last.get("train_accuracy"),
      "steps": step,
      "steps_per_sec": float(np.median(rates)) if rates else None,
      "wall_time_s": time.time() - t_start,
  }
  return TrainResult(state=state, metrics=metrics, history=history, resumed_from=resumed_from,
                     devices=n_devices)
