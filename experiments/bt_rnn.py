"""Block-Term RNNs (BT-RNN, Ye et al. 2018): LSTM vs TT-LSTM vs BT-LSTM on sequences of frames.

    python -m experiments.bt_rnn --workdir=runs/bt_rnn --quick   # MNIST sequences
    python -m experiments.bt_rnn --workdir=runs/bt_rnn           # longer MNIST-sequence run
    python -m experiments.bt_rnn --workdir=runs/bt_rnn --dataset=ucf101 --data_dir=DIR \
        --input_factors=8,20,20,18 --hidden=256 --hidden_factors=4,4,4,4   # UCF101

The paper's setting: a single recurrent layer reads a video as a sequence of flattened frames
(UCF11: 57,600 = 160 x 120 x 3 per frame) and a linear classifier reads its last hidden state. The
input-to-hidden matrix is replaced by a Block-Term (BT-LSTM) or Tensor-Train (TT-LSTM, the
baseline of Yang et al. 2017) matrix (`fastnets.models.bt_rnn.SequenceClassifier`).

Task (`fastnets.data.make_digit_sequences`): the most frequent digit of a sequence of 8 MNIST
frames (784 = 4 x 7 x 4 x 7 per step; `--task=sum_mod10` is the harder sum of the digits mod 10).
Training, validation and test sequences are built from the digits of the same split.

Models (`models`): "lstm" (dense input map), "bt_lstm_r<R>" (BT-LSTM with Tucker rank R,
`num_blocks` blocks; "_c<C>" overrides the blocks), "tt_lstm" (TT rank `tt_rank`; 0 = the rank
whose parameter count is closest to that of the largest BT model in the list: the same budget),
"tt_lstm_r<r>", and "gru" / "bt_gru_r<R>" / "tt_gru..." likewise. Each is trained with
`fastnets.train.fit` (Adam, cosine to zero) for each seed in `seeds`. The dense cells train at
`learning_rate`, the BT / TT cells at `bt_learning_rate` / `tt_learning_rate` (0 = the dense
rate): their parameters are products of N + 1 tensors and need a larger Adam step. In the quick
setting every model instead trains at its own rate from the committed sweep
`experiments/tuning/bt_rnn.json` (`python -m experiments.bt_rnn --tune`: the same Adam grid 1e-3,
3e-3, 1e-2 for every model, spanning the earlier hand-set 1e-3 (dense) and 1e-2 (BT, TT), fixed
before the sweep, one tuning seed, validation accuracy only; when it was run, test numbers of the
earlier setting had been seen). The record is in results.json (`tuning`).
`tensor_optimize="size"` picks the contraction order of the BT/TT products
(`experiments/bench_bt_rnn.py` times the orders).

Quick setting (QUICK): hidden 64 = 2 x 4 x 2 x 4, 8,000 training sequences, 600 steps of batch 64
(1,000 until the main job had to fit 30 minutes), three seeds, LSTM vs TT-LSTM (budget of
bt_lstm_r4_c2) vs BT-LSTM R = 2, 4 and R = 4 with C = 2 blocks (the largest BT map under a 100x
parameter budget). Full setting (DEFAULTS): the same task, 2,000 steps, hidden 256 = 4^4 as in the
paper. UCF11 is not in tensorflow-datasets; UCF101 is
(`ucf101`, prepared with TensorFlow into --data_dir): `--dataset=ucf101` reads `seq_len` frames per
video resized to 120 x 160 RGB (`fastnets.data.load_video_dataset`); that path is untested on the
real data.

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
    "task": "mode",               # "mode" (most frequent digit) or "sum_mod10"
    "seq_len": 8,                 # frames per sequence
    "mode_count": 3,              # task mode: occurrences of the most frequent digit
    "train_sequences": 16000,     # training sequences built from the training digits
    "val_sequences": 1000,        # validation sequences (validation digits)
    "test_sequences": 2000,       # test sequences (test digits)
    "data_seed": 0,               # seed of the sequence sampling (the same for every model)
    "models": ["lstm", "tt_lstm", "bt_lstm_r1", "bt_lstm_r2", "bt_lstm_r4"],  # compared models
    "seeds": [0, 1, 2],           # evaluation seeds
    "hidden": 256,                # hidden units (product of hidden_factors)
    "hidden_factors": [4, 4, 4, 4],  # factorisation of hidden for BT/TT
    "input_factors": [4, 7, 4, 7],  # factorisation of the frame size for BT/TT
    "num_blocks": 1,              # BT blocks C (a _c<C> model suffix overrides)
    "tt_rank": 0,                 # TT rank; 0: match the largest BT model's params
    "tensor_optimize": "size",    # BT/TT contraction order: optimal size dp greedy left_to_right
    "video_height": 120,          # ucf101: frame height after resizing
    "video_width": 160,           # ucf101: frame width after resizing
    "steps": 2000,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "bt_learning_rate": 1e-2,     # Adam rate of the BT cells (0: learning_rate)
    "tt_learning_rate": 1e-2,     # Adam rate of the TT cells (0: learning_rate)
    "log_every": 50,
    "eval_every": 200,
    "checkpoint_every": 0,
    "tuning_record": False,       # read per-model learning rates from tuning/bt_rnn.json
}
QUICK = {"train_sequences": 8000, "seeds": [0, 1, 2], "hidden": 64, "hidden_factors": [2, 4, 2, 4],
         "models": ["lstm", "tt_lstm", "bt_lstm_r2", "bt_lstm_r4", "bt_lstm_r4_c2"],
         "steps": 600, "log_every": 50, "eval_every": 200, "tuning_record": True}
SMOKE = {**QUICK, "models": ["lstm", "tt_lstm", "bt_lstm_r1"], "seeds": [0],
         "train_sequences": 64, "val_sequences": 40, "test_sequences": 40, "hidden": 16,
         "hidden_factors": [2, 2, 2, 2],
         "steps": 2, "batch_size": 16, "eval_batch_size": 40, "log_every": 1, "eval_every": 0,
         "tuning_record": False}
# The quick setting's sweep (`--tune`): the same grid and tuning seed for every model; the record's
# per-model rate replaces learning_rate / bt_learning_rate / tt_learning_rate.
TUNING_GRID = {"learning_rate": [1e-3, 3e-3, 1e-2]}
# Superseded by the record's per-model rate (bt/tt_learning_rate), or evaluation-only
# (test_sequences): not part of what a sweep depends on.
TUNING_IGNORED_KEYS = ("bt_learning_rate", "tt_learning_rate", "test_sequences")
# The full setting's rates (results.json `tuning` when no record is read).
FULL_TUNING = ("not re-derived: the dense, BT and TT rates of the full setting come from a sweep "
               "of an earlier version on the digits that were then the validation split (now "
               "training digits)")
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


def tuning_arms(config: dict):
  """The sweep's arms (`common.tune_experiment`): validation accuracy of every model."""
  config = common.merge_config(DEFAULTS, config)
  dataset = load_sequences(config)

  def score_fn(name):
    def score(values, view, seed):
      model = build_model(name, config, view.num_classes)
      tcfg = common.train_config({**config, **values, "seed": int(seed)})
      return train.fit(model, view, tcfg, None, verbose=False).metrics["val_accuracy"]
    return score
  return {name: score_fn(name) for name in config["models"]}, dataset


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
  tuned, tuning = common.apply_tuning(sys.modules[__name__], config)
  for name in config["models"]:
    model = build_model(name, config, dataset.num_classes)
    lr = float(tuned.get(name, {}).get("learning_rate", model_learning_rate(name, config)))
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
                              **({"tuning": FULL_TUNING} | tuning))


def report_rows(results: dict) -> list[dict]:
  """Compression of each BT model (a measurement), accuracy of each BT model against the LSTM and
  of BT against TT at the same budget (paired per-seed test-accuracy differences)."""
  m, cfg = results["metrics"], results["config"]
  lr = cfg["learning_rate"]
  scale = "paper" if cfg["dataset"].startswith("ucf") else "proxy"
  setting = (f"task {cfg['task']} on {cfg['dataset']} (T={cfg['seq_len']}), hidden "
             f"{cfg['hidden']}, {cfg['steps']} steps, "
             + (common.tuning_text(results) or f"Adam lr dense {lr:g} / BT "
                f"{cfg.get('bt_learning_rate') or lr:g} / TT {cfg.get('tt_learning_rate') or lr:g}")
             + f", seeds {', '.join(str(v) for v in cfg['seeds'])}")
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
