"""Block-Term RNNs (BT-RNN, Ye et al. 2018): LSTM vs TT-LSTM vs BT-LSTM on sequences of frames.

    python -m experiments.bt_rnn --workdir=runs/bt_rnn --quick   # MNIST sequences, ~3 min
    python -m experiments.bt_rnn --workdir=runs/bt_rnn           # longer MNIST-sequence run
    python -m experiments.bt_rnn --workdir=runs/bt_rnn --dataset=ucf101 --data_dir=DIR \
        --input_factors=8,20,20,18 --hidden=256 --hidden_factors=4,4,4,4   # UCF101 (see below)

The paper's setting: a single recurrent layer reads a video as a sequence of flattened frames
(UCF11: 57,600 = 160 x 120 x 3 per frame) and a linear classifier reads its last hidden state. The
huge input-to-hidden matrix is replaced by a Block-Term (BT-LSTM) or Tensor-Train (TT-LSTM, the
baseline of Yang et al. 2017) matrix; `fastnets.models.bt_rnn.SequenceClassifier`.

**Quick task: the most frequent digit of a sequence of 8 MNIST frames** (784 = 4 x 7 x 4 x 7 per
step). Each sequence holds one digit d `mode_count` = 3 times and 5 other, pairwise different
digits once, in random order; the label is d (10 balanced classes). Why this task:
- it needs the whole sequence: any single frame is the answer with probability 3/8, so a model
  reading only the last frames stays near 37.5%; all 8 frames must be recognised and counted;
- it is learnable in a few hundred steps: the LSTM's additive cell state can accumulate a count
  per digit class (a bag of digits) and the head reads the largest count; no arithmetic across
  frames is needed (the sum of the digits mod 10, the other candidate, needs modular arithmetic
  over 8 recognitions: with `--task=sum_mod10` the LSTM and BT-LSTM r4 stay at chance, 10.3% and
  9.5%, after 300 steps, the earlier quick setting's length);
- the labels are balanced and the mode is unique by construction (no ties).
Sequences are built deterministically (`data_seed`) from the bundled MNIST: training sequences
from the train split's digits, validation sequences from the validation split's digits only. The
dataset is a `fastnets.data.Dataset` of images (N, T, 784, 1) uint8 (one "image" row per frame),
normalised by the digits' pixel mean and std, so `fastnets.train.fit` trains it unchanged; the
model reshapes it to (N, T, 784).

Models (`models`): "lstm" (dense input map), "bt_lstm_r<R>" (BT-LSTM with Tucker rank R,
`num_blocks` blocks; "_c<C>" overrides the blocks), "tt_lstm" (TT rank `tt_rank`; 0 = the rank
whose parameter count is closest to that of the largest BT model in the list: the same budget),
"tt_lstm_r<r>", and "gru" / "bt_gru_r<R>" / "tt_gru..." likewise. Each is trained with
`fastnets.train.fit` for each seed in `seeds`; the validation accuracy is the mean over seeds.

**Learning rates** (Adam, cosine to zero): `learning_rate` for the dense cells,
`bt_learning_rate` / `tt_learning_rate` for the BT / TT cells (0 = `learning_rate`). The tensor
formats need a larger step: their parameters are products of N + 1 tensors whose entries are
5-10x larger than the dense kernel's (std 0.2-1 against 1 / sqrt(784) = 0.036 for the same
initial W) and Adam's step is about the learning rate per entry whatever the entry's scale. The
rates were picked by ONE sweep, the same for every model: the quick setting (below) with seed 100
(not an evaluation seed), each model at 1e-3, 3e-3, 1e-2 and 3e-2, best validation accuracy
(`python -m experiments.bt_rnn --quick --seeds=100 --learning_rate=LR --bt_learning_rate=LR
--tt_learning_rate=LR --workdir=...`, 2026-11-22, 2 shared CPU cores):

    model            input params   1e-3    3e-3    1e-2    3e-2
    lstm                 200,960  95.45%  95.35%   72.8%   27.0%    -> 1e-3
    tt_lstm (rank 5)       1,456   76.6%   85.6%   88.3%   67.0%    -> 1e-2
    bt_lstm_r2               464   59.7%   71.6%   80.6%   77.4%    -> 1e-2
    bt_lstm_r4               896   71.9%   80.8%   85.6%   83.5%    -> 1e-2
    bt_lstm_r4_c2          1,536   75.4%   83.9%   88.5%   57.9%    -> 1e-2

(The earlier quick setting, 300 steps at 3e-3 for every model, left the tensor models 24-37
points behind the LSTM mostly because they were far from converged at that rate.)

**What the quick setting shows** (the honest outcome; results.json has each run's numbers).
`python -m experiments.bt_rnn --quick --workdir=/tmp/btq_final`, 2026-11-22, 3 seeds, mean +- std
of the validation accuracy: LSTM 94.8 +- 0.2% (200,960 input-map parameters); BT-LSTM R = 2
80.2 +- 1.2% (464, 433x fewer), R = 4 85.0 +- 0.4% (896, 224x), R = 4 C = 2 88.0 +- 0.5%
(1,536, 131x); TT-LSTM rank 5 88.6 +- 0.8% (1,456). So the >= 100x compression holds, but
BT-LSTM stays 7-15 points BELOW the dense LSTM (the issue's accuracy target is NOT met on this
task), and BT-LSTM and TT-LSTM at the same budget are within the seed spread of each other
(TT 0.7 points ahead). Tried and rejected, each with the learning rates above unless noted:
- the paper's regime (UCF11: ~1,600 videos of 57,600-dim frames, where the dense LSTM's
  59M-parameter input map overfits), mimicked by shrinking the training set: the LSTM's lead
  GROWS (1,000 sequences, seed 100: LSTM 81.6%, TT 68.8%, BT r4_c2 68.0%; 300 sequences, seed 0,
  before the exact-norm initialisation: LSTM 68.2%, TT r3 48.2%, BT r4 44.4%). MNIST digits at
  784 pixels are learnt well by a dense map from a few thousand examples, while the
  Kronecker-structured BT/TT maps generalise worse; the BT models still reach a near-zero
  training loss (the dense recurrent kernel and head memorise the sequences);
- hidden 256 (the paper's), where the 100x budget allows bigger BT maps (1,000 steps, one seed,
  before the exact-norm initialisation): LSTM 96.4% (3e-3), BT r4_c4 90.4%, BT r8 89.3%;
- other input factorisations for BT r4 (1,500 steps, one seed, before the exact-norm
  initialisation): (4, 7, 4, 7) 85.6%, (7, 4, 7, 4) 84.7%; (28, 28) with R = 1: 85.7%;
- more blocks at a similar budget (1,500 steps, one seed, before the exact-norm initialisation):
  r4_c2 87.6%, r3_c3 87.9%, r2_c4 87.7%.
The quick setting is therefore the converged, tuned comparison on the full 8,000 training
sequences, which is the fairest one this task offers.

**Speed** (the issue's other target; `experiments/bench_bt_rnn.py`, one jitted Adam step, input
784, hoisted projections, medians of interleaved runs on the shared 2-core CPU, 2026-11-22):
hidden 256, batch 32, BT R = 2, C = 1 (the benchmark's default; `--quick --modes=hoisted`):
BT-LSTM 1.58x faster than the LSTM with `tensor_optimize="size"` (9.4 vs 15.0 ms), 1.20x with
the FLOP-optimal order (12.4 ms); at input 4096 2.37x / 1.87x. The gain shrinks with the BT
size: hidden 256, BT R = 4, C = 2 (`--tucker_rank=4 --num_blocks=2`): 1.02x with "size",
0.37x (41 ms) with "optimal"; and at this experiment's quick size (hidden 64, batch 64, R = 4,
C = 2: `--hidden=64 --hidden_factors=2,4,2,4 --batch=64 --tucker_rank=4 --num_blocks=2
--tt_rank=5 --input_dims=784`) the dense 784 x 256 map is cheap and the BT-LSTM step is SLOWER:
0.73x with "size" (4.1 vs 3.0 ms), 0.27x with "optimal". "size" was the faster BT order in
every case measured, hence `tensor_optimize="size"` here; the steps_per_sec in results.json
include the training loop's host work and the machine's other load, not a benchmark.

Quick setting (QUICK): hidden 64 = 2 x 4 x 2 x 4, 8,000 training sequences, 1,000 steps of
batch 64, three seeds, LSTM vs TT-LSTM (budget of bt_lstm_r4_c2) vs BT-LSTM R = 2, 4 and R = 4
with C = 2 blocks (the largest BT map under the 100x budget: 1,536 <= 200,960 / 100).

Full setting (DEFAULTS): the same MNIST-sequence task, longer (2,000 steps), hidden 256 = 4^4 as
in the paper, three seeds, the quick sweep's learning rates (not re-swept at hidden 256). UCF11
is not in tensorflow-datasets. UCF101 is (`ucf101`, builder config `ucf101_1_256`), but preparing
it needs TensorFlow and a 6.5 GB download; with it prepared in --data_dir, `--dataset=ucf101`
subsamples `seq_len` frames per video evenly, resizes them to 120 x 160 RGB (57,600 features,
factored 8 x 20 x 20 x 18 as in the paper) and trains the same models on the 101 classes (the
train split trains, the test split validates). That path is
untested on the real data here (no TensorFlow, no network on this machine).

Writes to --workdir: results.json (metrics.<model> = {test_accuracy, test_accuracy_seeds,
test_accuracy_std, input_params, total_params, compression_vs_lstm, ...}), curves.png (validation
accuracy and training loss against steps, mean over seeds, one line per model) and one training
workdir per (model, seed) (checkpoints: a rerun resumes).
"""

import math
import os
import re
import sys

import numpy as np

from fastnets import data, evidence, train
from fastnets.models.bt_rnn import FrameSequenceClassifier, param_counts
from fastnets.ops import block_term, tensor_train

from . import common

NAME = "bt_rnn"
DEFAULTS = {
    **common.TRAIN_DEFAULTS,
    "workdir": "runs/bt_rnn",
    "task": "mode",
    "seq_len": 8,
    "mode_count": 3,
    "train_sequences": 16000,
    "val_sequences": 1000,
    "test_sequences": 2000,
    "data_seed": 0,
    "models": ["lstm", "tt_lstm", "bt_lstm_r1", "bt_lstm_r2", "bt_lstm_r4"],
    "seeds": [0, 1, 2],
    "hidden": 256,
    "hidden_factors": [4, 4, 4, 4],
    "input_factors": [4, 7, 4, 7],
    "num_blocks": 1,
    "tt_rank": 0,
    "tensor_optimize": "size",
    "video_height": 120,
    "video_width": 160,
    "steps": 2000,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "bt_learning_rate": 1e-2,
    "tt_learning_rate": 1e-2,
    "log_every": 50,
    "eval_every": 200,
    "checkpoint_every": 0,
}
QUICK = {"train_sequences": 8000, "seeds": [0, 1, 2], "hidden": 64, "hidden_factors": [2, 4, 2, 4],
         "models": ["lstm", "tt_lstm", "bt_lstm_r2", "bt_lstm_r4", "bt_lstm_r4_c2"],
         "steps": 1000, "log_every": 50, "eval_every": 250}
SMOKE = {**QUICK, "models": ["lstm", "tt_lstm", "bt_lstm_r1"], "seeds": [0],
         "train_sequences": 64, "val_sequences": 40, "test_sequences": 40, "hidden": 16,
         "hidden_factors": [2, 2, 2, 2],
         "steps": 2, "batch_size": 16, "eval_batch_size": 40, "log_every": 1, "eval_every": 0}
# Where the per-family learning rates came from (results.json `tuning`).
QUICK_TUNING = {
    "status": "not re-derived under the evidence protocol",
    "note": "the dense, BT and TT learning rates come from one sweep shared by all families in an "
            "earlier version, scored on the sequences of the digits that were then the "
            "validation split (now training digits); the test sequences are built from the 2,000 "
            "test digits, never looked at.",
}
PAPER = {"claim": "BT-LSTM: 17,388x fewer parameters than the LSTM and over 15.6 points more "
                  "accurate on UCF11 (57,600-dim frames, hidden 256); better than TT-RNN at the "
                  "same rank",
         "value": {"compression": 17388, "accuracy_gain_points": 15.6},
         "source": "Ye et al. 2018 (CVPR), BT-RNN, abstract",
         "target": "fastnets target: BT input-to-hidden map >= 100x fewer parameters than the "
                   "LSTM's with accuracy >= the LSTM's on the quick task (several seeds), and >= "
                   "TT-LSTM's at the same parameter budget"}


def load_sequences(config: dict) -> data.Dataset:
  """The experiment's dataset: digit sequences from config["dataset"], or a tfds video set."""
  if config["dataset"] in ("ucf101", "ucf11") or config["dataset"].startswith("ucf101/"):
    if config["dataset"] == "ucf11":
      raise data.DatasetError("UCF11 is not in tensorflow-datasets; use --dataset=ucf101 (or "
                              "the MNIST sequences).")
    return data.load_video_dataset(config["dataset"], config["data_dir"] or None,
                                   config["seq_len"], config["video_height"],
                                   config["video_width"])
  base = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  return data.make_digit_sequences(base, config["task"], config["seq_len"], config["mode_count"],
                                   config["train_sequences"], config["val_sequences"],
                                   config["data_seed"], config["test_sequences"])


# ---------------------------------------------------------------------------------------------
# Models.


_MODEL_RE = re.compile(r"(lstm|gru)|(tt|bt)_(lstm|gru)(?:_r(\d+))?(?:_c(\d+))?")


def parse_model_name(name: str) -> dict:
  """"bt_lstm_r2_c3" -> {"cell": "bt_lstm", "rank": 2, "blocks": 3} (None where absent)."""
  match = _MODEL_RE.fullmatch(name)
  if not match or (match.group(1) is None and match.group(2) == "tt" and match.group(5)):
    raise ValueError(f"model name {name!r} is not one of lstm, gru, tt_<lstm|gru>[_r<rank>], "
                     "bt_<lstm|gru>[_r<rank>][_c<blocks>].")
  if match.group(1):
    return {"cell": match.group(1), "rank": None, "blocks": None}
  return {"cell": f"{match.group(2)}_{match.group(3)}",
          "rank": int(match.group(4)) if match.group(4) else None,
          "blocks": int(match.group(5)) if match.group(5) else None}


def _input_map_factors(config: dict, cell: str):
  in_f = tuple(int(f) for f in config["input_factors"])
  hid_f = tuple(int(f) for f in config["hidden_factors"])
  gates = 4 if cell.endswith("lstm") else 3
  return in_f, (gates * hid_f[0],) + hid_f[1:]


def model_input_params(name: str, config: dict) -> int:
  """Weights of the input-to-hidden map of model `name` (formula, no bias), for rank matching."""
  spec = parse_model_name(name)
  in_f, out_f = _input_map_factors(config, spec["cell"])
  if spec["cell"].startswith("bt_"):
    return block_term.bt_num_params(in_f, out_f, spec["rank"] or 2,
                                        spec["blocks"] or config["num_blocks"])
  if spec["cell"].startswith("tt_"):
    return tensor_train.tt_num_params(in_f, out_f, spec["rank"] or config["tt_rank"] or 1)
  return math.prod(in_f) * math.prod(out_f)


def matched_tt_rank(config: dict, cell: str = "tt_lstm") -> tuple[int, str | None]:
  """The TT rank whose input-map parameter count is closest to the largest BT model's.

  Returns (rank, name of that BT model) (rank config["tt_rank"] and None if that is non-zero or
  there is no BT model with the same gating).
  """
  if config["tt_rank"]:
    return int(config["tt_rank"]), None
  gating = cell.split("_")[1]
  bts = [m for m in config["models"] if parse_model_name(m)["cell"] == f"bt_{gating}"]
  if not bts:
    return 4, None
  target = max(bts, key=lambda m: model_input_params(m, config))
  budget = model_input_params(target, config)
  in_f, out_f = _input_map_factors(config, cell)
  rank = min(range(1, 65),
             key=lambda r: (abs(tensor_train.tt_num_params(in_f, out_f, r) - budget), r))
  return rank, target


def model_learning_rate(name: str, config: dict) -> float:
  """The peak learning rate of model `name`: bt_learning_rate for BT cells, tt_learning_rate for
  TT cells (0 = learning_rate), learning_rate for the dense cells."""
  kind = parse_model_name(name)["cell"][:3]
  per_kind = {"bt_": config["bt_learning_rate"], "tt_": config["tt_learning_rate"]}.get(kind)
  return float(per_kind or config["learning_rate"])


def build_model(name: str, config: dict, num_classes: int) -> FrameSequenceClassifier:
  """The classifier of model `name` (see the module docstring) for this config."""
  spec = parse_model_name(name)
  kw = dict(cell=spec["cell"], hidden=config["hidden"], num_classes=num_classes,
            hidden_factors=tuple(int(f) for f in config["hidden_factors"]),
            optimize=config["tensor_optimize"])
  if spec["cell"][:3] in ("bt_", "tt_"):
    kw["input_factors"] = tuple(int(f) for f in config["input_factors"])
  if spec["cell"].startswith("bt_"):
    kw.update(tucker_rank=spec["rank"] or 2, num_blocks=spec["blocks"] or config["num_blocks"])
  if spec["cell"].startswith("tt_"):
    kw["tt_rank"] = spec["rank"] or matched_tt_rank(config, spec["cell"])[0]
  return FrameSequenceClassifier(**kw)


# ---------------------------------------------------------------------------------------------
# The experiment.


def _mean_curve(histories: list, key: str) -> tuple[list, list]:
  """Mean of `key` over runs at the steps all runs logged it."""
  per_run = [{h["step"]: h[key] for h in hist if key in h} for hist in histories]
  steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
  return steps, [float(np.mean([p[s] for p in per_run])) for s in steps]


def plot_curves(histories: dict, path: str, title: str) -> str:
  """Validation accuracy and training loss against steps, one line per model (mean over seeds)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for k, (name, hists) in enumerate(histories.items()):
    style = dict(color=f"C{k}", label=name, linestyle="--" if name.startswith("tt_") else "-")
    ax1.plot(*_mean_curve(hists, "val_accuracy"), marker="o", markersize=3, **style)
    ax2.plot(*_mean_curve(hists, "train_loss"), **style)
  ax1.set(xlabel="step", ylabel="validation accuracy", title="validation accuracy")
  ax2.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  ax1.legend(fontsize=8)
  fig.suptitle(title)
  return common.save_figure(fig, path)


def run(config: dict) -> dict:
  """Trains every model for every seed; returns (and writes) the results record."""
  config = common.merge_config(DEFAULTS, config)
  timer = common.Timer()
  for m in config["models"]:
    parse_model_name(m)  # Fail early on a bad name.
  if len(set(config["models"])) != len(config["models"]):
    raise ValueError(f"models must be distinct, got {config['models']}.")
  dataset = load_sequences(config)
  data_time = timer()
  workdir = config["workdir"] or None
  metrics, histories = {}, {}
  for name in config["models"]:
    model = build_model(name, config, dataset.num_classes)
    lr = model_learning_rate(name, config)
    runs = []
    for seed in config["seeds"]:
      run_dir = os.path.join(workdir, f"{name}_s{seed}") if workdir else None
      result = train.fit(model, dataset,
                         common.train_config({**config, "seed": int(seed), "learning_rate": lr}),
                         run_dir, run_info={"experiment": NAME, "model_name": name,
                                            "task": config["task"],
                                            "data_seed": config["data_seed"]})
      runs.append(result)
    accs = [r.metrics["test_accuracy"] for r in runs]
    counts = param_counts(runs[0].state.params)
    entry = {"test_accuracy": float(np.mean(accs)),
             "test_accuracy_seeds": [float(a) for a in accs],
             "test_accuracy_std": float(np.std(accs)),
             "val_accuracy_seeds": [float(r.metrics["val_accuracy"]) for r in runs],
             **counts,
             "train_loss": float(np.mean([r.metrics["train_loss"] for r in runs])),
             "learning_rate": lr,
             "steps_per_sec": float(np.median([r.metrics["steps_per_sec"] for r in runs])),
             "train_wall_time_s": float(sum(r.metrics["wall_time_s"] for r in runs))}
    spec = parse_model_name(name)
    if spec["cell"].startswith("bt_"):
      entry.update(tucker_rank=spec["rank"] or 2, num_blocks=spec["blocks"] or config["num_blocks"])
    if spec["cell"].startswith("tt_"):
      rank, matched_to = (spec["rank"], None) if spec["rank"] else matched_tt_rank(config,
                                                                                 spec["cell"])
      entry.update(tt_rank=rank, budget_matched_to=matched_to)
    metrics[name] = entry
    histories[name] = [r.history for r in runs]
  for gating in ("lstm", "gru"):  # Parameter ratios against the dense cell of the same gating.
    if gating in metrics:
      dense = metrics[gating]["input_params"]
      for name, entry in metrics.items():
        if name.endswith(gating) or f"_{gating}_" in name:
          entry["compression_vs_" + gating] = dense / entry["input_params"]
          entry["weight_compression_vs_" + gating] = (
              model_input_params(gating, config) /
              (entry["input_params"] - config["hidden"] * (4 if gating == "lstm" else 3)))
  metrics["data_wall_time_s"] = data_time
  plots = {}
  if workdir:
    plots["curves"] = plot_curves(
        histories, os.path.join(workdir, "curves.png"),
        f"{dataset.name}: {len(config['seeds'])} seed(s), hidden {config['hidden']}")
  return common.write_results(workdir, NAME, config, metrics, PAPER, timer(), plots=plots,
                              histories={k: v[0] for k, v in histories.items()},
                              tuning=QUICK_TUNING)


def report_rows(results: dict) -> list[dict]:
  """Compression of each BT model (a measurement), accuracy of each BT model against the LSTM and
  of BT against TT at the same budget (paired per-seed test-accuracy differences)."""
  m, cfg = results["metrics"], results["config"]
  lr = cfg["learning_rate"]
  scale = "paper" if cfg["dataset"].startswith("ucf") else "proxy"
  setting = (f"task {cfg['task']} on {cfg['dataset']} (T={cfg['seq_len']}), hidden "
             f"{cfg['hidden']}, {cfg['steps']} steps, Adam lr dense {lr:g} / BT "
             f"{cfg.get('bt_learning_rate') or lr:g} / TT {cfg.get('tt_learning_rate') or lr:g}, "
             f"seeds {', '.join(str(v) for v in cfg['seeds'])}")
  bts = [k for k in m if isinstance(m[k], dict) and k.startswith("bt_lstm")]
  acc = lambda k: evidence.format_summary(evidence.summarize(m[k]["test_accuracy_seeds"]), 100)
  rows = []
  if "lstm" in m and bts:
    lstm = m["lstm"]
    rows.append(evidence.row(
        "BT-LSTM: input-to-hidden parameters",
        "BT-LSTM uses far fewer parameters than the LSTM in the input-to-hidden map "
        "(fastnets target >= 100x)", "17,388x (UCF11: 57,600 -> 4 x 256 map)",
        "; ".join(f"{k}: {lstm['input_params']:,} / {m[k]['input_params']:,} = "
                  f"{m[k]['compression_vs_lstm']:.0f}x (weights only "
                  f"{m[k]['weight_compression_vs_lstm']:.0f}x)" for k in bts)
        + f" (784 -> 4 x {cfg['hidden']}, bias included; counted from shapes)",
        scale=scale, setting=setting, verdict=None))
    for k in bts:
      diff, verdict = evidence.judge_paired(m[k]["test_accuracy_seeds"],
                                            lstm["test_accuracy_seeds"], 0.0, "greater",
                                            scale=scale)
      rows.append(evidence.row(
          f"{k} vs LSTM: accuracy",
          "BT-LSTM is more accurate than the LSTM (UCF11: by 15.6 points)",
          "+15.6 points on UCF11",
          f"{k} {acc(k)} vs LSTM {acc('lstm')}; paired difference "
          f"{evidence.format_summary(diff, 100, unit=' pts')} "
          f"({m[k]['compression_vs_lstm']:.0f}x fewer input parameters)",
          scale=scale, setting=setting, verdict=verdict))
  tts = [k for k in m if isinstance(m[k], dict) and k.startswith("tt_lstm")]
  for tt in tts:
    ref = m[tt].get("budget_matched_to")
    if ref is None:  # An explicit rank: compare with the BT model of the closest budget.
      if not bts:
        continue
      ref = min(bts, key=lambda k: abs(m[k]["input_params"] - m[tt]["input_params"]))
    diff, verdict = evidence.judge_paired(m[ref]["test_accuracy_seeds"],
                                          m[tt]["test_accuracy_seeds"], 0.0, "greater",
                                          scale=scale)
    rows.append(evidence.row(
        "BT-LSTM vs TT-LSTM at the same parameter budget",
        "BT-LSTM is more accurate than TT-LSTM at the same rank/budget",
        "BT-RNN better than TT-RNN (UCF11)",
        f"{ref} {acc(ref)} ({m[ref]['input_params']:,} input params) vs {tt} (TT rank "
        f"{m[tt]['tt_rank']}) {acc(tt)} ({m[tt]['input_params']:,}); paired difference "
        f"{evidence.format_summary(diff, 100, unit=' pts')}",
        scale=scale, setting=setting, verdict=verdict))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
