"""Sparse inference (Escort): prune a CNN while training, then run it with direct sparse convs.

    python -m experiments.sparse_inference --workdir=runs/sparse_inference --quick

1. Trains the model (default: the baseline SmallCNN on the bundled MNIST) with
   `fastnets.train.fit(..., tx_wrapper=lambda tx: gradual_magnitude_pruning(tx, schedule))`
   with a `ZhuGuptaSchedule`:
   magnitude pruning on the Zhu & Gupta (2017) schedule from `prune_begin * steps` to
   `prune_end * steps`, then fine-tuning at `final_sparsity`. The layers in `keep_dense` (default:
   the first conv, 1 input channel and 288 weights, and the classifier) are not pruned.
2. Trains the same model, same config and seed, *without* pruning (a separate dense run of the
   same number of steps) and compares validation accuracy (`dense_baseline=True`).
3. Writes the sparsity report, converts the pruned conv kernels to `SparseKernel`s
   (`fastnets.nn.sparsify_variables`) and runs the unchanged model with direct sparse convolutions
   (`fastnets.nn.sparse_apply` with `impl="auto"`: on a CPU each layer runs the native C++ kernel
   when it is sparse enough (`fastnets.ops.sparse_conv.choose_sparse_conv_impl`) and the dense
   convolution otherwise; the Pallas kernel on a GPU). Its predictions on the
   whole validation set are compared with those of the pruned *dense* model (same zeros, XLA
   convolutions): mismatches are counted, and a mismatch is "explained by a float tie" only if the
   dense model's top-2 logit gap is below 10x the largest logit difference between the two paths.
4. Times inference of one batch (interleaved rounds after compile and warm-up, medians) with the
   pruned model's convs computed four ways: dense XLA convolution, im2col + dense matmul (the
   cuBLAS lowering Escort compares with), im2col + `jax.experimental.sparse` BCOO matmul (the
   cuSPARSE-like path), and direct sparse. Ratios are measured in the same run. FLOPs of the dense
   and the pruned model are counted per example (convs and dense layers).

Escort's claim (abstract): inference 1.38x faster than cuBLAS and 1.60x faster than cuSPARSE, on
GPUs. On CPU the ratios are reported as measured; `reproduced` is None there (not the paper's
hardware). Only convolutions run sparse: the pruned dense layers keep their zeros and run as
dense matmuls in every variant (their nonzero FLOPs are counted, not saved in time).

Quick: the dense and the pruned training, 400 steps of batch 64 on three seeds each, then the
timings. (Batch 128 until the main job had to fit 30 minutes; fewer steps were not taken because
in an earlier version 300 steps left the pruned model about 2 points behind the dense one.)

Writes --workdir/results.json, sparsity_report.txt, curves.png, and dense/, pruned/ (the two
training runs' checkpoints and TensorBoard logs; rerunning resumes them).
"""

from __future__ import annotations

import os
import resource
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding
from jax import lax
from jax.experimental import sparse as jsparse

from fastnets import benchmarking, data, evidence, models, ops
from fastnets import nn as fnn
from fastnets.ops import sparse_conv as sc
from fastnets.ops.pruning import path_to_str

from . import common

NAME = "sparse_inference"
DN = ("NHWC", "HWIO", "NHWC")

DEFAULTS = {
  **common.TRAIN_DEFAULTS,
  "workdir": "runs/sparse_inference",
  "model": "cnn",            # a fastnets.models.model_names() name (cnn: the SmallCNN)
  "steps": 500,
  "log_every": 50,
  "eval_every": 100,
  "checkpoint_every": 0,
  "final_sparsity": 0.9,     # fraction of the prunable weights zeroed at prune_end
  "prune_begin": 0.2,        # fraction of steps: first pruning step
  "prune_end": 0.7,          # fraction of steps: final sparsity reached; fine-tuning after
  "prune_frequency": 0,      # steps between mask updates (0: (end - begin) / 10)
  "prune_scope": "layer",    # "layer" or "global"
  "keep_dense": ["Conv_0", "Dense_1"],  # module paths not pruned (first conv, classifier)
  "dense_baseline": True,    # also train the unpruned model for the accuracy comparison
  "min_sparsity": 0.5,       # convert a conv to sparse only if at least this sparse
  "impl": "auto",            # sparse_conv2d impl: auto = Pallas on GPU, native/dense on CPU
  "check_examples": 0,       # validation examples for the prediction check (0: all)
  "check_batch": 500,        # batch size of the sparse-vs-dense prediction check
  "time_batch": 128,         # validation images in the timed inference batch
  "warmup": 2,               # untimed calls per variant after compilation
  "repeats": 7,              # timed interleaved rounds (medians over them)
  "seeds": [0, 1, 2],        # evaluation seeds of the dense and pruned trainings
  "im2col_baselines": True,  # time im2col + matmul and im2col + BCOO too
}
QUICK = {"steps": 400, "batch_size": 64, "repeats": 5}  # cut for time: common.SETTING_CHANGES
SMOKE = {"seeds": [0], "steps": 2, "batch_size": 32, "log_every": 1, "eval_every": 0,
         "eval_batch_size": 500,
         "check_examples": 256, "check_batch": 128, "time_batch": 8, "warmup": 1, "repeats": 2}
PAPER = {"claim": "Escort: direct sparse convolution makes pruned CNN inference 1.38x faster than "
                  "cuBLAS (im2col + GEMM) and 1.60x faster than cuSPARSE on GPUs (AlexNet, "
                  "GoogLeNet, ResNet-50 pruned to 80-95%)",
         "value": [1.38, 1.60],
         "source": "Chen 2018, Escort (arXiv:1802.10280), abstract"}


def _module_path(path) -> str:
  """'Conv_0' for the key path of 'Conv_0/kernel' (the module that owns the kernel)."""
  return path_to_str(path[:-1])


def _schedule(config) -> ops.ZhuGuptaSchedule:
  """The Zhu & Gupta schedule of the config, its end on a mask-update step."""
  steps = int(config["steps"])
  begin = min(int(config["prune_begin"] * steps), steps - 1)
  end = max(begin + 1, min(int(config["prune_end"] * steps), steps - 1))
  freq = int(config["prune_frequency"]) or max(1, (end - begin) // 10)
  end = begin + max(1, (end - begin) // freq) * freq  # the last mask update reaches s_f exactly
  return ops.ZhuGuptaSchedule(float(config["final_sparsity"]), begin_step=begin, end_step=end,
                              frequency=freq)


def _layer_shapes(model, variables, x1) -> list[dict]:
  """Input shapes and settings of every nn.Conv / nn.Dense call, recorded by an interceptor."""
  calls = []

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__" and isinstance(m, (nn.Conv, nn.Dense)):
      calls.append(dict(path="/".join(m.scope.path),
                        kind="conv" if isinstance(m, nn.Conv) else "dense",
                        x_shape=tuple(args[0].shape), module=m))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x1)
  return calls


def _flops(calls, params) -> dict:
  """Per-example FLOPs (2 per MAC) of the convs and dense layers, dense and nonzero."""
  flat = {path_to_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  rows = []
  for c in calls:
    w = flat[c["path"] + "/kernel"]
    nnz = int(np.count_nonzero(w))
    if c["kind"] == "conv":
      m = c["module"]
      x_shape = (1,) + c["x_shape"][-3:]
      strides = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides or (1, 1))
      pad = canonicalize_padding(m.padding, 2)
      pad = "VALID" if pad in ("CIRCULAR", "REFLECT") else pad  # input padded beforehand
      dense = ops.conv_flops(x_shape, w.shape, strides, pad)
      nonzero = ops.conv_flops(x_shape, w.shape, strides, pad, nonzeros=nnz)
    else:
      dense, nonzero = 2 * w.size, 2 * nnz
    rows.append(dict(layer=c["path"], kind=c["kind"], flops_dense=int(dense),
                     flops_nonzero=int(nonzero)))
  tot = lambda key, kind=None: sum(r[key] for r in rows if kind is None or r["kind"] == kind)
  out = dict(layers=rows, dense=tot("flops_dense"), nonzero=tot("flops_nonzero"),
             conv_dense=tot("flops_dense", "conv"), conv_nonzero=tot("flops_nonzero", "conv"))
  out["saved"] = 1.0 - out["nonzero"] / max(out["dense"], 1)
  out["conv_saved"] = 1.0 - out["conv_nonzero"] / max(out["conv_dense"], 1)
  return out


def _im2col_interceptor(mats):
  """nn.Conv layers whose path is in `mats` run as im2col patches @ mats[path] (+ bias).

  `mats[path]` is the (I KH KW, O) kernel matrix, dense or BCOO: the cuBLAS / cuSPARSE lowering.
  """

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name != "__call__" or not isinstance(m, nn.Conv):
      return next_fun(*args, **kwargs)
    key = "/".join(m.scope.path)
    if key not in mats:
      return next_fun(*args, **kwargs)
    (x,) = args
    kernel_size = tuple(m.kernel_size)
    strides = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides or (1, 1))
    pad = canonicalize_padding(m.padding, 2)
    p = lax.conv_general_dilated_patches(x, kernel_size, strides, pad, dimension_numbers=DN)
    y = (p.reshape(-1, p.shape[-1]) @ mats[key]).reshape(p.shape[:3] + (-1,))
    if m.use_bias:
      y = y + m.get_variable("params", "bias")
    return y

  return interceptor


def _predictions_check(dense_f, sparse_f, variables, sparse_vars, ds, config) -> dict:
  """Argmax predictions of the pruned dense and the sparse model on the test set."""
  val = ds.test
  n = len(val) if not config["check_examples"] else min(len(val), int(config["check_examples"]))
  b = int(config["check_batch"])
  dl, sl = [], []
  for start in range(0, n, b):
    idx = np.arange(start, start + b) % len(val)  # fixed batch shape: wrap the last batch
    x = jnp.asarray(ds.normalize(val.get(idx)[0]))
    dl.append(np.asarray(dense_f(variables, x)))
    sl.append(np.asarray(sparse_f(sparse_vars, x)))
  dense_logits = np.concatenate(dl)[:n].astype(np.float64)
  sparse_logits = np.concatenate(sl)[:n].astype(np.float64)
  labels = np.asarray(val.labels[:n])
  dp, sp = dense_logits.argmax(-1), sparse_logits.argmax(-1)
  max_diff = float(np.max(np.abs(dense_logits - sparse_logits)))
  top2 = np.sort(dense_logits, axis=-1)[:, -2:]
  gap = top2[:, 1] - top2[:, 0]
  bad = np.flatnonzero(dp != sp)
  tie_tol = 10.0 * max_diff
  unexplained = [int(i) for i in bad if gap[i] > tie_tol]
  return dict(examples=int(n), mismatches=int(bad.size), mismatches_unexplained=len(unexplained),
              mismatch_gaps=[float(gap[i]) for i in bad[:20]], tie_tolerance=tie_tol,
              max_abs_logit_diff=max_diff,
              max_rel_logit_diff=max_diff / max(float(np.max(np.abs(dense_logits))), 1e-30),
              accuracy_pruned_dense=float(np.mean(dp == labels)),
              accuracy_sparse=float(np.mean(sp == labels)))


def _plot(dense_hist, pruned_hist, schedule, steps, path, title) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
  for hist, label, color in ((dense_hist, "dense", "C0"), (pruned_hist, "pruned", "C1")):
    if not hist:
      continue
    tr = [h for h in hist if "train_loss" in h]
    va = [h for h in hist if "val_accuracy" in h]
    ax1.plot([h["step"] for h in tr], [h["train_loss"] for h in tr], ".-", color=color, label=label)
    ax2.plot([h["step"] for h in va], [h["val_accuracy"] for h in va], "o-", color=color,
             label=label)
  ax1.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
  ax2.set(xlabel="step", ylabel="validation accuracy", title="validation accuracy")
  t = np.arange(steps + 1)
  ax3 = ax1.twinx()
  ax3.plot(t, np.asarray(schedule(t)), color="gray", alpha=0.5, label="target sparsity")
  ax3.set(ylabel="target sparsity", ylim=(0, 1))
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
  fig.suptitle(title)
  return common.save_figure(fig, path)


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run(config: dict) -> dict:
  """Trains pruned (and dense) models, checks and times sparse inference; returns the record."""
  config = common.merge_config(DEFAULTS, config)
  if config["prune_scope"] not in ("layer", "global"):
    raise ValueError(f"prune_scope must be 'layer' or 'global'; got {config['prune_scope']!r}.")
  timer = common.Timer()
  cpu0 = _cpu_seconds()
  workdir = config["workdir"] or None
  ds = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  model = models.create_model(config["model"], ds.num_classes)
  tcfg = common.train_config(config)
  keep = set(config["keep_dense"])
  prunable = lambda p, leaf: ops.default_prunable(p, leaf) and _module_path(p) not in keep
  schedule = _schedule(config)
  sub = lambda name: os.path.join(workdir, name) if workdir else None
  info = {"experiment": NAME, "model_name": config["model"]}

  seeds = [int(v) for v in config["seeds"]]
  dense_res = None
  if config["dense_baseline"]:
    dense_res = common.train_seeds(model, ds, tcfg, seeds, sub("dense"),
                                   run_info={**info, "run": "dense"})
  pruned_res = common.train_seeds(
    model, ds, tcfg, seeds, sub("pruned"),
    tx_wrapper=lambda tx: ops.gradual_magnitude_pruning(tx, schedule, scope=config["prune_scope"],
                                                        prunable=prunable),
    run_info={**info, "run": "pruned", "final_sparsity": config["final_sparsity"],
              "keep_dense": sorted(keep), "schedule": repr(schedule)})
  train_s = timer()

  # Sparsity report (masks from the optimizer state; the weights are exactly zero where pruned),
  # conversion, predictions and timing on the first evaluation seed's pruned model.
  state = pruned_res["state"]
  params = jax.device_get(state.params)
  masks = ops.pruning_masks(state.opt_state)
  report = ops.sparsity_report(params, jax.device_get(masks), prunable=prunable)
  zeros_match_masks = all(
    bool(np.all((np.asarray(p) != 0) <= np.asarray(m))) for p, m in zip(
      jax.tree.leaves(params), jax.tree.leaves(masks, is_leaf=lambda a: a is None))
    if m is not None)
  report_text = ops.format_sparsity_report(report)
  print(report_text)

  # Sparse conversion.
  variables = {"params": params, **jax.device_get(state.model_state)}
  sparse_vars = fnn.sparsify_variables(
    variables, min_sparsity=config["min_sparsity"],
    prunable=lambda p, leaf: fnn.conv_kernel_prunable(p, leaf) and _module_path(p) not in keep)
  sparse_layers = {}
  for p, leaf in jax.tree_util.tree_flatten_with_path(
      sparse_vars["params"], is_leaf=lambda a: isinstance(a, ops.SparseKernel))[0]:
    if isinstance(leaf, ops.SparseKernel):
      x_like = jnp.zeros((1, 1, 1, leaf.kernel_shape[2]), jnp.float32)
      sparse_layers[_module_path(p)] = dict(
        kernel_shape=list(leaf.kernel_shape), nnz=leaf.num_nonzero(), max_nnz=leaf.max_nnz,
        sparsity=leaf.sparsity(), impl=sc.choose_sparse_conv_impl(config["impl"], x_like, leaf))
  impl = config["impl"]
  dense_f = jax.jit(lambda v, x: model.apply(v, x, train=False))
  sparse_f = jax.jit(lambda v, x: fnn.sparse_apply(model, v, x, train=False, impl=impl))
  check = _predictions_check(dense_f, sparse_f, variables, sparse_vars, ds, config)

  # FLOPs per example.
  x1 = jnp.zeros((1,) + tuple(ds.image_shape), jnp.float32)
  flops = _flops(_layer_shapes(model, variables, x1), params)

  # Timing of one batch.
  xb = jnp.asarray(ds.normalize(ds.validation.get(
    np.arange(config["time_batch"]) % len(ds.validation))[0]))
  fns = {"dense": lambda: dense_f(variables, xb), "sparse": lambda: sparse_f(sparse_vars, xb)}
  outs = {}
  if config["im2col_baselines"] and sparse_layers:
    flat = {path_to_str(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    # Kernel matrices with rows in the (I, KH, KW) order of conv_general_dilated_patches.
    kernels = {k: flat[k + "/kernel"] for k in sparse_layers}
    mats = {k: jnp.asarray(v.transpose(2, 0, 1, 3).reshape(-1, v.shape[3]))
            for k, v in kernels.items()}
    bcoo = {k: jsparse.BCOO.fromdense(m) for k, m in mats.items()}

    def lowered(mats, v, x):
      with nn.intercept_methods(_im2col_interceptor(mats)):
        return model.apply(v, x, train=False)

    lowered_f = jax.jit(lowered)
    fns["im2col"] = lambda: lowered_f(mats, variables, xb)
    fns["im2col_bcoo"] = lambda: lowered_f(bcoo, variables, xb)
  ref = np.asarray(fns["dense"](), np.float64)
  for name, f in fns.items():
    outs[name] = float(np.max(np.abs(np.asarray(f(), np.float64) - ref)) /
                       max(float(np.max(np.abs(ref))), 1e-30))
  timed = benchmarking.time_interleaved(fns, int(config["warmup"]), int(config["repeats"]))
  med = timed["median"]
  rng_ = {n: [min(t), max(t)] for n, t in timed["times"].items()}
  timing = dict(batch=int(config["time_batch"]), impl=impl, median_s=med, min_max_s=rng_,
                rounds_s=timed["times"],
                max_rel_logit_err_vs_dense=outs,
                speedup_sparse_vs_dense=med["dense"] / med["sparse"],
                speedup_sparse_vs_im2col=(med["im2col"] / med["sparse"]) if "im2col" in med
                else None,
                speedup_sparse_vs_bcoo=(med["im2col_bcoo"] / med["sparse"])
                if "im2col_bcoo" in med else None)
  print(f"inference of {timing['batch']} examples ({impl}): " + ", ".join(
    f"{k} {1e3 * v:.2f} ms" for k, v in med.items()) +
        f" | sparse vs dense {timing['speedup_sparse_vs_dense']:.2f}x")

  pruned_acc = pruned_res["test_accuracy"]
  dense_acc = dense_res["test_accuracy"] if dense_res else None
  metrics = dict(
    seeds=seeds,
    test_accuracy_pruned=float(np.mean(pruned_acc)),
    test_accuracy_pruned_per_seed=pruned_acc,
    test_accuracy_dense=float(np.mean(dense_acc)) if dense_res else None,
    test_accuracy_dense_per_seed=dense_acc,
    accuracy_drop=float(np.mean(dense_acc) - np.mean(pruned_acc)) if dense_res else None,
    dense_comparison="separate dense runs, same config, seeds and steps" if dense_res else None,
    steps=int(config["steps"]),
    schedule=dict(final_sparsity=schedule.final_sparsity, begin_step=schedule.begin_step,
                  end_step=schedule.end_step, frequency=schedule.frequency,
                  scope=config["prune_scope"], keep_dense=sorted(keep)),
    sparsity=dict(prunable=report["prunable"], total=report["total"],
                  layers={r["path"]: r["sparsity"] for r in report["layers"] if r["prunable"]}),
    zeros_match_masks=zeros_match_masks,
    sparse_layers=sparse_layers,
    predictions=check,
    flops_per_example=flops,
    timing=timing,
    train_wall_s=train_s,
    cpu_seconds=_cpu_seconds() - cpu0,
    # Issue 21's end-to-end record: one batch of the pruned model, dense convs vs sparse_apply.
    end_to_end=dict(dense_s=med["dense"], sparse_s=med["sparse"],
                    speedup=med["dense"] / med["sparse"],
                    predictions_equal=check["mismatches"] == 0, batch=int(config["time_batch"]),
                    impl=impl, layer_impls={k: v["impl"] for k, v in sparse_layers.items()}),
  )
  plots = {}
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    common.write_text_atomic(os.path.join(workdir, "sparsity_report.txt"), report_text + "\n")
    plots["curves"] = _plot(dense_res["history"] if dense_res else None, pruned_res["history"],
                            schedule,
                            int(config["steps"]), os.path.join(workdir, "curves.png"),
                            f"{config['model']} on {ds.name}: dense vs pruned to "
                            f"{config['final_sparsity']:.0%}")
  metrics["load_average"] = common.load_average()  # timings are comparable at a similar load
  return common.write_results(workdir, NAME, config, metrics, PAPER, timer(), plots=plots,
                              history={"dense": dense_res["history"] if dense_res else None,
                                       "pruned": pruned_res["history"]},
                              devices_used=jax.device_count())


def report_rows(results: dict) -> list[dict]:
  """Rows: accuracy after pruning (paired over seeds), sparse = dense predictions (an equality
  check), and Escort's inference speed-ups (per-round ratios; the GPU claims need a GPU)."""
  m, cfg = results["metrics"], results["config"]
  t = m["timing"]
  pc = m["predictions"]
  s = m["sparsity"]["prunable"]["sparsity"]
  on_gpu = results["devices"]["platform"] == "gpu"
  setting = (f"{cfg['dataset']}, {cfg['model']}, {cfg['steps']} steps, pruned to "
             f"{cfg['final_sparsity']:.0%} ({cfg['prune_scope']}), seeds "
             f"{', '.join(str(v) for v in m['seeds'])}")
  rows = []
  if m.get("test_accuracy_dense_per_seed"):
    dense, pruned = m["test_accuracy_dense_per_seed"], m["test_accuracy_pruned_per_seed"]
    diff, verdict = evidence.judge_paired(pruned, dense, -0.01, "greater", scale="proxy")
    rows.append(evidence.row(
        f"Gradual magnitude pruning (Zhu & Gupta) of {cfg['model']} to {s:.0%}",
        "pruned models (80-95% sparse, Escort's inputs) keep the dense model's accuracy: at most "
        "1 point below it after the same steps (fastnets' criterion)", "<= 1 pt drop",
        f"pruned {evidence.format_summary(evidence.summarize(pruned), 100)} vs dense "
        f"{evidence.format_summary(evidence.summarize(dense), 100)}; paired change "
        f"{evidence.format_summary(diff, 100, unit=' pts')}",
        scale="proxy", setting=setting, verdict=verdict))
  exact = pc["mismatches_unexplained"] == 0
  rows.append(evidence.row(
      "Sparse inference (direct sparse convs) = pruned dense model",
      "predictions of the converted model equal the dense model's on every test digit (float "
      "ties aside)", "0 mismatches",
      f"{pc['mismatches']} mismatches / {pc['examples']} ({pc['mismatches_unexplained']} not "
      f"float ties), max |logit diff| {pc['max_abs_logit_diff']:.1e}",
      scale="proxy", setting=setting + " (first seed's model)",
      verdict=evidence.REPRODUCED_PROXY if exact else evidence.NOT_REPRODUCED))
  where = "GPU, Pallas" if on_gpu else f"CPU, {t['impl']}"
  fl = m["flops_per_example"]
  rounds = t.get("rounds_s", {})
  base_ratio = (benchmarking.ratio_summary(rounds["dense"], rounds["sparse"])
                if "dense" in rounds else None)
  base = ("sparse vs dense XLA conv "
          + (benchmarking.format_ratio(base_ratio) if base_ratio else
             f"{t['speedup_sparse_vs_dense']:.2f}x")
          + f"; nonzero FLOPs {1 - fl['saved']:.0%} of dense (convs {1 - fl['conv_saved']:.0%}; "
          f"only convs run sparse) ({where}, batch {t['batch']})")
  e2e = m.get("end_to_end")
  if e2e and not on_gpu and base_ratio is not None:
    rows.append(evidence.row(
        f"Pruned {cfg['model']} end to end on a CPU (sparse_apply, impl={e2e['impl']})",
        "the 90%-sparse CNN at least 2x faster end to end than the dense model, with identical "
        "predictions (fastnets' target)", ">= 2x, same predictions",
        f"{benchmarking.format_ratio(base_ratio)}; predictions equal: "
        f"{e2e['predictions_equal']}; layers: "
        + ", ".join(f"{k} {v}" for k, v in e2e["layer_impls"].items()),
        scale="proxy", setting=f"{setting}; batch {e2e['batch']}, {cfg['repeats']} interleaved "
        f"rounds; 1/5/15-min load average after the run: {m.get('load_average')}",
        verdict=(benchmarking.judge_ratio(base_ratio, 2.0, scale="proxy")
                 if e2e["predictions_equal"] else evidence.NOT_REPRODUCED)))
  for key, label, claim in (("im2col", "cuBLAS (im2col + GEMM)", 1.38),
                            ("im2col_bcoo", "cuSPARSE (im2col + BCOO)", 1.60)):
    ratio = (benchmarking.ratio_summary(rounds[key], rounds["sparse"])
             if key in rounds else None)
    ours = ("not measured; " if ratio is None else
            f"{benchmarking.format_ratio(ratio)} (CPU stand-in); ") + base
    verdict = (benchmarking.judge_ratio(ratio, claim) if on_gpu and ratio is not None
               else evidence.not_testable("needs a GPU"))
    rows.append(evidence.row(
        f"Escort end-to-end inference vs {label}", PAPER["claim"], f"{claim:.2f}x (GPU)", ours,
        scale="proxy", setting=f"{setting}; {cfg['repeats']} interleaved rounds",
        verdict=verdict))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
