"""Benchmark: direct sparse convolution (Escort) against dense, im2col and im2col + BCOO.

    python -m experiments.bench_sparse_conv --workdir=runs/bench_sparse_conv --quick

For conv layers of AlexNet, GoogLeNet and ResNet-50 (scaled down in --quick / --smoke) and each
sparsity, a random kernel is magnitude-pruned and five ways of computing the same convolution are
jitted and timed, interleaved round by round after compilation and warm-up (medians):

* `dense`: `lax.conv_general_dilated` on the densified kernel (XLA on CPU, cuDNN on GPU);
* `im2col`: `lax.conv_general_dilated_patches` + dense matmul (the cuBLAS lowering);
* `im2col_bcoo`: the same patches times a `jax.experimental.sparse.BCOO` kernel (cuSPARSE-like);
* `direct_sparse`: `fastnets.ops.sparse_conv2d(impl="xla")`, the pure-JAX direct sparse path;
* `native` and `native_1t` (CPU, when the C++ kernel builds): `sparse_conv2d(impl="native")`, the
  SkimCaffe-style C++ kernel (Park et al. 2017) on XLA's intra-op thread pool (all threads, like
  the dense baseline) and on one thread (`native_1t`);
* `pallas` (GPU only): `sparse_conv2d(impl="pallas")`, the Escort-style Triton kernel, with tile
  sizes from `fastnets.kernels.autotune` (G-BFS on device timings, cached in the workdir).
  `--pallas=interpret` runs (and autotunes) it in the Pallas interpreter on a CPU, which checks the
  GPU code path but says nothing about GPU speed; `--pallas=off` leaves it out.

`--precision` sets the matmul/conv precision of the dense baselines (`highest` keeps them in true
float32 on GPUs, whose default may use TF32, like the kernel's float32 arithmetic);
`--bcoo_cusparse` lowers im2col + BCOO to cuSPARSE on a GPU (JAX's `jax_bcoo_cusparse_lowering`;
without it BCOO products are XLA gathers), and each row records which lowering ran.

Ratios are dense time / method time measured in the same run (> 1 = faster than dense), plus
direct vs each baseline. Every output is checked against dense (max relative error recorded).
An end-to-end section prunes a small CNN and compares `model.apply` with `fastnets.nn.sparse_apply`.
Runs unchanged on a GPU (then `pallas` is timed too). Quick: about 45 CPU-seconds (measured
2026-12-06: 123 s of wall time on the shared 2-core machine at a load average of ~12, of which the
native rows added ~3 CPU-seconds and ~9 s of wall time against the same run without them).

The summary's `native_crossover` is the measured sparsity threshold of `impl="auto"`
(`fastnets.ops.sparse_conv.NATIVE_MIN_SPARSITY`): the lowest static sparsity
(`1 - max_nnz / (KH KW I)`, what the dispatch sees) from which the native kernel beat dense on
every measured layer and batch.

Writes --workdir/results.json (metrics.layers: [{network, layer, batch, sparsity, dense_s,
direct_sparse_s, native_s, native_1t_s, im2col_s, im2col_bcoo_s, pallas_s, ...}],
metrics.end_to_end, metrics.summary), table.md and speedup.png.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse as jsparse

from fastnets import benchmarking, evidence, ops
from fastnets import nn as fnn
from fastnets.kernels import native
from fastnets.kernels import sparse_conv as kernel
from fastnets.ops import sparse_conv as sc

from . import common

NAME = "bench_sparse_conv"
DN = ("NHWC", "HWIO", "NHWC")

# (network, layer, H=W, in channels, out channels, kernel, stride); padding SAME except AlexNet
# conv1 (VALID on 227, Caffe's setting). Sizes of the original networks at 224 input.
LAYERS = {
  "alexnet": [("conv1", 227, 3, 96, 11, 4), ("conv2", 27, 96, 256, 5, 1),
              ("conv3", 13, 256, 384, 3, 1), ("conv4", 13, 384, 384, 3, 1),
              ("conv5", 13, 384, 256, 3, 1)],
  "googlenet": [("inception3a_3x3", 28, 96, 128, 3, 1), ("inception3a_5x5", 28, 16, 32, 5, 1),
                ("inception4a_3x3", 14, 96, 208, 3, 1)],
  "resnet50": [("conv2_x_3x3", 56, 64, 64, 3, 1), ("conv2_x_1x1", 56, 64, 256, 1, 1),
               ("conv3_x_3x3", 28, 128, 128, 3, 1), ("conv4_x_3x3", 14, 256, 256, 3, 1),
               ("conv5_x_3x3", 7, 512, 512, 3, 1)],
}

DEFAULTS = {
  "workdir": "runs/bench_sparse_conv",
  "networks": ["alexnet", "googlenet", "resnet50"],  # any of alexnet, googlenet, resnet50
  "layers": [],            # layer names to keep (empty: all)
  "sparsities": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],  # fractions of kernel weights pruned (magnitude)
  "batch": 8,              # batch of the end-to-end rows (and layer rows if batches is empty)
  "batches": [1, 8],       # batch sizes of the layer rows (empty: [batch]); batch 1 is inference
  "spatial_scale": 1.0,    # multiplies H = W (at least the kernel size)
  "channel_scale": 1.0,    # multiplies channel counts (at least 1; AlexNet conv1 keeps 3 inputs)
  "warmup": 2,             # untimed calls per method after compilation
  "repeats": 7,            # timed interleaved rounds (medians over them)
  "bcoo": True,            # time im2col + BCOO (the cuSPARSE-like baseline)
  "bcoo_max_gflop": 50.0,  # skip im2col+BCOO on layers above this dense size (it is very slow)
  "autotune_budget": 12,   # G-BFS measurements per layer for the Pallas kernel (GPU only)
  "pallas": "auto",        # "auto" (on a GPU), "interpret" (Pallas interpreter, CPU) or "off"
  "precision": "default",  # matmul precision of dense/im2col: "default", "high" or "highest"
  "bcoo_cusparse": False,  # lower im2col+BCOO to cuSPARSE on a GPU
  "end_to_end": True,      # time a pruned small CNN: model.apply vs nn.sparse_apply
  "e2e_sparsities": [0.5, 0.8, 0.9, 0.95],  # end-to-end: fractions pruned (first conv dense)
  "e2e_width": 32,         # end-to-end CNN: channels of its first convs (later 2x, 4x)
  "e2e_size": 32,          # end-to-end: input height = width (random 3-channel images)
  "seed": 0,
}
QUICK = {
  "layers": ["conv2", "inception3a_3x3", "conv2_x_3x3", "conv2_x_1x1"],
  "sparsities": [0.5, 0.7, 0.9, 0.95], "batch": 2, "batches": [], "spatial_scale": 0.5,
  "channel_scale": 0.5,
  "warmup": 2, "repeats": 9, "e2e_sparsities": [0.9], "e2e_width": 16,
}
SMOKE = {
  "networks": ["resnet50"], "layers": ["conv2_x_3x3"], "sparsities": [0.9], "batch": 1,
  "batches": [],
  "spatial_scale": 0.15, "channel_scale": 0.125, "warmup": 1, "repeats": 2, "e2e_width": 8,
  "e2e_sparsities": [0.9],
  "e2e_size": 12,
}
PAPER = {
  "claim": "Escort: direct sparse convolution on GPUs, 2.63x faster than cuBLAS (im2col + GEMM) "
           "and 3.07x faster than cuSPARSE at 80-95% sparsity (AlexNet, GoogLeNet, ResNet-50); "
           "fastnets CPU target: direct sparse faster than dense XLA conv at 90% on the ResNet-50 "
           "3x3 layers and faster than im2col + BCOO at >= 80%",
  "value": 2.63,
  "source": "Chen 2018, Escort (arXiv:1802.10280), abstract",
}


def _scaled(config):
  out = []
  keep = set(config["layers"])
  for net in config["networks"]:
    for name, hw, cin, cout, k, s in LAYERS[net]:
      if keep and name not in keep:
        continue
      hw_s = max(k, int(round(hw * config["spatial_scale"])))
      cin_s = cin if cin <= 3 else max(1, int(round(cin * config["channel_scale"])))
      cout_s = max(1, int(round(cout * config["channel_scale"])))
      padding = "VALID" if (net, name) == ("alexnet", "conv1") else "SAME"
      out.append(dict(network=net, layer=name, hw=hw_s, cin=cin_s, cout=cout_s, k=k, stride=s,
                      padding=padding))
  return out


def _im2col_fns(kh, kw, strides, padding):
  def patches(x):
    return lax.conv_general_dilated_patches(x, (kh, kw), strides, padding, dimension_numbers=DN)

  def im2col(x, wmat):
    p = patches(x)
    return (p.reshape(-1, p.shape[-1]) @ wmat).reshape(p.shape[:3] + (wmat.shape[1],))

  def im2col_bcoo(x, wbcoo):
    p = patches(x)
    return (p.reshape(-1, p.shape[-1]) @ wbcoo).reshape(p.shape[:3] + (wbcoo.shape[1],))

  return im2col, im2col_bcoo


def _rel_err(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _bench_layer(spec, sparsity, config, rng, on_gpu, batch):
  k, s, padding = spec["k"], (spec["stride"],) * 2, spec["padding"]
  x = jnp.asarray(rng.standard_normal((batch, spec["hw"], spec["hw"], spec["cin"])),
                  jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, spec["cin"], spec["cout"])) *
                  math.sqrt(2.0 / (k * k * spec["cin"])), jnp.float32)
  w = jnp.where(ops.magnitude_mask(w, sparsity), w, 0.0) if sparsity else w
  w_np = np.asarray(w)
  sk = ops.to_sparse_kernel(w_np)
  nnz = int(np.count_nonzero(w_np))
  flops_dense = ops.conv_flops(x.shape, w.shape, s, padding)
  flops_nnz = ops.conv_flops(x.shape, w.shape, s, padding, nonzeros=nnz)
  wmat = jnp.asarray(w_np.transpose(2, 0, 1, 3).reshape(-1, spec["cout"]))
  im2col, im2col_bcoo = _im2col_fns(k, k, s, padding)
  dense_f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, s, padding, dimension_numbers=DN))
  im2col_f = jax.jit(im2col)
  direct_f = jax.jit(lambda x, w: ops.sparse_conv2d(x, w, s, padding, impl="xla"))
  fns = {"dense": lambda: dense_f(x, w), "im2col": lambda: im2col_f(x, wmat),
         "direct_sparse": lambda: direct_f(x, sk)}
  if not on_gpu and native.available():
    native_f = jax.jit(lambda x, w: ops.sparse_conv2d(x, w, s, padding, impl="native"))
    native_1t_f = jax.jit(lambda x, w: kernel.sparse_conv2d_native(x, w, s, padding,
                                                                   parallel=False))
    fns["native"] = lambda: native_f(x, sk)
    fns["native_1t"] = lambda: native_1t_f(x, sk)
  if config["bcoo"] and flops_dense / 1e9 <= config["bcoo_max_gflop"]:
    wbcoo = jsparse.BCOO.fromdense(wmat)
    bcoo_f = jax.jit(im2col_bcoo)
    try:  # a sparse-library call that fails on this device is recorded; the rest still counts
      bcoo_lowering = _bcoo_lowering(bcoo_f, x, wbcoo)
      jax.block_until_ready(bcoo_f(x, wbcoo))
      fns["im2col_bcoo"] = lambda: bcoo_f(x, wbcoo)
    except Exception as e:  # noqa: BLE001
      bcoo_lowering = f"failed: {type(e).__name__}: {e}"[:2000]
  else:
    bcoo_lowering = None
  tuned = pallas_error = None
  interpret = config["pallas"] == "interpret"
  if interpret or (on_gpu and config["pallas"] == "auto"):
    from fastnets.kernels import autotune
    try:  # a kernel that fails to compile is recorded, not fatal: the other paths still count
      tuned = autotune.autotune_sparse_conv(
        x.shape, sk, s, padding, cost="time", budget=config["autotune_budget"],
        cache=os.path.join(config["workdir"] or ".", "autotune_cache.json"), interpret=interpret)
      pallas_f = jax.jit(lambda x, w: ops.sparse_conv2d(x, w, s, padding, impl="pallas",
                                                        config=tuned, interpret=interpret))
      jax.block_until_ready(pallas_f(x, sk))
      fns["pallas"] = lambda: pallas_f(x, sk)
    except Exception as e:  # noqa: BLE001
      pallas_error = f"{type(e).__name__}: {e}"[:2000]
      if tuned is None:  # G-BFS drops failing candidates silently: record the default tiles' error
        try:
          jax.block_until_ready(ops.sparse_conv2d(x, sk, s, padding, impl="pallas",
                                                  interpret=interpret))
        except Exception as e2:  # noqa: BLE001
          pallas_error += f"; default tiles: {type(e2).__name__}: {e2}"[:2000]
  timed = benchmarking.time_interleaved(fns, config["warmup"], config["repeats"])
  med, outs = timed["median"], timed["outputs"]
  row = dict(network=spec["network"], layer=spec["layer"], batch=batch, sparsity=sparsity,
             static_sparsity=sc.static_sparsity(sk),
             shape=dict(x=list(x.shape), kernel=list(w.shape), stride=spec["stride"],
                        padding=padding),
             nnz=nnz, max_nnz_per_channel=sk.max_nnz, flops_dense=flops_dense,
             flops_nonzero=flops_nnz, flops_saved=1.0 - flops_nnz / flops_dense)
  for m in ("dense", "direct_sparse", "native", "native_1t", "im2col", "im2col_bcoo", "pallas"):
    row[f"{m}_s"] = med.get(m)
  for m in ("direct_sparse", "native", "native_1t", "im2col", "im2col_bcoo", "pallas"):
    row[f"speedup_{m}_vs_dense"] = med["dense"] / med[m] if m in med else None
  best_sparse = "pallas" if "pallas" in med else "direct_sparse"
  row["best_sparse"] = best_sparse
  row["direct_vs_im2col"] = med["im2col"] / med[best_sparse]
  row["direct_vs_bcoo"] = med["im2col_bcoo"] / med[best_sparse] if "im2col_bcoo" in med else None
  row["max_rel_err"] = {m: _rel_err(o, outs["dense"]) for m, o in outs.items() if m != "dense"}
  row["rounds"] = timed["times"]
  row["pallas_config"] = None if tuned is None else tuned.to_dict()
  row["pallas_error"] = pallas_error
  row["bcoo_lowering"] = bcoo_lowering
  return row


def _bcoo_lowering(fn, *args) -> str:
  """"cusparse" when the jitted BCOO product lowers to a cuSPARSE call, else "xla"."""
  text = fn.lower(*args).as_text().lower()
  return "cusparse" if ("cusparse" in text or "coo_matmat" in text) else "xla"


@contextlib.contextmanager
def _numerics(config):
  """The run's matmul precision and BCOO lowering (restored afterwards)."""
  try:
    before = jax.config.jax_bcoo_cusparse_lowering
  except AttributeError:  # a jax without the flag: BCOO stays on XLA (each row records it)
    before = None
  if before is not None:
    jax.config.update("jax_bcoo_cusparse_lowering", bool(config["bcoo_cusparse"]))
  precision = None if config["precision"] == "default" else config["precision"]
  try:
    with jax.default_matmul_precision(precision):
      yield
  finally:
    if before is not None:
      jax.config.update("jax_bcoo_cusparse_lowering", before)


class _E2ECNN(nn.Module):
  """A small VGG-like CNN for the end-to-end timing (random weights: timing needs no training)."""

  width: int = 32
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    w = self.width
    x = nn.relu(nn.Conv(w, (3, 3))(x))
    x = nn.relu(nn.Conv(w, (3, 3))(x))
    x = nn.relu(nn.Conv(2 * w, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(2 * w, (3, 3))(x))
    x = nn.relu(nn.Conv(4 * w, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(4 * w, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def _bench_end_to_end(config, sparsity, on_gpu):
  model = _E2ECNN(width=config["e2e_width"])
  size = config["e2e_size"]
  x = jax.random.normal(jax.random.key(config["seed"]), (config["batch"], size, size, 3))
  variables = jax.jit(model.init)(jax.random.key(config["seed"] + 1), x)
  # The first conv (3 input channels, few weights) stays dense, as in pruned-model practice.
  prunable = lambda p, leaf: ops.default_prunable(p, leaf) and "Conv_0" not in str(p)
  pruned, _ = ops.magnitude_prune(variables["params"], sparsity, prunable=prunable)
  variables = {**variables, "params": pruned}
  sparse_vars = fnn.sparsify_variables(variables, prunable=lambda p, leaf: (
    fnn.conv_kernel_prunable(p, leaf) and "Conv_0" not in str(p)))
  interpret = config["pallas"] == "interpret"
  # On a CPU "auto": per layer, the native kernel above its sparsity threshold, dense below.
  impl = "pallas" if interpret or (on_gpu and config["pallas"] == "auto") else "auto"
  dense_f = jax.jit(model.apply)
  sparse_f = jax.jit(lambda v, x: fnn.sparse_apply(model, v, x, impl=impl, interpret=interpret))
  timed = benchmarking.time_interleaved({"dense": lambda: dense_f(variables, x),
                                         "sparse": lambda: sparse_f(sparse_vars, x)},
                                        config["warmup"], config["repeats"])
  med, outs = timed["median"], timed["outputs"]
  return dict(rounds=timed["times"], sparsity=sparsity, impl=impl, dense_s=med["dense"],
              sparse_s=med["sparse"],
              speedup=med["dense"] / med["sparse"],
              max_abs_logit_diff=float(jnp.max(jnp.abs(outs["dense"] - outs["sparse"]))),
              same_predictions=bool(jnp.all(jnp.argmax(outs["dense"], -1) ==
                                            jnp.argmax(outs["sparse"], -1))))


def _geomean(v):
  v = [a for a in v if a]
  return float(math.exp(sum(math.log(a) for a in v) / len(v))) if v else None


def _crossover(rows):
  """The lowest static sparsity from which the native kernel beat dense on every row at or above
  it (None: not even on the sparsest row)."""
  best = None
  for r in sorted(rows, key=lambda r: -r["static_sparsity"]):
    if r["speedup_native_vs_dense"] <= 1:
      break
    best = r["static_sparsity"]
  return best


def _summary(rows):
  out = {}
  r3 = [r for r in rows if r["network"] == "resnet50" and "3x3" in r["layer"]]
  for s in sorted({r["sparsity"] for r in rows}):
    at = [r for r in rows if r["sparsity"] == s]
    out[f"s{int(round(100 * s))}"] = dict(
      direct_vs_dense_geomean=_geomean([r["speedup_direct_sparse_vs_dense"] for r in at]),
      pallas_vs_dense_geomean=_geomean([r["speedup_pallas_vs_dense"] for r in at]),
      direct_vs_im2col_geomean=_geomean([r["direct_vs_im2col"] for r in at]),
      direct_vs_bcoo_geomean=_geomean([r["direct_vs_bcoo"] for r in at]),
      resnet3x3_direct_vs_dense=_geomean([r["speedup_direct_sparse_vs_dense"] for r in r3
                                          if r["sparsity"] == s]),
      native_vs_dense_geomean=_geomean([r["speedup_native_vs_dense"] for r in at]),
      native_1t_vs_dense_geomean=_geomean([r["speedup_native_1t_vs_dense"] for r in at]),
    )
  nat = [r for r in rows if r["native_s"] is not None]
  out["native_crossover"] = _crossover(nat)
  out["native_crossover_3x3"] = _crossover([r for r in nat if "3x3" in r["layer"]])
  out["native_min_sparsity_in_use"] = sc.NATIVE_MIN_SPARSITY
  out["native_max_rel_err"] = (max(r["max_rel_err"]["native"] for r in nat) if nat else None)
  hi = [r for r in rows if r["sparsity"] >= 0.8 and r["direct_vs_bcoo"] is not None]
  out["direct_beats_bcoo_at_80_and_up"] = all(r["direct_vs_bcoo"] > 1 for r in hi) if hi else None
  r90 = [r for r in r3 if abs(r["sparsity"] - 0.9) < 1e-9]
  out["direct_beats_dense_resnet3x3_at_90"] = (
    all(r["speedup_direct_sparse_vs_dense"] > 1 for r in r90) if r90 else None)
  return out


def _table(rows, e2e) -> str:
  head = ("| network | layer | x | kernel | sparsity | dense ms | direct ms | native ms | "
          "native 1t ms | im2col ms | im2col+BCOO ms | pallas ms | direct/dense speed-up | "
          "native/dense | vs im2col | vs BCOO | FLOPs saved |")
  lines = [head, "|" + "---|" * 17]
  f = lambda v: "-" if v is None else f"{1e3 * v:.2f}"
  g = lambda v: "-" if v is None else f"{v:.2f}x"
  for r in rows:
    lines.append(
      f"| {r['network']} | {r['layer']} | {'x'.join(map(str, r['shape']['x']))} | "
      f"{'x'.join(map(str, r['shape']['kernel']))}/s{r['shape']['stride']} | {r['sparsity']:.2f} | "
      f"{f(r['dense_s'])} | {f(r['direct_sparse_s'])} | {f(r.get('native_s'))} | "
      f"{f(r.get('native_1t_s'))} | {f(r['im2col_s'])} | {f(r['im2col_bcoo_s'])} | "
      f"{f(r['pallas_s'])} | {g(r['speedup_direct_sparse_vs_dense'])} | "
      f"{g(r.get('speedup_native_vs_dense'))} | "
      f"{g(r['direct_vs_im2col'])} | "
      f"{g(r['direct_vs_bcoo'])} | {r['flops_saved']:.0%} |")
  if e2e:
    lines += ["", "| end-to-end sparsity | dense ms | sparse ms | speed-up | same predictions |",
              "|---|---|---|---|---|"]
    for e in e2e:
      lines.append(f"| {e['sparsity']:.2f} | {f(e['dense_s'])} | {f(e['sparse_s'])} | "
                   f"{g(e['speedup'])} | {e['same_predictions']} |")
  return "\n".join(lines)


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layers = list(dict.fromkeys((r["network"], r["layer"]) for r in rows))
  methods = [("speedup_direct_sparse_vs_dense", "direct sparse (XLA)", "-o"),
             ("speedup_native_vs_dense", "direct sparse (native C++)", "-D"),
             ("speedup_pallas_vs_dense", "direct sparse (Pallas)", "-s"),
             ("speedup_im2col_vs_dense", "im2col + matmul", "--^"),
             ("speedup_im2col_bcoo_vs_dense", "im2col + BCOO", ":v")]
  n = len(layers)
  cols = min(3, n)
  rows_ = math.ceil(n / cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_),
                           squeeze=False)
  for ax, (net, layer) in zip(axes.flat, layers):
    big = max(r["batch"] for r in rows)
    rs = sorted((r for r in rows if (r["network"], r["layer"]) == (net, layer)
                 and r["batch"] == big), key=lambda r: r["sparsity"])
    for key, label, style in methods:
      pts = [(r["sparsity"], r[key]) for r in rs if r[key]]
      if pts:
        ax.plot(*zip(*pts), style, label=label)
    ax.plot([r["sparsity"] for r in rs], [1 / (1 - r["flops_saved"]) for r in rs], color="gray",
            alpha=0.4, label="FLOP ratio (ideal)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(title=f"{net} {layer} (batch {big})", xlabel="sparsity", ylabel="speed-up vs dense",
           yscale="log")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  return common.save_figure(fig, path)


def run(config: dict) -> dict:
  """Runs the benchmark; returns (and writes) the results record."""
  config = common.merge_config(DEFAULTS, config)
  if config["pallas"] not in ("auto", "interpret", "off"):
    raise ValueError(f"pallas must be 'auto', 'interpret' or 'off'; got {config['pallas']!r}.")
  if config["precision"] not in ("default", "high", "highest"):
    raise ValueError(
      f"precision must be 'default', 'high' or 'highest'; got {config['precision']!r}.")
  timer = common.Timer()
  on_gpu = jax.default_backend() == "gpu"
  rng = np.random.default_rng(config["seed"])
  rows = []
  with _numerics(config):
    for batch in (config["batches"] or [config["batch"]]):
      for spec in _scaled(config):
        for s in config["sparsities"]:
          rows.append(_bench_layer(spec, float(s), config, rng, on_gpu, int(batch)))
    e2e = ([_bench_end_to_end(config, float(s), on_gpu) for s in config["e2e_sparsities"]]
           if config["end_to_end"] else [])
  metrics = dict(layers=rows, end_to_end=e2e, summary=_summary(rows), on_gpu=on_gpu)
  table = _table(rows, e2e)
  extra = {}
  if config["workdir"]:
    os.makedirs(config["workdir"], exist_ok=True)
    common.write_text_atomic(os.path.join(config["workdir"], "table.md"), table + "\n")
    extra["plot"] = _plot(rows, os.path.join(config["workdir"], "speedup.png"))
  print(table)
  metrics["load_average"] = common.load_average()  # timings are comparable at a similar load
  return common.write_results(config["workdir"] or None, NAME, config, metrics, PAPER, timer(),
                              **extra)


def _worst_ratio(rows, numerator, denominator):
  """The ratio summary (over interleaved rounds) of the row whose median ratio is the lowest."""
  summaries = [(r, benchmarking.ratio_summary(r["rounds"][numerator], r["rounds"][denominator]))
               for r in rows if numerator in r["rounds"] and denominator in r["rounds"]]
  return min(summaries, key=lambda rs: rs[1]["median"]) if summaries else (None, None)


def _fmt(v):
  return "none (never faster)" if v is None else f"{v:.3f}"


def _native_rows(layers, summary, scale, setting, load) -> list[dict]:
  """fastnets' targets for the native CPU kernel (both threads vs both threads)."""
  nat = [r for r in layers if r.get("native_s") is not None]
  if not nat:
    return []
  rows = []
  target = lambda r: ((r["network"] == "resnet50" and "3x3" in r["layer"]) or
                      (r["network"] == "alexnet" and r["layer"] != "conv1"))
  setting += f"; 1/5/15-min load average after timing: {load}"
  for sparsity, want in ((0.9, 2.5), (0.95, 4.0)):
    at = [r for r in nat if target(r) and abs(r["sparsity"] - sparsity) < 1e-9]
    worst, ratio = _worst_ratio(at, "dense", "native")
    if worst is not None:
      rows.append(evidence.row(
          f"Native direct sparse conv (C++, SkimCaffe-style) vs dense XLA conv, {sparsity:.0%} "
          "sparse, ResNet-50 3x3 and AlexNet conv2-5",
          f"at least {want}x faster than dense at {sparsity:.0%} sparsity (fastnets' target; "
          "SkimCaffe: 3.1-7.3x on AlexNet conv layers)", f">= {want}x vs dense",
          f"worst layer {worst['network']} {worst['layer']} batch {worst['batch']}: "
          f"{benchmarking.format_ratio(ratio)}",
          scale=scale, setting=setting, verdict=benchmarking.judge_ratio(ratio, want, scale=scale)))
  at = [r for r in nat if "3x3" in r["layer"] and r["sparsity"] >= 0.7 - 1e-9]
  worst, ratio = _worst_ratio(at, "dense", "native")
  if worst is not None:
    rows.append(evidence.row(
        "Native direct sparse conv vs dense XLA conv, 3x3 layers, sparsity >= 70%",
        "faster than dense from 70% sparsity on the 3x3 layers (fastnets' target)", "> 1x",
        f"worst: {worst['network']} {worst['layer']} batch {worst['batch']} at "
        f"{worst['sparsity']:.0%}: {benchmarking.format_ratio(ratio)}",
        scale=scale, setting=setting, verdict=benchmarking.judge_ratio(ratio, 1.0, scale=scale)))
  err = summary["native_max_rel_err"]
  exact = evidence.REPRODUCED if scale == "paper" else evidence.REPRODUCED_PROXY
  rows.append(evidence.row(
      "Native direct sparse conv = dense conv of the densified kernel",
      "outputs equal the dense convolution to float32 rounding on every benchmarked layer",
      "max rel. err <= 1e-5", f"max relative error {err:.1e} over {len(nat)} rows",
      scale=scale, setting=setting, verdict=exact if err <= 1e-5 else evidence.NOT_REPRODUCED))
  rows.append(evidence.row(
      "impl='auto' threshold on CPUs (native kernel vs dense conv)",
      "the sparsity from which the native kernel beat dense on every measured row",
      "measured, not guessed",
      f"crossover at static sparsity {_fmt(summary['native_crossover'])} (3x3 layers: "
      f"{_fmt(summary['native_crossover_3x3'])}); NATIVE_MIN_SPARSITY in use: "
      f"{summary['native_min_sparsity_in_use']}",
      scale=scale, setting=setting, verdict=None))
  return rows


def report_rows(results: dict) -> list[dict]:
  """Rows: direct sparse vs dense on the ResNet-50 3x3 layers at 90%, vs im2col + BCOO at >= 80%
  (each judged on the worst layer's per-round ratio interval), and Escort's GPU claims."""
  m, cfg = results["metrics"], results["config"]
  platform = results["devices"]["platform"]
  setting = (f"{platform.upper()}, batch {cfg['batch']}, spatial x{cfg['spatial_scale']}, "
             f"channels x{cfg['channel_scale']} of the papers' layers, {cfg['repeats']} "
             "interleaved rounds")
  scale = "paper" if cfg["spatial_scale"] == 1 and cfg["channel_scale"] == 1 else "proxy"
  layers = m["layers"]
  rows = []
  r90 = [r for r in layers if r["network"] == "resnet50" and "3x3" in r["layer"]
         and abs(r["sparsity"] - 0.9) < 1e-9]
  worst, ratio = _worst_ratio(r90, "dense", "direct_sparse")
  if worst is not None:
    rows.append(evidence.row(
        "Direct sparse conv (XLA) vs dense XLA conv, ResNet-50 3x3 layers, 90% sparse",
        "faster than dense convolution (fastnets' CPU target)", "> 1x vs dense",
        f"worst layer {worst['layer']}: {benchmarking.format_ratio(ratio)}",
        scale=scale, setting=setting, verdict=benchmarking.judge_ratio(ratio, 1.0, scale=scale)))
  hi = [r for r in layers if r["sparsity"] >= 0.8]
  worst, ratio = _worst_ratio(hi, "im2col_bcoo", "direct_sparse")
  if worst is not None:
    rows.append(evidence.row(
        "Direct sparse conv vs im2col + BCOO (the sparse-library path), sparsity >= 80%",
        "faster than the sparse-library path at every layer", "Escort: 3.07x vs cuSPARSE (GPU)",
        f"worst: {worst['network']} {worst['layer']} at {worst['sparsity']:.0%}: "
        f"{benchmarking.format_ratio(ratio)}",
        scale=scale, setting=setting, verdict=benchmarking.judge_ratio(ratio, 1.0, scale=scale)))
  rows += _native_rows(layers, m["summary"], scale, setting, m.get("load_average"))
  if m.get("on_gpu"):
    gpu = [r for r in hi if "pallas" in r["rounds"]]
    worst, ratio = _worst_ratio(gpu, "im2col", "pallas")
    if worst is not None:
      rows.append(evidence.row(
          "Escort Pallas kernel vs im2col + GEMM (GPU), sparsity >= 80%", PAPER["claim"], "2.63x",
          f"worst: {worst['network']} {worst['layer']} at {worst['sparsity']:.0%}: "
          f"{benchmarking.format_ratio(ratio)}", scale=scale, setting=setting,
          verdict=benchmarking.judge_ratio(ratio, 2.63, scale=scale)))
  else:
    for label, value in (("im2col + GEMM (cuBLAS)", "2.63x"), ("im2col + cuSPARSE", "3.07x")):
      rows.append(evidence.row(
          f"Escort direct sparse conv (GPU) vs {label}, sparsity 80-95%", PAPER["claim"], value,
          "not run: the Pallas kernel needs a GPU", scale="paper", setting=setting,
          verdict=evidence.not_testable("needs a GPU")))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
