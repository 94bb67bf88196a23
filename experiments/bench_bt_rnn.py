"""Benchmark: BT-LSTM (and TT-LSTM) training step against the dense LSTM's, on this machine.

    python -m experiments.bench_bt_rnn --workdir=runs/bench_bt_rnn --quick

One jitted Adam training step (forward, backward, update) of `fastnets.models.bt_rnn.
SequenceClassifier` (hidden 256 = 4x4x4x4, 8 time steps, batch 32) on random
(batch, time, input_dim) frames, for each input dimension, cell, contraction-order strategy of the
BT/TT input map (`tensor_optimize`: "optimal" = fewest FLOPs, the default of the layers; "size" =
smallest intermediates) and input-projection mode (hoisted: the input map runs once on all
batch x time rows before the scan; per_step: inside the scan on batch rows, as `nn.RNN`). The
variants of one input dimension are timed interleaved (one step of each per round, after
compilation and warm-up) and the medians are compared in the same run: `speedup_vs_lstm` =
median(dense LSTM step) / median(variant step), same projection mode. The fastnets target: BT-LSTM
faster than the LSTM at input dim 784 and above. Quick: 2-6 minutes on 2 (shared) CPU cores,
mostly compilation.

Writes --workdir/results.json with metrics["d<input_dim>"][<cell>[_size]_<mode>] =
{median_ms, speedup_vs_lstm, input_params, total_params, input_map_flops_fwd} (input_params
includes the 4H bias; input_map_flops_fwd is the forward cost of the input map per step).
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastnets import benchmarking, evidence
from fastnets.models.bt_rnn import SequenceClassifier, param_counts
from fastnets.ops import block_term, factorization, losses, tensor_train

from . import common

NAME = "bench_bt_rnn"
# Input factorisations per input dimension (784 = 28 x 28 frames split as rows/columns).
FACTORS = {784: (4, 7, 4, 7), 4096: (8, 8, 8, 8), 57600: (8, 20, 20, 18)}
DEFAULTS = {
    "workdir": "runs/bench_bt_rnn",
    "input_dims": [784, 4096],  # frame sizes (factored as in FACTORS, else balanced)
    "cells": ["lstm", "bt_lstm", "tt_lstm"],  # "lstm", "bt_lstm" and/or "tt_lstm"
    "tensor_optimize": ["optimal", "size"],  # BT/TT contraction order: "optimal" and/or "size"
    "modes": ["hoisted", "per_step"],  # input projection: "hoisted" and/or "per_step"
    "hidden": 256,  # hidden size H (the product of hidden_factors)
    "hidden_factors": [4, 4, 4, 4],  # factorisation of hidden
    "tucker_rank": 2,  # BT cells: Tucker rank R
    "num_blocks": 1,  # BT cells: number of Tucker blocks C
    "tt_rank": 4,  # TT cells: inner TT rank
    "batch": 32,  # sequences per step
    "time": 8,  # time steps per sequence
    "num_classes": 10,  # logits (random labels)
    "warmup": 3,  # untimed steps per variant after the compiling one
    "repeats": 20,  # interleaved timed rounds (median)
    "seed": 0,
}
QUICK = {"repeats": 10, "warmup": 2}
SMOKE = {"input_dims": [784], "modes": ["hoisted"], "hidden": 16, "hidden_factors": [2, 2, 2, 2],
         "batch": 4, "time": 2, "warmup": 1, "repeats": 2}
PAPER = {"claim": "BT-RNN reduces parameters and improves training efficiency over the LSTM "
                  "(Ye et al. 2018); fastnets target: a BT-LSTM training step is faster "
                  "than the dense LSTM's at input dimension 784 and above (CPU)",
         "value": 1.0, "source": "Ye et al. 2018 (CVPR), BT-RNN"}


def _make_step(model, tx):
  def loss_fn(params, x, y):
    return losses.cross_entropy_loss(model.apply({"params": params}, x), y)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def run(config: dict) -> dict:
  """Times the training steps; returns (and writes) the results record."""
  config = common.merge_config(DEFAULTS, config)
  timer = common.Timer()
  rng = np.random.default_rng(config["seed"])
  hidden_factors = tuple(int(f) for f in config["hidden_factors"])
  metrics = {}
  for dim in [int(d) for d in config["input_dims"]]:
    in_f = FACTORS.get(dim) or factorization.balanced_factors(dim, len(hidden_factors))
    x = jnp.asarray(rng.standard_normal((config["batch"], config["time"], dim)), jnp.float32)
    y = jnp.asarray(rng.integers(0, config["num_classes"], config["batch"]), jnp.int32)
    variants = {}
    combos = [(cell, opt, mode) for cell in config["cells"] for mode in config["modes"]
              for opt in (config["tensor_optimize"] if cell[:3] in ("bt_", "tt_") else ["-"])]
    for cell, opt, mode in combos:
      model = SequenceClassifier(
          cell=cell, hidden=config["hidden"], num_classes=config["num_classes"],
          input_factors=in_f, hidden_factors=hidden_factors, tucker_rank=config["tucker_rank"],
          num_blocks=config["num_blocks"], tt_rank=config["tt_rank"],
          optimize=opt if opt != "-" else "optimal",
          hoist_input_projection=(mode == "hoisted"))
      params = jax.jit(model.init)(jax.random.key(config["seed"]), x)["params"]
      tx = optax.adam(1e-3)
      state = [params, tx.init(params)]
      step = _make_step(model, tx)
      for _ in range(config["warmup"] + 1):  # The first call compiles.
        out = step(state[0], state[1], x, y)
        jax.block_until_ready(out)
      rows = config["batch"] * (config["time"] if mode == "hoisted" else 1)
      out_f = (4 * hidden_factors[0],) + hidden_factors[1:]
      if cell.startswith("bt_"):
        flops = block_term.bt_matmul_flops(rows, in_f, out_f, config["tucker_rank"],
                                   config["num_blocks"], opt).flops
      elif cell.startswith("tt_"):
        flops = tensor_train.tt_matmul_flops(rows, in_f, out_f, config["tt_rank"], opt).flops
      else:
        flops = 2 * rows * dim * 4 * config["hidden"]
      if mode == "per_step":
        flops *= config["time"]
      name = cell + ("" if opt in ("-", "optimal") else f"_{opt}") + f"_{mode}"
      variants[name] = dict(step=step, state=state, times=[], mode=mode, flops=flops,
                            **param_counts(params))
    for _ in range(config["repeats"]):  # Interleaved rounds: drift hits every variant alike.
      for v in variants.values():
        t0 = time.perf_counter()
        out = v["step"](v["state"][0], v["state"][1], x, y)
        jax.block_until_ready(out)
        v["times"].append(time.perf_counter() - t0)
    result = {}
    for key, v in variants.items():
      result[key] = {"median_ms": 1e3 * statistics.median(v["times"]), "times_s": v["times"],
                     "input_params": v["input_params"], "total_params": v["total_params"],
                     "input_map_flops_fwd": int(v["flops"])}
    for key, v in variants.items():
      base = result.get(f"lstm_{v['mode']}")
      result[key]["speedup_vs_lstm"] = (base["median_ms"] / result[key]["median_ms"]
                                        if base else None)
    result["input_factors"] = list(in_f)
    metrics[f"d{dim}"] = result
  return common.write_results(config["workdir"] or None, NAME, config, metrics, PAPER, timer())


def report_rows(results: dict) -> list[dict]:
  """One row per input dimension: BT-LSTM step speed-up over the LSTM (hoisted projections),
  judged on the per-round ratio interval."""
  rows = []
  cfg = results["config"]
  platform = results["devices"]["platform"].upper()
  for key, m in results["metrics"].items():
    name = "bt_lstm_hoisted" if "bt_lstm_hoisted" in m else "bt_lstm_per_step"
    bt = m.get(name)
    base = m.get("lstm_" + name.split("bt_lstm_")[1]) if bt else None
    if not bt or not base or "times_s" not in bt:
      continue
    ratio = benchmarking.ratio_summary(base["times_s"], bt["times_s"])
    rows.append(evidence.row(
        f"BT-LSTM training step, input {key[1:]}", PAPER["claim"],
        "faster than the LSTM (speed-up > 1)",
        f"{benchmarking.format_ratio(ratio)} ({bt['median_ms']:.1f} ms vs "
        f"{base['median_ms']:.1f} ms)",
        scale="proxy",
        setting=(f"{platform}, batch {cfg['batch']}, {cfg['time']} time steps, hidden "
                 f"{cfg['hidden']}, {cfg['repeats']} interleaved rounds"),
        verdict=benchmarking.judge_ratio(ratio, 1.0, scale="proxy")))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
