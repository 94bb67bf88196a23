"""RevNet vs the ResNet of the same depth: accuracy and train-step memory.

    python -m experiments.revnet --workdir=runs/revnet --quick    # bundled MNIST, ~3 min on 2 CPUs
    python -m experiments.revnet --workdir=runs/revnet            # CIFAR-10 (tfds), paper schedule
    python -m experiments.revnet --workdir=runs/revnet100 --dataset=cifar100 --revnets=revnet164

Gomez, Ren, Urtasun, Grosse (NeurIPS 2017), "The Reversible Residual Network": a RevNet rebuilds
the activations of its reversible blocks in the backward pass instead of storing them (Eq. (4),
Alg. 1), so its activation memory does not grow with depth, and it matches the accuracy of the
ResNet it is compared with (Table 3: RevNet-38 vs ResNet-32, RevNet-110 vs ResNet-110, RevNet-164
vs ResNet-164, with about the same number of parameters).

For every RevNet named in `revnets` (`fastnets.models.revnet`) and its matching ResNet
(`fastnets.models.matching_resnet`'s architecture; registry names "resnet32", "resnet110",
"resnet164"), this experiment

1. trains both with `fastnets.train.fit` (the shared loop) and evaluates them;
2. compiles the train step exactly as `fastnets.train.fit` builds it (loss, gradients, optimizer
   update; state and metric sums donated) for the whole `memory_batch` unsharded (one device's
   view, also when fit trained on several devices) and reads
   `jax.jit(step).lower(...).compile().memory_analysis()`: `temp_bytes` (activations and
   workspace: what reversible backprop saves), argument/output bytes and XLA's own peak figure;
   the RevNet also with `backprop="store"` (plain autodiff of the identical network, the cleanest
   measure of the saving) unless `store_baseline` is off.

The paper's cost claim (rebuilding activations costs about one extra forward pass) is a timing:
`bench_reversible` judges it (reversible vs plain backprop of the same stack at several depths,
interleaved rounds). Nothing here is timed, so the report can run this experiment beside another.

Full setting (DEFAULTS): the paper's CIFAR schedule [PAPERS.md]: batch 100, SGD momentum 0.9,
weight decay 2e-4, learning rate 0.1, x0.1 at 40k and 60k steps, 80k steps, random crop + flip;
the paper's widths (RevNet filters 32-32-64-112/128, ResNet 16-16-32-64); RevNet-38/110/164.
Nothing of it was run here (no GPU and no CIFAR download on this machine).

Quick setting (the report's), with these deviations from the paper, all for time on 2 CPU cores:
* data: the bundled MNIST (7,000 train / 1,000 validation / 2,000 test digits), no augmentation;
* only RevNet-38 vs ResNet-32 (depths as in the paper);
* every width divided by `width_divisor` = 4: RevNet-38 filters 8-8-16-28 (~30k parameters),
  ResNet-32 widths 4-4-8-16 (~30k parameters), so the two still have equal parameter counts as
  in the paper (0.46M each at full width);
* 90 Adam steps (cosine to 0) of batch 32 (0.4 epoch; 200 before the main job had to fit
  30 minutes) instead of 80k momentum-SGD steps of
  batch 100, each net at its learning rate from the committed sweep
  `experiments/tuning/revnet.json` (`python -m experiments.revnet --tune`: the same Adam grid
  3e-3, 1e-2, 3e-2 around the earlier hand-set 1e-2 for both nets, fixed before the sweep, one
  tuning seed, validation accuracy only; when it was run, test numbers of the earlier setting,
  1e-2 for both, had been seen); neither net is converged, so the accuracy gap compares early
  training, where the seed-to-seed spread is large: the claim is judged on the paired per-seed
  gap over five evaluation seeds and its 95% interval (test split), all seeds in one program
  per model;
* training unrolls the reversible stacks (`train_unroll`: the same arithmetic and gradients as
  the loop, much faster on XLA:CPU); memory is measured on the looped model, the form whose
  memory does not grow with depth, at the training batch (32).
Why it has to be this small: on XLA:CPU the convolution *gradients* inside a `lax.scan` body stay
in a slow non-canonical form (outside a loop XLA rewrites them to its fast convolution kernels),
and a RevNet's reversible stacks are scans (forward and rebuilding backward pass; also with
`backprop="store"`); `tools/measure_revnet_unroll.py` measures the cost.

Writes to --workdir: results.json (metrics.<model name> = {test_accuracy (mean over seeds),
test_accuracy_per_seed, params, temp_bytes, ...} for e.g. "revnet38" and "resnet32", and a
`summary` of the comparisons), revnet.png (training loss, accuracy and memory), and per model a
subdirectory with fit's checkpoints and TensorBoard events (rerun to resume the full setting).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import data, evidence, models, train
from fastnets.models.revnet import RESNET_BASELINES, REVNET_CONFIGS

from . import common

NAME = "revnet"
DEFAULTS = {
    **common.TRAIN_DEFAULTS,
    "workdir": "runs/revnet",
    "dataset": "cifar10",
    "revnets": ["revnet38", "revnet110", "revnet164"],  # RevNets, each vs its same-depth ResNet
    "width_divisor": 1,  # divides every width of both nets (RevNet widths must stay even)
    "steps": 80000,
    "batch_size": 100,
    "eval_batch_size": 1000,
    "optimizer": "momentum",
    "learning_rate": 0.1,
    "schedule": "step",
    "decay_boundaries": [40000, 60000],
    "decay_factor": 0.1,
    "momentum": 0.9,
    "weight_decay": 2e-4,
    "augment": "crop_flip",
    "log_every": 500,
    "eval_every": 5000,
    "checkpoint_every": 5000,
    "units": [],  # RevNet units per stage; empty: the paper's (3-3-3 or 9-9-9)
    "resnet_depth": 0,  # 0: the paper's matching depth (32, 110, 164)
    "memory_batch": 0,  # 0: batch_size
    "store_baseline": True,  # also measure the RevNet with plain autodiff (backprop="store")
    "seeds": [0, 1, 2, 3, 4],  # evaluation seeds (5: the claimed gap is under one point)
    "train_unroll": False,  # train with unrolled reversible stacks (fast on XLA:CPU)
    "tuning_record": False,  # read per-net learning rates from experiments/tuning/revnet.json
}
QUICK = {
    "dataset": "mnist_bundled", "revnets": ["revnet38"], "width_divisor": 4, "steps": 90,
    "batch_size": 32, "optimizer": "adam", "learning_rate": 1e-2, "schedule": "cosine",
    "weight_decay": 0.0, "augment": "none", "log_every": 25, "eval_every": 0,
    "checkpoint_every": 0, "seeds": [0, 1, 2, 3, 4], "train_unroll": True,
    "tuning_record": True,
}
# The quick setting's sweep (`--tune`): the same grid and tuning seed for both nets of a pair.
TUNING_GRID = {"learning_rate": [3e-3, 1e-2, 3e-2]}
# Keys that change only the memory measurements, or how training is compiled (`train_unroll`:
# the same arithmetic and gradients), not what is trained.
TUNING_IGNORED_KEYS = ("memory_batch", "store_baseline", "train_unroll")
# Smoke: a RevNet-18 (units 2-1-1: one reversible block) against a ResNet-8, width / 8.
SMOKE = {**QUICK, "width_divisor": 8, "units": [2, 1, 1], "resnet_depth": 8, "steps": 2,
         "batch_size": 8, "eval_batch_size": 500, "log_every": 1,
         "seeds": [0], "tuning_record": False}

# Gomez et al. 2017 as digested in docs/PAPERS.md. The CIFAR error table is marked
# [unverified] there (not checked against the paper's PDF); the memcnn memory figures are [cited].
PAPER_CIFAR10_ERROR = {"resnet32": 7.14, "revnet38": 7.24, "resnet110": 5.74, "revnet110": 5.76,
                       "resnet164": 5.24, "revnet164": 5.17}
PAPER_ACTIVATION_MB = {"resnet32": 238.6, "revnet38": 85.6, "resnet110": 810.7,
                       "revnet110": 85.7, "resnet164": 2452.8, "revnet164": 432.7}
PAPER = {
    "claim": "RevNets match the accuracy of ResNets of the same depth and about the same number "
             "of parameters while storing no activations of their reversible blocks (activation "
             "memory independent of depth), for about one extra forward pass of compute",
    "value": {
        "cifar10_error_percent": PAPER_CIFAR10_ERROR,
        "cifar10_error_status": "unverified (PAPERS.md: table not checked against the paper)",
        "cifar100_error_percent": None,
        "cifar100_error_status": "not in PAPERS.md",
        "activation_memory_mb_memcnn": PAPER_ACTIVATION_MB,
        "activation_memory_status": "cited: memcnn documentation's reproduction (PyTorch)",
        "compute_overhead": "about 1.33x in theory, 1.5-2x depending on the implementation "
                            "(cited)",
    },
    "source": "Gomez, Ren, Urtasun, Grosse 2017 (NeurIPS), The Reversible Residual Network; "
              "configs from renmengye/revnet-public",
    "target": "fastnets target: quick setting, RevNet accuracy within 0.5 points of the "
              "same-depth ResNet",
}


# ------------------------------------------------------------------------------------------------
# Models.


def resnet_name(revnet_name: str) -> str:
  """The registry name of the ResNet a RevNet is compared with ("revnet38" -> "resnet32")."""
  return f"resnet{RESNET_BASELINES[revnet_name]['depth']}"


def _divide(widths, divisor: int, what: str, even: bool) -> tuple[int, ...]:
  out = tuple(int(w) // divisor for w in widths)
  if any(w < 1 or w * divisor != int(v) for w, v in zip(out, widths)) or (
      even and any(w % 2 for w in out)):
    raise ValueError(f"width_divisor={divisor} must divide the {what} widths {tuple(widths)} "
                     f"into {'even ' if even else ''}positive integers, got {out}.")
  return out


def build_pair(revnet_name: str, num_classes: int, width_divisor: int = 1, units=(),
               resnet_depth: int = 0):
  """(RevNet, ResNet) of the paper's pair, every width divided by `width_divisor`.

  Args:
    revnet_name: "revnet38", "revnet110" or "revnet164".
    num_classes: logits of both models.
    width_divisor: divides the paper's widths (RevNet filters, ResNet 16-16-32-64).
    units: RevNet units per stage instead of the paper's (empty: the paper's).
    resnet_depth: ResNet depth instead of the paper's match (0: the paper's).

  Returns:
    (RevNet, ResNet) Linen modules; their `depth` attributes name them in the results.

  Raises:
    ValueError: unknown RevNet name, or a divisor that leaves odd or fractional widths.
  """
  if revnet_name not in REVNET_CONFIGS:
    raise ValueError(f"revnets must name RevNets among {sorted(REVNET_CONFIGS)}, got "
                     f"{revnet_name!r}.")
  if not isinstance(width_divisor, int) or width_divisor < 1:
    raise ValueError(f"width_divisor must be a positive int, got {width_divisor!r}.")
  filters = _divide(REVNET_CONFIGS[revnet_name]["filters"], width_divisor, "RevNet", True)
  widths = _divide((16, 16, 32, 64), width_divisor, "ResNet", False)
  rev_kw = {"units": tuple(int(u) for u in units)} if len(units) else {}
  rev = models.create_model(revnet_name, num_classes, filters=filters, **rev_kw)
  # The registry's "resnet32" / "resnet110" / "resnet164" (bottleneck) are the paper's baselines,
  # `models.matching_resnet` without its fixed widths (it does not accept a widths override).
  res = models.create_model(resnet_name(revnet_name), num_classes, widths=widths)
  if resnet_depth:
    res = res.clone(depth=int(resnet_depth))
  assert res.bottleneck == RESNET_BASELINES[revnet_name]["bottleneck"]
  return rev, res


# ------------------------------------------------------------------------------------------------
# Compiled train-step memory.


def _step_memory(model, state: train.TrainState, tcfg: train.TrainConfig, batch: dict) -> dict:
  """Memory analysis of the train step of `fit` (same loss, optimizer, donation), compiled."""
  tx = train.make_optimizer(tcfg)
  state = jax.tree.map(jnp.copy, state)  # donated below: the caller's state stays valid
  step = jax.jit(train.make_train_step(train.classification_loss(model), tx, tcfg.seed),
                 donate_argnums=(0, 2))
  sums = train.empty_metric_sums(["loss", "grad_norm", "accuracy"])
  mem = step.lower(state, batch, sums).compile().memory_analysis()
  record = {
      "temp_bytes": int(mem.temp_size_in_bytes),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "xla_peak_bytes": int(getattr(mem, "peak_memory_in_bytes", -1) or -1),
  }
  return record


def compiled_memory(named_models: dict, tcfg: train.TrainConfig, batch: dict) -> dict:
  """Memory analysis of each model's compiled train step at `batch`.

  Args:
    named_models: label -> (Linen model, its `TrainState`, e.g. `fit`'s final state; copied, not
      consumed). Reusing fit's state spares compiling an initialisation per model.
    tcfg: the training configuration (optimizer and seed of the step).
    batch: {"image": (B, H, W, C) float32, "label": (B,) int32}, the same for every model.

  Returns:
    label -> {temp_bytes, argument_bytes, output_bytes, alias_bytes, xla_peak_bytes}.
  """
  return {name: _step_memory(model, state, tcfg, batch)
          for name, (model, state) in named_models.items()}


def _count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------------------------
# Plot.


def _plot(metrics: dict, history: dict, pairs: list, path: str, title: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  names = [n for pair in pairs for n in pair]
  colors = {n: f"C{i}" for i, n in enumerate(names)}
  for name in names:
    pts = [(h["step"], h["train_loss"]) for h in history.get(name, []) if "train_loss" in h]
    if pts:
      axes[0].plot(*zip(*pts), marker=".", color=colors[name], label=name)
  axes[0].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
  axes[0].legend(fontsize=8)
  x = np.arange(len(names))
  acc = [100 * metrics[n]["test_accuracy"] for n in names]
  per_seed = [[100 * a for a in metrics[n]["test_accuracy_per_seed"]] for n in names]
  axes[1].bar(x, acc, color=[colors[n] for n in names], alpha=0.6)
  for i, values in enumerate(per_seed):  # Every seed as a dot: the spread is the story here.
    axes[1].scatter([i] * len(values), values, color="k", s=10, zorder=3)
  acc = [a for values in per_seed for a in values] or acc
  lo = min(acc)
  axes[1].set_ylim(max(0.0, lo - 3 * max(1.0, max(acc) - lo)), min(100.0, max(acc) + 1))
  axes[1].set(xticks=x, xticklabels=names, ylabel="test accuracy (%)",
              title="test accuracy (mean, seeds as dots)")
  # Memory: the RevNet also with plain backprop ("store") of the identical network.
  bars = []
  for rev, res in pairs:
    bars.append((rev, metrics[rev]))
    if "store_backprop" in metrics[rev]:
      bars.append((f"{rev}\n(store)", metrics[rev]["store_backprop"]))
    bars.append((res, metrics[res]))
  xb = np.arange(len(bars))
  bar_colors = ["C7" if "store" in label else colors[label] for label, _ in bars]
  axes[2].bar(xb, [m["temp_bytes"] / 2**20 for _, m in bars], color=bar_colors)
  axes[2].set(xticks=xb, xticklabels=[label for label, _ in bars], ylabel="MiB",
              title="train-step temp memory (compiled)")
  for ax in axes:
    ax.grid(alpha=0.3, axis="y")
  for ax in axes[1:]:
    ax.tick_params(axis="x", labelsize=8)
  fig.suptitle(title)
  return common.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# The experiment.


def _trained(model, config: dict):
  """The model as trained: unrolled reversible stacks when `train_unroll` (same arithmetic)."""
  return (model.clone(unroll=True) if config["train_unroll"] and hasattr(model, "unroll")
          else model)


def tuning_arms(config: dict):
  """The sweep's arms (`common.tune_experiment`): validation accuracy of every RevNet and its
  matching ResNet, named as in results.json (e.g. revnet38, resnet32)."""
  import dataclasses

  config = common.merge_config(DEFAULTS, config)
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  arms = {}
  for paper_name in config["revnets"]:
    pair = build_pair(paper_name, dataset.num_classes, config["width_divisor"], config["units"],
                      config["resnet_depth"])
    for kind, model in zip(("revnet", "resnet"), pair):
      def score(values, view, seed, model=_trained(model, config)):
        tcfg = dataclasses.replace(common.train_config({**config, **values}), seed=seed,
                                   checkpoint_every=0)
        return train.fit(model, view, tcfg, None, verbose=False).metrics["val_accuracy"]
      arms[f"{kind}{model.depth}"] = score
  return arms, dataset


def run(config: dict) -> dict:
  """Measures and trains every (RevNet, matching ResNet) pair; returns the results record."""
  config = common.merge_config(DEFAULTS, config)
  clock = common.Timer()
  revnets = list(config["revnets"])
  if not revnets:
    raise ValueError("revnets must name at least one RevNet, e.g. revnet38.")
  workdir = config["workdir"] or None
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  tcfg = common.train_config(config)
  memory_batch = config["memory_batch"] or config["batch_size"]
  batch = next(data.train_batches(dataset, memory_batch, config["seed"] + 1, num_steps=1))
  batch = {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])}

  tuned, tuning = common.apply_tuning(sys.modules[__name__], config)
  metrics, history, pairs, paper_pairs = {}, {}, [], {}
  for paper_name in revnets:
    rev, res = build_pair(paper_name, dataset.num_classes, config["width_divisor"],
                          config["units"], config["resnet_depth"])
    # Named by their depth: the paper's names unless units / resnet_depth override them.
    rev_name, res_name = f"revnet{rev.depth}", f"resnet{res.depth}"
    pairs.append((rev_name, res_name))
    paper_pairs[rev_name] = (paper_name, resnet_name(paper_name))
    states = {}
    for name, model in ((rev_name, rev), (res_name, res)):
      # Training may unroll the reversible stacks (the same arithmetic and gradients; much faster
      # on XLA:CPU); memory and step time below are measured on the looped model.
      trained = _trained(model, config)
      arm_tcfg = common.train_config({**config, **tuned.get(name, {})})
      out = common.train_seeds(trained, dataset, arm_tcfg, config["seeds"],
                               os.path.join(workdir, name) if workdir else None,
                               run_info={"experiment": NAME, "model_name": name,
                                         "width_divisor": config["width_divisor"]})
      metrics[name] = {
          "test_accuracy": float(np.mean(out["test_accuracy"])),
          "test_accuracy_per_seed": out["test_accuracy"],
          "val_accuracy_per_seed": out["val_accuracy"],
          "train_loss_per_seed": out["train_loss"],
          "seeds": out["seeds"],
          "params": _count(out["state"].params),
          "depth": int(model.depth),
          "fit_steps_per_sec": out["steps_per_sec"],
          "fit_wall_time_s": out["wall_time_s"],
          "learning_rate": float(arm_tcfg.learning_rate),
      }
      history[name] = out["history"]
      states[name] = out["state"]
      print(f"{name}: test accuracy over seeds {out['test_accuracy']} "
            f"({metrics[name]['params']:,} params, {out['wall_time_s']:.0f} s)", flush=True)
    # Memory of the compiled train step, from the trained states; the RevNet also with plain
    # autodiff ("store"): the identical network and variables.
    named = {rev_name: (rev, states[rev_name]), res_name: (res, states[res_name])}
    if config["store_baseline"]:
      named[f"{rev_name}_store"] = (rev.clone(backprop="store"), states[rev_name])
    cost = compiled_memory(named, tcfg, batch)
    del states
    print(", ".join(f"{n}: temp {c['temp_bytes'] / 2**20:.2f} MiB" for n, c in cost.items()),
          flush=True)
    for name in (rev_name, res_name):
      metrics[name].update(cost[name])
    if config["store_baseline"]:
      metrics[rev_name]["store_backprop"] = cost[f"{rev_name}_store"]

  summary = {}
  for rev_name, res_name in pairs:
    r, b = metrics[rev_name], metrics[res_name]
    paper_rev, paper_res = paper_pairs[rev_name]
    s = {"resnet": res_name, "paper_pair": [paper_rev, paper_res],
         "accuracy_gap_points": 100 * (r["test_accuracy"] - b["test_accuracy"]),
         "accuracy_gap_points_per_seed": [100 * (x - y) for x, y in zip(
             r["test_accuracy_per_seed"], b["test_accuracy_per_seed"])],
         "temp_memory_vs_resnet": r["temp_bytes"] / b["temp_bytes"],
         "params_vs_resnet": r["params"] / b["params"]}
    if "store_backprop" in r:
      s["temp_memory_vs_store"] = r["temp_bytes"] / r["store_backprop"]["temp_bytes"]
    if config["dataset"] == "cifar10":
      s["paper_cifar10_error_gap_points"] = (PAPER_CIFAR10_ERROR[paper_res]
                                             - PAPER_CIFAR10_ERROR[paper_rev])
    summary[rev_name] = s

  plots = {}
  if workdir:
    plots["revnet"] = _plot(
        metrics, history, pairs, os.path.join(workdir, "revnet.png"),
        f"RevNet vs ResNet on {dataset.name}: {config['steps']} steps, batch "
        f"{config['batch_size']}, widths / {config['width_divisor']}; memory at batch "
        f"{memory_batch} on {jax.devices()[0].platform}")
  return common.write_results(
      workdir, NAME, config, metrics, PAPER, clock(), summary=summary, history=history,
      plots=plots, memory_batch=memory_batch,
      **({"tuning": "not tuned: the full setting's learning rate and schedule are the paper's"}
         | tuning),
      memory_note="temp_bytes = compiled train step's temp_size_in_bytes (activations + "
                  "workspace) from memory_analysis(); xla_peak_bytes is XLA's own peak figure, "
                  "which on XLA:CPU is below temp_bytes and not used in the comparisons")


def _mib(n: float) -> str:
  return f"{n / 2**20:.1f} MiB"


def report_rows(results: dict) -> list[dict]:
  """Per pair: accuracy (paired over seeds, 95% interval) and train-step memory (compiled,
  deterministic). The step-time claim is bench_reversible's."""
  m, cfg = results["metrics"], results["config"]
  scale = "paper" if (cfg["dataset"] == "cifar10" and cfg["width_divisor"] == 1
                      and cfg["steps"] >= 80000) else "proxy"
  setting = (f"{cfg['dataset']}, widths / {cfg['width_divisor']}, {cfg['steps']} steps of batch "
             f"{cfg['batch_size']} ({cfg['optimizer']}), seeds "
             f"{', '.join(str(s) for s in cfg['seeds'])}; "
             f"{common.tuning_text(results) or 'lr ' + str(cfg['learning_rate'])}")
  platform = results["devices"]["platform"]
  rows = []
  for rev_name, s in results.get("summary", {}).items():
    res_name = s["resnet"]
    paper_rev, paper_res = s["paper_pair"]
    r, b = m[rev_name], m[res_name]
    differs = "" if (paper_rev, paper_res) == (rev_name, res_name) else (
        f" (paper pair {paper_rev} / {paper_res})")
    ra, ba = r["test_accuracy_per_seed"], b["test_accuracy_per_seed"]
    # The claim: RevNet is not worse than the ResNet by more than 0.5 points.
    diff, verdict = evidence.judge_paired(ra, ba, -0.005, "greater", scale=scale,
                                          min_seeds=evidence.MIN_SEEDS_SMALL_EFFECT)
    rows.append(evidence.row(
        f"RevNet: {rev_name} vs {res_name} accuracy",
        "RevNet matches the same-depth ResNet: its test accuracy is at most 0.5 points below",
        f"CIFAR-10 error {PAPER_CIFAR10_ERROR[paper_rev]}% vs {PAPER_CIFAR10_ERROR[paper_res]}% "
        f"(table unverified){differs}",
        f"{evidence.format_summary(evidence.summarize(ra), 100)} vs "
        f"{evidence.format_summary(evidence.summarize(ba), 100)}; paired gap "
        f"{evidence.format_summary(diff, 100, unit=' pts')}; {r['params']:,} vs "
        f"{b['params']:,} params",
        scale=scale, setting=setting, verdict=verdict))
    store = r.get("store_backprop")
    smaller = r["temp_bytes"] < b["temp_bytes"]
    rows.append(evidence.row(
        f"RevNet: {rev_name} train-step memory",
        "reversible blocks store no activations: the RevNet's compiled train step needs less "
        "temporary memory than the ResNet it matches",
        f"activation memory {PAPER_ACTIVATION_MB[paper_rev]} vs {PAPER_ACTIVATION_MB[paper_res]} "
        f"MB ({paper_rev} vs {paper_res}; memcnn, cited)",
        f"compiled temp {_mib(r['temp_bytes'])} vs {_mib(b['temp_bytes'])} "
        f"({s['temp_memory_vs_resnet']:.2f}x)"
        + (f"; same RevNet with plain backprop {_mib(store['temp_bytes'])} "
           f"({s['temp_memory_vs_store']:.2f}x)" if store else ""),
        scale=scale, setting=f"{setting}; memory at batch {results.get('memory_batch')}, "
                             f"{platform} (compiled, deterministic)",
        verdict=(evidence.REPRODUCED if scale == "paper" else evidence.REPRODUCED_PROXY)
        if smaller else evidence.NOT_REPRODUCED))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
