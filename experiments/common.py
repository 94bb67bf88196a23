"""What every experiment shares: config dicts with absl flags generated from them, results.json,
and training-curve plots. Library code (fastnets/) never imports this.

An experiment module defines `DEFAULTS` (a flat dict: the full setting or the offline default),
`QUICK` and `SMOKE` (overrides: the report's setting and the tests' one-step setting),
`run(config) -> dict` and `report_rows(results) -> list[dict]`, and ends with
`if __name__ == "__main__": common.main(sys.modules[__name__])`.
"""

import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import tempfile
import time
from typing import Any, Mapping, NamedTuple, Optional

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


# Quick settings changed after test numbers of the earlier setting had been seen, and why: written
# into every results.json of the experiment (`setting_changes`). All of these were cut, chosen by
# cost alone before any run of the new setting, so that the main job fits its 30 minutes on 2 CPU
# cores (46:24 before, docs/RESULTS.md at fe31119; three rounds of cuts gave 32:06, 29:58 and
# 28:03, and the verdicts of each run were not read before the next round was chosen).
_BUDGET_CUT = ("cut for the main job's 30-minute budget (chosen by run time, before any run of "
               "the new setting; not for its result): ")
SETTING_CHANGES = {
    "baseline": _BUDGET_CUT + "QUICK steps 500 -> 200",
    "revnet": _BUDGET_CUT + "QUICK steps 200 -> 90; the learning-rate sweep was re-run for 90",
    "pacgan": _BUDGET_CUT + "QUICK steps 8,000 -> 2,000",
    "dynamic_downsampling": _BUDGET_CUT + "QUICK steps 1,500 -> 300; the learning-rate sweep "
                                          "was re-run for 300",
    "selective_conv": _BUDGET_CUT + "QUICK steps 200 -> 90",
    "vcl": _BUDGET_CUT + "QUICK steps 300 -> 150",
    "gm_sop": _BUDGET_CUT + "QUICK steps 300 -> 120",
    "abc_net": _BUDGET_CUT + "QUICK steps 300 -> 120",
    "ffnet": _BUDGET_CUT + "QUICK steps 200 -> 90; the learning-rate sweep was re-run for 90",
    "deep_fried": _BUDGET_CUT + "QUICK steps 400 -> 180; the learning-rate sweep was re-run for "
                                "180",
    "anl": _BUDGET_CUT + "QUICK steps 150 -> 60",
    "pkt": _BUDGET_CUT + "QUICK student steps 300 -> 120, teacher steps 400 -> 150",
    "sparse_inference": _BUDGET_CUT + "QUICK training batch 128 -> 64 (400 steps kept: in an "
                                      "earlier version 300 steps left the pruned net about 2 "
                                      "points behind the dense one)",
    "low_precision": _BUDGET_CUT + "QUICK steps 2,000 -> 1,000; the learning-rate sweep was "
                                   "re-run for 1,000",
    "lcw": _BUDGET_CUT + "QUICK synthetic steps 1,000 -> 500; MNIST autoencoder and latent "
                         "generator 400 -> 250, GAN 800 -> 400, digit classifier 300 -> 200",
    "bt_rnn": _BUDGET_CUT + "QUICK steps 1,000 -> 600; the learning-rate sweep was re-run for 600",
    "ktanh": _BUDGET_CUT + "QUICK MLP and LSTM steps 300 -> 200",
    "batchnorm_study": _BUDGET_CUT + "QUICK steps 100 -> 70",
    "gate_decorator": _BUDGET_CUT + "QUICK pretraining and fine-tuning steps 150 -> 120 each",
    "free_tickets": _BUDGET_CUT + "QUICK steps 1,200 -> 900",
}


def write_results(workdir: Optional[str], experiment: str, config: Mapping[str, Any],
                  metrics: Mapping[str, Any], paper: Mapping[str, Any], wall_time_s: float,
                  **extra: Any) -> dict:
  """Builds the results record of ARCHITECTURE.md and writes it to `workdir/results.json`.

  Keys: experiment, config, metrics, paper, wall_time_s, devices, jax_version, date,
  `setting_changes` where SETTING_CHANGES has the experiment, and `extra`.
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
      **({"setting_changes": SETTING_CHANGES[experiment]} if experiment in SETTING_CHANGES else {}),
      **extra,
  }
  if workdir is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "results.json"), record)
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
  tmp = path + ".tmp"
  fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
  os.replace(tmp, path)  # A reader never sees half a plot.
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


# Where a command-line run writes when no --workdir is given: never inside the checkout.
RUNS_ROOT_ENV = "FASTNETS_RUNS"
EXPERIMENT_RECORD = "experiment.json"
# Config keys that may differ between runs sharing a workdir: where the files go, and how often
# progress is printed, change nothing that is computed.
NON_IDENTITY_KEYS = ("workdir", "log_every")


def default_workdir(experiment: str) -> str:
  """`$FASTNETS_RUNS/<experiment>`, else `~/fastnets_runs/<experiment>`: outside any checkout."""
  root = os.environ.get(RUNS_ROOT_ENV) or os.path.join(os.path.expanduser("~"), "fastnets_runs")
  return os.path.join(root, experiment)


def claim_workdir(workdir: Optional[str], experiment: str, config: Mapping[str, Any],
                  overwrite: bool = False) -> None:
  """Records `{experiment, config}` in `workdir/experiment.json`, or refuses a workdir whose record
  differs, so that results of one configuration are never replaced by another's.

  Called before anything runs (`run_experiment`, the report), whether or not the experiment
  checkpoints. A rerun of the same configuration is allowed (it resumes or redoes the same work),
  and so is any configuration in a workdir that holds nothing but the record (a run that failed
  before writing anything).

  Raises:
    WorkdirMismatchError: the record names another experiment or other values; the message lists
      the differing keys and the two fixes (another --workdir, or --overwrite).
  """
  from fastnets.train import WorkdirMismatchError

  if not workdir:
    return
  path = os.path.join(workdir, EXPERIMENT_RECORD)
  norm = lambda v: json.loads(json.dumps(v, sort_keys=True, default=str))
  record = {"experiment": experiment, "config": norm(dict(config))}
  holds_output = os.path.isdir(workdir) and set(os.listdir(workdir)) - {EXPERIMENT_RECORD}
  if os.path.exists(path) and holds_output and not overwrite:
    with open(path) as f:
      old = json.load(f)
    old_config = old.get("config", {})
    diffs = [] if old.get("experiment") == experiment else [
        f"experiment: {old.get('experiment')!r} -> {experiment!r}"]
    diffs += [f"{k}: {old_config.get(k, '<absent>')!r} -> {record['config'].get(k, '<absent>')!r}"
              for k in sorted(set(old_config) | set(record["config"]))
              if k not in NON_IDENTITY_KEYS and old_config.get(k) != record["config"].get(k)]
    if diffs:
      raise WorkdirMismatchError(
          f"workdir {workdir} holds results of a different run ({'; '.join(diffs)}); nothing "
          "was changed. Use another --workdir, or pass --overwrite to replace them.")
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(path, record)


def write_json_atomic(path: str, obj: Any) -> str:
  """Writes `obj` as JSON to `path` through a temporary file and a rename (never half-written)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
  return path


def write_text_atomic(path: str, text: str) -> str:
  """Writes `text` to `path` through a temporary file and a rename (never half-written)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


@contextlib.contextmanager
def compilation_cache(enabled: bool = True, min_compile_time_s: float = 0.1):
  """A fresh, temporary persistent XLA compilation cache for the duration of a run.

  The runs of one experiment (every seed, every arm with the same shapes) and of the report compile
  the same programs again and again (`fit` jits its steps anew per run, with the seed an argument
  so that the programs are identical); on 2 CPU cores that can cost as much as the training.
  Within this context a program compiled once is loaded from the cache afterwards. Compilation is
  outside every timed region, so this changes wall time only, never a measured ratio or a result.
  Does nothing if disabled or if a cache directory is already configured (the user's, or an
  enclosing context's); the directory is deleted and the settings restored on exit. Programs that
  compile in under `min_compile_time_s` are not cached (reading them back saves nothing).
  """
  if not enabled or jax.config.jax_compilation_cache_dir:
    yield
    return
  from jax.experimental.compilation_cache import compilation_cache as cc

  old_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  path = tempfile.mkdtemp(prefix="fastnets_xla_cache_")
  try:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    cc.reset_cache()
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min_time)
    cc.reset_cache()
    shutil.rmtree(path, ignore_errors=True)


def run_experiment(module, config: Mapping[str, Any], overwrite: bool = False) -> dict:
  """`module.run(config)` after `claim_workdir`, inside a `compilation_cache`: the entry point of
  the CLI."""
  config = merge_config(module.DEFAULTS, config)
  claim_workdir(config.get("workdir") or None, module.NAME, config, overwrite)
  with compilation_cache():
    return module.run(config)


# --- Committed tuning records -------------------------------------------------------------------
# An experiment whose quick setting has tuned hyperparameters defines `TUNING_GRID` ({config key:
# [values]}: the tuned keys and the grid fixed before the sweep), `tuning_arms(config) ->
# (score_fns, dataset)` ({arm: score_fn(values, view, seed) -> validation score}, and the dataset
# whose test-less view the score functions get; None for synthetic data), optionally
# `TUNING_IGNORED_KEYS` (its config keys that do not change training, e.g. timing-only ones) and
# `TUNING_MAXIMIZE` (False when a lower score is better). `python -m experiments.<name> --tune`
# (`tune_experiment`) runs the sweep for the QUICK setting and writes `tuning/<name>.json` beside
# this file; the quick setting (`"tuning_record": True`) reads it back with `apply_tuning`.
TUNING_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuning")
# Keys that never change what a training run computes (where it writes, which evaluation seeds,
# how often it logs, evaluates or checkpoints, the evaluation batch): not part of a record's
# `setting`, so changing them does not make a record stale.
UNTRAINED_KEYS = ("workdir", "data_dir", "seed", "seeds", "log_every", "eval_every",
                  "checkpoint_every", "eval_batch_size", "tuning_record")
TUNING_RECORD_HELP = ("read the tuned values (per arm) from the experiment's committed tuning "
                      "record, experiments/tuning/<name>.json (the quick setting does)")


def tuning_path(experiment: str) -> str:
  """Where the committed tuning record of `experiment` lives (`experiments/tuning/<name>.json`)."""
  return os.path.join(TUNING_DIR, f"{experiment}.json")


def tuning_setting(module, config: Mapping[str, Any]) -> dict:
  """The part of `config` a sweep's result depends on: every key but the tuned ones
  (`module.TUNING_GRID`), `UNTRAINED_KEYS` and `module.TUNING_IGNORED_KEYS`, as JSON values."""
  skip = set(module.TUNING_GRID) | set(UNTRAINED_KEYS) | set(
      getattr(module, "TUNING_IGNORED_KEYS", ()))
  setting = {k: v for k, v in {**module.DEFAULTS, **config}.items()
             if k in module.DEFAULTS and k not in skip}
  return json.loads(json.dumps(setting, sort_keys=True, default=str))


def stale_keys(record: Mapping[str, Any], setting: Mapping[str, Any]) -> list:
  """The keys whose value differs between a record's `setting` and `setting` (sorted)."""
  old = record.get("setting", {})
  return sorted(k for k in set(old) | set(setting) if old.get(k, "<absent>")
                != setting.get(k, "<absent>"))


def tune_experiment(module, config: Mapping[str, Any], grid: Optional[Mapping[str, Any]] = None,
                    seeds=None, path: Optional[str] = None, command: str = "",
                    verbose: bool = True) -> dict:
  """Runs `module`'s validation sweep for `config` and writes the tuning record to `path`.

  Every arm gets the same grid and seeds (`fastnets.train.tune_arms`); the score functions see
  only `dataset.without_test()`. The record: {experiment, command, date, jax_version, setting
  (`tuning_setting`), grid, seeds, maximize, arms ({arm: grid_search record}), chosen ({arm:
  {key: value}}), wall_time_s}.

  Args:
    module: the experiment module (`NAME`, `DEFAULTS`, `TUNING_GRID`, `tuning_arms`).
    config: the setting swept (the CLI passes the merged QUICK config).
    grid: the grid (default `module.TUNING_GRID`; a smoke test passes a tiny one with the same
      keys).
    seeds: tuning seeds (default: the first of `fastnets.evidence.TUNING_SEEDS`).
    path: where the record goes (default `tuning_path(module.NAME)`); None-like "" writes nothing.
    command: the command line recorded.
  """
  from fastnets import evidence, train

  grid = dict(module.TUNING_GRID if grid is None else grid)
  if set(grid) != set(module.TUNING_GRID):
    raise ValueError(f"grid keys {sorted(grid)} must be the experiment's tuned keys "
                     f"{sorted(module.TUNING_GRID)}.")
  seeds = [int(s) for s in (evidence.TUNING_SEEDS[:1] if seeds is None else seeds)]
  config = merge_config(module.DEFAULTS, config)
  timer = Timer()
  score_fns, dataset = module.tuning_arms(config)
  maximize = bool(getattr(module, "TUNING_MAXIMIZE", True))
  arms = train.tune_arms(score_fns, grid, dataset, seeds=seeds, maximize=maximize,
                         verbose=verbose)
  record = {
      "experiment": module.NAME,
      "command": command or f"python -m experiments.{module.NAME} --tune",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax_version": jax.__version__,
      "setting": tuning_setting(module, config),
      "grid": {k: list(v) for k, v in grid.items()},
      "seeds": seeds,
      "maximize": maximize,
      "arms": arms,
      "chosen": {arm: dict(r["chosen"]) for arm, r in arms.items()},
      "wall_time_s": timer(),
  }
  path = tuning_path(module.NAME) if path is None else path
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, record)
  return record


def apply_tuning(module, config: Mapping[str, Any]) -> tuple:
  """The tuned values a run uses, and what its results.json says about them.

  Returns `(chosen, extra)`: `chosen` is {arm: {key: value}} from the committed record when
  `config["tuning_record"]` is set and the record exists (else {}: every arm keeps the config's
  values); `extra` holds the keyword arguments for `write_results`: `tuning` (the whole record,
  or "not re-derived ..." when the record is missing; absent when the config does not read one),
  and, with a record, `tuning_stale` (whether its `setting` differs from this config's) and
  `tuning_stale_keys`. A stale record still runs: the report shows it, and
  tests/test_experiments.py fails on it.
  """
  if not config.get("tuning_record"):
    return {}, {}
  path = tuning_path(module.NAME)
  if not os.path.exists(path):
    return {}, {"tuning": f"not re-derived: no tuning record experiments/tuning/"
                          f"{module.NAME}.json; the config's values are used"}
  with open(path) as f:
    record = json.load(f)
  stale = stale_keys(record, tuning_setting(module, config))
  if stale:
    print(f"warning: experiments/tuning/{module.NAME}.json was swept in another setting (keys "
          f"{stale}); rerun `python -m experiments.{module.NAME} --tune`", flush=True)
  return record["chosen"], {"tuning": record, "tuning_stale": bool(stale),
                            "tuning_stale_keys": stale}


def tuning_text(results: Mapping[str, Any], short: Optional[Mapping[str, str]] = None) -> str:
  """A row's `setting` words for where its tuned values came from, e.g. "lr tuned on validation
  (lr in 0.0003/0.001/0.003, tuning seed(s) 1000): dense 0.001, fastfood_adaptive 0.003;
  experiments/tuning/deep_fried.json"; "" when the run does not read a record. `short` renames
  keys (learning_rate -> lr by default)."""
  tuning = results.get("tuning")
  if not results.get("config", {}).get("tuning_record"):
    return ""
  if not isinstance(tuning, Mapping) or "chosen" not in tuning:
    return "tuning not re-derived (no tuning record)"
  names = {"learning_rate": "lr", **(short or {})}
  keys = ", ".join(names.get(k, k) for k in tuning["grid"])
  chosen = tuning["chosen"]
  values = lambda v: "/".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v.values())
  if len({json.dumps(v, sort_keys=True) for v in chosen.values()}) == 1:
    picked = values(next(iter(chosen.values())))
  else:
    picked = ", ".join(f"{arm} {values(v)}" for arm, v in chosen.items())
  grid = "; ".join(f"{names.get(k, k)} in {values(dict(enumerate(v)))}"
                   for k, v in tuning["grid"].items())
  text = (f"{keys} tuned on validation ({grid}, tuning seed(s) "
          f"{', '.join(str(s) for s in tuning['seeds'])}): {picked}; "
          f"experiments/tuning/{tuning['experiment']}.json")
  if results.get("tuning_stale"):
    text += f" (STALE: swept with other {', '.join(results.get('tuning_stale_keys', []))})"
  return text


def _attribute_docs(doc: str) -> dict:
  """`{name: text}` from the `Attributes:`/`Args:` section of a Google-style docstring."""
  out, name, section = {}, None, False
  for line in (doc or "").splitlines():
    stripped = line.strip()
    if stripped in ("Attributes:", "Args:"):
      section = True
      continue
    if not section:
      continue
    if not stripped:
      break
    match = re.match(r"(\w+): (.*)", stripped)
    if match and line.startswith("    ") and not line.startswith("      "):
      name = match.group(1)
      out[name] = match.group(2)
    elif name:
      out[name] += " " + stripped
  return out


def config_comments(module) -> dict:
  """`{key: comment}` from the trailing comments of `module.DEFAULTS`'s literal
  (`"dense": 64,  # cnn: width of the dense hidden layer`): the config's own documentation, used as
  flag help. Keys without a comment are absent."""
  import ast
  import inspect
  import io
  import tokenize

  try:
    source = inspect.getsource(module)
  except (OSError, TypeError):
    return {}
  comments = {tok.start[0]: tok.string.lstrip("#").strip()
              for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type == tokenize.COMMENT}
  out = {}
  for node in ast.walk(ast.parse(source)):
    if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULTS"
                                             for t in node.targets)
        and isinstance(node.value, ast.Dict)):
      for key in node.value.keys:
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.lineno in comments:
          out[key.value] = comments[key.lineno]
  return out


def _train_help() -> dict:
  from fastnets.train import TrainConfig
  helps = _attribute_docs(TrainConfig.__doc__)
  helps.update(
      workdir=("where results.json, plots and checkpoints go (default: $FASTNETS_RUNS/<name> or "
               "~/fastnets_runs/<name>); a workdir of another configuration is refused"),
      dataset=('"mnist_bundled" (offline), "idx:/path" (MNIST-format IDX files), or a '
               'tensorflow-datasets name such as "mnist", "cifar10"'),
      data_dir="tensorflow-datasets data directory (empty: tfds' default)",
      model=("a registered model name (fastnets.models.model_names(); a depth may follow "
             "resnet, e.g. resnet32)"),
      seeds="how many of the evaluation seeds (fastnets.evidence.EVAL_SEEDS), from the first",
      tuning_record=TUNING_RECORD_HELP)
  return helps


def _train_choices() -> dict:
  from fastnets.train import OPTIMIZERS, SCHEDULES
  return {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": ("none", "crop_flip")}


def define_flags(defaults: Mapping[str, Any], helps: Optional[Mapping[str, str]] = None,
                 choices: Optional[Mapping[str, tuple]] = None,
                 module_name: Optional[str] = None) -> None:
  """Defines one absl flag per config key, typed by its default (None defaults are strings).

  Args:
    defaults: the config dict.
    helps: help text per key (the training keys' come from `TrainConfig`'s documentation).
    choices: allowed values per string key (an enum flag: a wrong value fails at parse time).
    module_name: the module `--help` lists the flags under (the main script).
  """
  from absl import flags

  helps = {**_train_help(), **(helps or {})}
  choices = {**_train_choices(), **(choices or {})}
  for name, default in defaults.items():
    if name in flags.FLAGS:
      continue
    helptext = helps.get(name, f"{name.replace('_', ' ')} (see the experiment's docstring)")
    kwargs = {"module_name": module_name} if module_name else {}
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, helptext, **kwargs)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, helptext, **kwargs)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, helptext, **kwargs)
    elif isinstance(default, (list, tuple)):
      flags.DEFINE_list(name, [str(v) for v in default], helptext, **kwargs)
    elif name in choices and isinstance(default, str):
      flags.DEFINE_enum(name, default, list(choices[name]), helptext, **kwargs)
    else:
      flags.DEFINE_string(name, default, helptext, **kwargs)


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


# What a user can get wrong (a value, a name, a workdir, missing data): one line, exit status 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)
USAGE_EXIT = 2


def did_you_mean(value: str, known) -> str:
  """' (did you mean "x"?)' for the closest of `known` to `value`, else ''."""
  import difflib
  close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
  return f' (did you mean "{close[0]}"?)' if close else ""


def parse_flags_or_exit(argv: list) -> list:
  """absl's flag parsing, with a bad flag reported in one line (plus a "did you mean") and exit
  status 2 instead of absl's usage dump."""
  import sys

  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    hint = ""  # absl suggests close names of unknown flags itself.
    bad = re.match(r"flag --(\w+)=(\S*): value should be one of <([^>]*)>", message)
    if bad:
      hint = did_you_mean(bad.group(2), bad.group(3).split("|"))
    print(f"{os.path.basename(argv[0])}: error: {message}{hint}. (--help lists the flags.)",
          file=sys.stderr)
    sys.exit(USAGE_EXIT)


def exit_on_user_error(fn, debug: bool):
  """Calls `fn()`; a user error (USER_ERRORS) is printed as one line and exits with status 2,
  unless `debug`, which re-raises it with its traceback."""
  import sys

  try:
    return fn()
  except USER_ERRORS as e:
    if debug:
      raise
    print(f"error: {type(e).__name__}: {e} (--debug shows the traceback)", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def main(module) -> None:
  """The `__main__` of an experiment module: flags from DEFAULTS (help from the comments of its
  DEFAULTS literal and the module's `HELP`, choices from its `CHOICES`), `--quick` and `--smoke`
  switch to the module's QUICK / SMOKE overrides (explicit flags still win), the workdir is
  claimed (`claim_workdir`), then `run`. `--tune` instead runs the QUICK setting's validation
  sweep and writes its tuning record (`tune_experiment`)."""
  import sys

  from absl import app, flags

  main_name = sys.argv[0]
  helps = {**config_comments(module), **getattr(module, "HELP", {})}
  define_flags(module.DEFAULTS, helps, getattr(module, "CHOICES", None), module_name=main_name)
  for name, default, text in (
      ("quick", False, "use the experiment's quick setting (the report's)"),
      ("smoke", False, "use the experiment's tiny smoke-test setting (numbers meaningless)"),
      ("overwrite", False, "replace the results of a different configuration in --workdir"),
      ("debug", False, "show the traceback of a user error instead of one line"),
      ("tune", False, "run the experiment's validation sweep for its QUICK setting (explicit "
                      "flags still win) and write experiments/tuning/<name>.json, the record "
                      "the quick setting reads"),
      ("distributed", False, "call jax.distributed.initialize() (multi-host)")):
    flags.DEFINE_bool(name, default, text, module_name=main_name)

  def _main(argv):
    del argv
    from absl import logging
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO.
    if flags.FLAGS.distributed:
      jax.distributed.initialize()
    config = config_from_flags(module.DEFAULTS)
    explicit = {n: config[n] for n in module.DEFAULTS if flags.FLAGS[n].present}
    if flags.FLAGS.tune:
      if not hasattr(module, "TUNING_GRID"):
        print(f"error: {module.NAME} has no tuning sweep (--tune)", file=sys.stderr)
        sys.exit(USAGE_EXIT)
      config = merge_config(config, getattr(module, "QUICK", {}), explicit)
      command = " ".join([f"python -m experiments.{module.NAME}"] + sys.argv[1:])
      with compilation_cache():
        record = exit_on_user_error(
            lambda: tune_experiment(module, config, command=command), flags.FLAGS.debug)
      print(f"wrote {tuning_path(module.NAME)} in {record['wall_time_s']:.0f} s: chosen "
            f"{json.dumps(record['chosen'])}")
      return
    if flags.FLAGS.smoke:
      config = merge_config(config, getattr(module, "SMOKE", {}), explicit)
    elif flags.FLAGS.quick:
      config = merge_config(config, getattr(module, "QUICK", {}), explicit)
    if "workdir" in module.DEFAULTS and not flags.FLAGS["workdir"].present:
      config["workdir"] = default_workdir(module.NAME)
      print(f"writing to {config['workdir']} (--workdir to choose)", file=sys.stderr)
    results = exit_on_user_error(
        lambda: run_experiment(module, config, overwrite=flags.FLAGS.overwrite),
        flags.FLAGS.debug)
    print(json.dumps(results.get("metrics", {}), indent=2, default=str))

  app.run(_main, flags_parser=parse_flags_or_exit)


def train_config(config: Mapping[str, Any]):
  """The `fastnets.train.TrainConfig` made of the config keys that are its fields."""
  import dataclasses

  from fastnets import train

  names = {f.name for f in dataclasses.fields(train.TrainConfig)}
  values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in names}
  if "decay_boundaries" in values:  # A flag list arrives as strings.
    values["decay_boundaries"] = tuple(int(b) for b in values["decay_boundaries"])
  return train.TrainConfig(**values)


def selected(requested, known, what: str, required: Optional[str] = None) -> list:
  """The entries of `known` that `requested` names, in `known`'s order (an experiment's `arms`
  or `models` option). Raises ValueError naming `what` when `requested` names something unknown,
  selects nothing, or leaves out `required` (the arm the others are compared with)."""
  chosen = [k for k in known if k in requested]
  unknown = [r for r in requested if r not in known]
  if unknown or not chosen or (required is not None and required not in chosen):
    need = f"must include {required!r} and " if required is not None else "must "
    raise ValueError(f"{what} {need}name only some of {tuple(known)}, got {list(requested)}.")
  return chosen


class Setup(NamedTuple):
  """What most experiments' `run` starts from (`setup`)."""
  config: dict
  timer: "Timer"
  dataset: Any
  tcfg: Any
  seeds: list


def setup(defaults: Mapping[str, Any], config: Mapping[str, Any]) -> Setup:
  """The opening of an experiment's `run`: the config merged over `defaults`, a started `Timer`,
  the dataset it names, its `TrainConfig` and its evaluation seeds as ints."""
  from fastnets import data

  config = merge_config(defaults, config)
  timer = Timer()
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  return Setup(config, timer, dataset, train_config(config), [int(s) for s in config["seeds"]])


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
