"""What every experiment shares: config dicts with absl flags generated from them, results.json,
and training-curve plots. Library code (fastnets/) never imports this.

An experiment module defines `DEFAULTS` (a flat dict: the full setting or the offline default),
`QUICK` and `SMOKE` (overrides: the report's setting and the tests' one-step setting),
`run(config) -> dict` and `report_rows(results) -> list[dict]`, and ends with
`if __name__ == "__main__": common.main(sys.modules[__name__])`.
"""

import datetime
import json
import os
import platform
import time
from typing import Any, Mapping, Optional

import jax

PAPER_KEYS = ("claim", "value", "source")


def merge_config(defaults: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict:
  """`defaults` updated by each override; unknown keys are an error naming them."""
  config = dict(defaults)
  for override in overrides:
    unknown = sorted(set(override) - set(defaults))
    if unknown:
      raise ValueError(f"unknown config keys {unknown}; known: {sorted(defaults)}.")
    config.update(override)
  return config


def devices_record() -> dict:
  """How many devices of which kind ran the experiment (for results.json)."""
  devices = jax.devices()
  return {"count": len(devices), "platform": devices[0].platform,
          "kind": devices[0].device_kind, "processes": jax.process_count(),
          "host": platform.node()}


def write_results(workdir: Optional[str], experiment: str, config: Mapping[str, Any],
                  metrics: Mapping[str, Any], paper: Mapping[str, Any], wall_time_s: float,
                  **extra: Any) -> dict:
  """Builds the results record of ARCHITECTURE.md and writes it to `workdir/results.json`.

  Keys: experiment, config, metrics, paper, wall_time_s, devices, jax_version, date, and `extra`.
  Returns the record (also when `workdir` is None, then nothing is written).
  """
  record = {
      "experiment": experiment,
      "config": dict(config),
      "metrics": dict(metrics),
      "paper": dict(paper),
      "wall_time_s": float(wall_time_s),
      "devices": devices_record(),
      "jax_version": jax.__version__,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **extra,
  }
  if workdir is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)  # Never leave a half-written results.json.
  return record


def plot_history(history: list, path: str, title: str) -> str:
  """Training loss and validation accuracy against steps, as a PNG at `path`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = [h for h in history if "train_loss" in h]
  val = [h for h in history if "val_accuracy" in h]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
  ax1.plot([h["step"] for h in train], [h["train_loss"] for h in train], marker=".")
  ax1.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
  ax2.plot([h["step"] for h in val], [h["val_accuracy"] for h in val], marker="o", color="C1")
  ax2.set(xlabel="step", ylabel="validation accuracy", title="validation accuracy")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  return save_figure(fig, path)


def save_figure(fig, path: str, dpi: int = 110) -> str:
  """Lays out, writes (creating the folder) and closes a matplotlib figure; returns `path`."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def load_average():
  """The host's 1, 5 and 15-minute load averages (None where unavailable): timings on a shared
  machine are only comparable at a similar load, so experiments that time record it."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except (AttributeError, OSError):
    return None


class Timer:
  """Wall time since construction."""

  def __init__(self):
    self.start = time.time()

  def __call__(self) -> float:
    return time.time() - self.start


def define_flags(defaults: Mapping[str, Any]) -> None:
  """Defines one absl flag per config key, typed by its default (None defaults are strings)."""
  from absl import flags

  for name, default in defaults.items():
    if name in flags.FLAGS:
      continue
    helptext = f"config value {name} (default {default!r})"
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, helptext)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, helptext)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, helptext)
    elif isinstance(default, (list, tuple)):
      flags.DEFINE_list(name, [str(v) for v in default], helptext)
    else:
      flags.DEFINE_string(name, default, helptext)


def config_from_flags(defaults: Mapping[str, Any]) -> dict:
  """Reads the flags of `define_flags(defaults)` back into a config dict (lists typed back)."""
  from absl import flags

  config = {}
  for name, default in defaults.items():
    value = flags.FLAGS[name].value
    if isinstance(default, (list, tuple)) and default:
      value = type(default)(type(default[0])(v) for v in value)
    config[name] = value
  return config


def main(module) -> None:
  """The `__main__` of an experiment module: flags from DEFAULTS, `--quick` and `--smoke`
  switch to the module's QUICK / SMOKE overrides (explicit flags still win), then `run`."""
  from absl import app, flags

  define_flags(module.DEFAULTS)
  flags.DEFINE_bool("quick", False, "use the experiment's quick setting (the report's)")
  flags.DEFINE_bool("smoke", False, "use the experiment's tiny smoke-test setting")
  flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host)")

  def _main(argv):
    del argv
    from absl import logging
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO.
    if flags.FLAGS.distributed:
      jax.distributed.initialize()
    config = config_from_flags(module.DEFAULTS)
    explicit = {n: config[n] for n in module.DEFAULTS if flags.FLAGS[n].present}
    if flags.FLAGS.smoke:
      config = merge_config(config, getattr(module, "SMOKE", {}), explicit)
    elif flags.FLAGS.quick:
      config = merge_config(config, getattr(module, "QUICK", {}), explicit)
    results = module.run(config)
    print(json.dumps(results.get("metrics", {}), indent=2, default=str))

  app.run(_main)


def train_config(config: Mapping[str, Any]):
  """The `fastnets.train.TrainConfig` made of the config keys that are its fields."""
  import dataclasses

  from fastnets import train

  names = {f.name for f in dataclasses.fields(train.TrainConfig)}
  values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in names}
  if "decay_boundaries" in values:  # A flag list arrives as strings.
    values["decay_boundaries"] = tuple(int(b) for b in values["decay_boundaries"])
  return train.TrainConfig(**values)


def train_seeds(model, dataset, tcfg, seeds, workdir: Optional[str] = None,
                run_info: Optional[dict] = None, **hooks) -> dict:
  """Trains `model` once per evaluation seed; returns per-seed metric lists.

  Without a workdir that checkpoints (`tcfg.checkpoint_every` > 0), all seeds train as one
  compiled program (`fastnets.train.fit_seeds`); with one, each seed runs `fit` in
  `workdir/seed_<s>` so a long run resumes. Seed s means the same in both.

  Returns:
    {"seeds", "test_accuracy", "val_accuracy", "val_loss", "train_loss" (lists, one per seed),
     "history" (the first seed's), "state" (the first seed's final TrainState), "states"
     (a callable seed -> state), "wall_time_s", "steps_per_sec"}.
  """
  from fastnets import train

  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("seeds must name at least one evaluation seed.")
  keys = ("test_accuracy", "val_accuracy", "val_loss", "train_loss")
  timer = Timer()
  if workdir and tcfg.checkpoint_every > 0:
    import dataclasses
    results = {}
    for s in seeds:
      results[s] = train.fit(model, dataset, dataclasses.replace(tcfg, seed=s),
                             os.path.join(workdir, f"seed_{s}"), run_info=run_info, **hooks)
    first = results[seeds[0]]
    out = {k: [results[s].metrics[k] for s in seeds] for k in keys}
    out.update(history=first.history, state=first.state, states=lambda s: results[s].state,
               steps_per_sec=first.metrics["steps_per_sec"])
  else:
    result = train.fit_seeds(model, dataset, tcfg, seeds, **hooks)
    out = {k: result.metrics[k] for k in keys}
    out.update(history=result.history[0], state=result.state_for(seeds[0]),
               states=result.state_for, steps_per_sec=result.metrics["steps_per_sec"])
  out["seeds"] = seeds
  out["wall_time_s"] = timer()
  return out


# The training keys every classification experiment accepts (flags of the same names).
TRAIN_DEFAULTS = {
    "workdir": "runs/default",
    "dataset": "mnist_bundled",
    "data_dir": "",
    "steps": 500,
    "batch_size": 128,
    "eval_batch_size": 1000,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "schedule": "cosine",
    "warmup_steps": 0,
    "decay_boundaries": (),
    "decay_factor": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "augment": "none",
    "seed": 0,
    "log_every": 100,
    "eval_every": 0,
    "checkpoint_every": 500,
}
