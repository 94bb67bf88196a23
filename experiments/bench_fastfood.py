"""Benchmark: the fast Walsh-Hadamard transform and Fastfood layers against dense baselines.

    python -m experiments.bench_fastfood --workdir=runs/bench_fastfood --quick

Part 1, `fastnets.ops.fwht` (float32, batch x n, transform over n): against a dense Hadamard matmul
`x @ H_n` (jit, HIGHEST precision) and, when the `ffht` module is installed
(`pip install numpy pybind11 wheel && pip install --no-build-isolation ffht-unofficial`), FFHT's
AVX C code (`ffht.fht`, out of place, single thread, and with all
cores). `impls` lists the `fwht` implementations timed: "auto" (what `fwht` uses by default: the
native C++ kernel on a CPU, single thread, `fastnets.kernels.native`), "xla" (Kronecker-factored
matmuls; XLA uses all cores of the CPU), "native" (the C++ kernel, rows spread over XLA's CPU
thread pool), "native_1t" (the same kernel on one thread: the like-for-like comparison with FFHT's
single thread, on which the FFHT target is judged), "pallas" (on a GPU). The dense-matmul target is
checked on "auto". Part 2, `fastnets.nn.FastfoodDense` (adaptive) against
`flax.linen.Dense` for square layers width -> width: forward + backward (`jit(grad)` with respect to
parameters and input), parameter counts, and compiled memory (`jit(...).lower(...).compile()
.memory_analysis()`: temp and argument bytes). Times are medians over interleaved rounds after
compilation and warm-up; ratios are against baselines measured in the same run. Quick: about a
minute on 2 CPU cores.

With `copy_baseline`, `copy_s` is a device-to-device copy of x (jit of `jnp.copy`) and every
implementation also gets `<impl>_gbytes_per_sec` (one read and one write of x per transform) and
`<impl>_copy_fraction` (copy time / its time: the share of the copy bandwidth it reaches).

Issue-4 targets: fwht ("auto") at n = 4096 at least 10x faster than the dense matmul; fwht
("native_1t" when timed, else "auto") within 3x of FFHT for n = 2^10 .. 2^14; FastfoodDense
forward+backward faster than Dense from width 4096 up with over 100x fewer parameters.

Writes --workdir/results.json with metrics["fwht"][n] = {auto_s, xla_s, dense_matmul_s, ffht_s,
ffht_mt_s, dense_over_<impl>, <impl>_over_ffht, ...}, metrics["auto_impl"] (what "auto" ran),
metrics["layers"][width] = {fastfood_s, dense_s, fastfood_params, dense_params,
fastfood_temp_bytes, dense_temp_bytes, ...}, a `summary` against the targets, and
--workdir/fastfood_bench.png.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnets import benchmarking, evidence
from fastnets.kernels import hadamard as khad
from fastnets.kernels import native
from fastnets.nn.fastfood import FastfoodDense
from fastnets.ops import hadamard as had
from fastnets.ops.hadamard import fwht, hadamard_matrix

from . import common

NAME = "bench_fastfood"
DEFAULTS = {
    "workdir": "runs/bench_fastfood",
    "fwht_log2": [8, 9, 10, 11, 12, 13, 14, 15, 16],  # log2 of the transform sizes n
    "batch": 256,  # rows of x (batch x n) per fwht call
    "dense_max_log2": 13,   # the dense H_n matmul baseline only up to this n (O(n^2) memory)
    # "auto" = fwht's default (native on a CPU, pallas on a GPU); "native_1t" = native, 1 thread.
    "impls": ["auto", "native_1t", "xla"],  # "auto", "xla", "native", "native_1t", "pallas"
    "ffht": True,  # also time FFHT (ffht.fht) when installed
    # Memory-bound floor: time a device-to-device copy of the same array and report bytes/s.
    "copy_baseline": False,  # also time a jnp.copy of x, report GB/s
    # Calls per timed sample, issued back to back and blocked on once (time / calls): on a GPU
    # this measures the device's throughput instead of one host round trip per call.
    "calls_per_sample": 1,  # calls per timed sample (time / calls)
    "widths": [1024, 2048, 4096, 8192, 16384],  # FastfoodDense vs Dense widths
    "layer_batch": 256,  # batch of the layer benchmark
    "warmup": 3,  # untimed calls per function
    "repeats": 15,  # interleaved timed rounds (median)
    "seed": 0,
}
QUICK = {"fwht_log2": [8, 10, 12, 14], "dense_max_log2": 12, "widths": [1024, 2048, 4096, 8192],
         "warmup": 2, "repeats": 7}
SMOKE = {"fwht_log2": [4, 6], "dense_max_log2": 6, "widths": [64, 128], "batch": 8,
         "layer_batch": 8, "warmup": 1, "repeats": 2}
PAPER = {"claim": "Fastfood: O(n log d) time and O(n) parameters instead of O(nd) for a "
                  "fully connected layer (Le et al. 2013; Yang et al. 2015, Deep Fried "
                  "Convnets). fastnets targets: fwht at n=4096 >= 10x faster than a dense "
                  "matmul and within 3x of FFHT for n=2^10..2^14; FastfoodDense fwd+bwd faster "
                  "than "
                  "Dense from width 4096 with > 100x fewer parameters",
         "value": {"fwht_vs_dense_at_4096": 10.0, "fwht_over_ffht_max": 3.0,
                   "layer_speedup_from_4096": 1.0, "layer_param_ratio": 100.0},
         "source": "Yang et al. 2015 (ICCV), Deep Fried Convnets; Le et al. 2013 (ICML), "
                   "Fastfood"}


def _ffht_module():
  try:
    import ffht  # pylint: disable=g-import-not-at-top
    return ffht
  except ImportError:
    return None


def _back_to_back(f, calls: int):
  """A thunk that runs `f` `calls` times without waiting in between, then blocks on the last."""

  def thunk():
    for _ in range(calls - 1):
      f()
    return jax.block_until_ready(f())

  return thunk


def _bench_fwht(config: dict, notes: list) -> tuple[dict, dict]:
  ffht = _ffht_module() if config["ffht"] else None
  if config["ffht"] and ffht is None:
    notes.append("ffht not installed: FFHT columns missing (pip install numpy pybind11 wheel && "
                 "pip install --no-build-isolation ffht-unofficial)")
  rng = np.random.default_rng(config["seed"])
  batch = config["batch"]
  metrics, details = {}, {}
  for lg in [int(v) for v in config["fwht_log2"]]:
    n = 2**lg
    xn = rng.standard_normal((batch, n), dtype=np.float32)
    x = jnp.asarray(xn)
    fns, outs = {}, {}
    for impl in config["impls"]:
      if impl == "native_1t":
        f = jax.jit(lambda v: native.fwht_native(v[..., None], parallel=False)[..., 0])
      elif impl == "pallas" and jax.default_backend() != "gpu":
        # Off a GPU the kernel runs in the Pallas interpreter: a check of the code, not of speed.
        f = jax.jit(lambda v: khad.fwht_pallas(v, interpret=True))
      else:
        f = jax.jit(lambda v, impl=impl: fwht(v, impl=impl))
      outs[impl] = np.asarray(f(x))
      fns[f"{impl}_s"] = lambda f=f: f(x)
    if lg <= int(config["dense_max_log2"]):
      h = hadamard_matrix(n, jnp.float32)
      dense = jax.jit(lambda v, h: jnp.dot(v, h, precision=jax.lax.Precision.HIGHEST))
      outs["dense_matmul"] = np.asarray(dense(x, h))
      fns["dense_matmul_s"] = lambda dense=dense, h=h: dense(x, h)
    if config["copy_baseline"]:
      copy = jax.jit(jnp.copy)
      fns["copy_s"] = lambda copy=copy: copy(x)
    if ffht is not None:
      outs["ffht"] = ffht.fht(xn.copy())
      threads = os.cpu_count() or 1
      fns["ffht_s"] = lambda: ffht.fht(xn)
      if threads > 1:
        fns["ffht_mt_s"] = lambda: ffht.fht(xn, threads)
    # Every thunk above returns without waiting; `_back_to_back` waits for its last call.
    calls = int(config["calls_per_sample"])
    fns = {name: _back_to_back(f, calls) for name, f in fns.items()}
    timed = benchmarking.time_interleaved(fns, int(config["warmup"]), int(config["repeats"]))
    row = {k: t / calls for k, t in timed["median"].items()}
    row["rounds"] = {k: [t / calls for t in ts] for k, ts in timed["times"].items()}
    for impl in config["impls"]:
      base = row[f"{impl}_s"]
      if config["copy_baseline"]:
        row[f"{impl}_gbytes_per_sec"] = 2 * x.nbytes / base / 1e9
        row[f"{impl}_copy_fraction"] = row["copy_s"] / base
      if "dense_matmul_s" in row:
        row[f"dense_over_{impl}"] = row["dense_matmul_s"] / base
      if "ffht_s" in row:
        row[f"{impl}_over_ffht"] = base / row["ffht_s"]
      if "ffht_mt_s" in row:
        row[f"{impl}_over_ffht_mt"] = base / row["ffht_mt_s"]
    ref = outs.get("ffht", outs.get("dense_matmul"))
    if ref is not None:
      scale = float(np.abs(ref).max())
      details[str(n)] = {f"{k}_max_rel_err": float(np.abs(v - ref).max() / scale)
                         for k, v in outs.items()}
    metrics[str(n)] = row
    print(f"fwht n={n}: " + ", ".join(f"{k} {v * 1e6:.0f} us" if k.endswith("_s") else
                                       f"{k} {v:.2f}" for k, v in row.items()
                                       if k != "rounds"), flush=True)
  return metrics, details


def _count(tree) -> int:
  return int(sum(a.size for a in jax.tree_util.tree_leaves(tree)))


def _bench_layers(config: dict) -> dict:
  key = jax.random.key(config["seed"])
  metrics = {}
  for width in [int(w) for w in config["widths"]]:
    x = jax.random.normal(jax.random.fold_in(key, width), (int(config["layer_batch"]), width))
    fns, row = {}, {}
    for name, module in (("fastfood", FastfoodDense(width, adaptive=True)),
                         ("dense", nn.Dense(width))):
      variables = module.init(key, x)
      params = variables["params"]
      consts = {k: v for k, v in variables.items() if k != "params"}

      def loss(p, v, module=module, consts=consts):
        return jnp.sum(jnp.square(module.apply({"params": p, **consts}, v)))

      step = jax.jit(jax.grad(loss, argnums=(0, 1)))
      compiled = step.lower(params, x).compile()
      mem = compiled.memory_analysis()
      row[f"{name}_params"] = _count(params)
      if mem is not None:
        row[f"{name}_temp_bytes"] = int(mem.temp_size_in_bytes)
        row[f"{name}_argument_bytes"] = int(mem.argument_size_in_bytes)
      fns[f"{name}_s"] = lambda c=compiled, p=params: jax.block_until_ready(c(p, x))
    timed = benchmarking.time_interleaved(fns, int(config["warmup"]), int(config["repeats"]))
    row.update(timed["median"])
    row["rounds"] = timed["times"]
    row["speedup"] = row["dense_s"] / row["fastfood_s"]
    row["param_ratio"] = row["dense_params"] / row["fastfood_params"]
    metrics[str(width)] = row
    print(f"layer width={width}: fastfood {row['fastfood_s'] * 1e3:.2f} ms, dense "
          f"{row['dense_s'] * 1e3:.2f} ms (speedup {row['speedup']:.2f}x), params "
          f"{row['fastfood_params']} vs {row['dense_params']} ({row['param_ratio']:.0f}x)",
          flush=True)
  return metrics


def _plot(metrics: dict, path: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  rows = metrics["fwht"]
  ns = sorted(rows, key=int)
  keys = sorted({k for r in rows.values() for k in r if k.endswith("_s")})
  for k in keys:
    pts = [(int(n), rows[n][k] * 1e6) for n in ns if k in rows[n]]
    ax1.plot(*zip(*pts), marker="o", label=k[:-2])
  ax1.set(xlabel="n", ylabel="median time (us)", title="Walsh-Hadamard transform, batch x n")
  layers = metrics["layers"]
  ws = sorted(layers, key=int)
  for k in ("fastfood_s", "dense_s"):
    ax2.plot([int(w) for w in ws], [layers[w][k] * 1e3 for w in ws], marker="o",
             label=k[:-2])
  ax2.set(xlabel="width", ylabel="median fwd+bwd time (ms)", title="FastfoodDense vs Dense")
  for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
  return common.save_figure(fig, path)


def _summary(metrics: dict) -> dict:
  fw, layers = metrics["fwht"], metrics["layers"]
  s = {}
  impl = "auto" if any("auto_s" in r for r in fw.values()) else "xla"
  s["impl"] = impl if impl != "auto" else f"auto ({metrics.get('auto_impl', '?')})"
  if "4096" in fw and f"dense_over_{impl}" in fw["4096"]:
    s["fwht_vs_dense_at_4096"] = fw["4096"][f"dense_over_{impl}"]
    rounds = fw["4096"]["rounds"]
    s["fwht_vs_dense_at_4096_rounds"] = benchmarking.ratio_summary(rounds["dense_matmul_s"],
                                                                   rounds[f"{impl}_s"])
  # FFHT runs on one thread: judge the target on the single-thread kernel when it was timed.
  ffht_impl = "native_1t" if any("native_1t_s" in r for r in fw.values()) else impl
  s["ffht_comparison_impl"] = ffht_impl
  mid = {n: r[f"{ffht_impl}_over_ffht"] for n, r in fw.items()
         if f"{ffht_impl}_over_ffht" in r and 2**10 <= int(n) <= 2**14}
  if mid:
    s["fwht_over_ffht"] = mid
    s["fwht_over_ffht_max"] = max(mid.values())
    worst = max(mid, key=mid.get)
    rounds = fw[worst]["rounds"]
    s["fwht_over_ffht_worst_n"] = worst
    s["fwht_over_ffht_worst_rounds"] = benchmarking.ratio_summary(rounds[f"{ffht_impl}_s"],
                                                                  rounds["ffht_s"])
  big = {w: r for w, r in layers.items() if int(w) >= 4096}
  if big:
    s["layer_speedup_from_4096_min"] = min(r["speedup"] for r in big.values())
    slowest = min(big, key=lambda w: big[w]["speedup"])
    s["layer_speedup_slowest_width"] = slowest
    s["layer_speedup_slowest_rounds"] = benchmarking.ratio_summary(
        big[slowest]["rounds"]["dense_s"], big[slowest]["rounds"]["fastfood_s"])
    s["layer_param_ratio_from_4096_min"] = min(r["param_ratio"] for r in big.values())
  return s


def run(config: dict) -> dict:
  """Times fwht and the layers for every configured size; returns (and writes) the record."""
  config = common.merge_config(DEFAULTS, config)
  known = ("auto", "xla", "native", "native_1t", "pallas")
  unknown = sorted(set(config["impls"]) - set(known))
  if unknown or not config["impls"]:
    raise ValueError(f"impls must be a non-empty subset of {list(known)}, got {config['impls']}")
  timer = common.Timer()
  notes = []
  load_before = common.load_average()
  fwht_metrics, details = _bench_fwht(config, notes)
  metrics = {"fwht": fwht_metrics, "layers": _bench_layers(config),
             "auto_impl": had.choose_fwht_impl("auto", 2**int(config["fwht_log2"][0]), jnp.float32)}
  plots = {}
  if config["workdir"]:
    plots["fwht and layers"] = _plot(metrics, os.path.join(config["workdir"], "fastfood_bench.png"))
  return common.write_results(
      config["workdir"] or None, NAME, config, metrics, PAPER, timer(), summary=_summary(metrics),
      details={"fwht_errors": details}, notes=notes, plots=plots,
      # The 1-minute load average before and after: timings on a shared machine are only as good
      # as the machine was quiet.
      load_average={"before": load_before,
                    "after": common.load_average()},
      threads={"cpu_count": os.cpu_count(), "ffht_s": 1, "ffht_mt_s": os.cpu_count(),
               "native_1t": 1, "auto": "XLA's CPU thread pool (native kernel on a CPU)",
               "xla": "XLA's CPU thread pool"})


def report_rows(results: dict) -> list[dict]:
  """Rows: fwht vs the dense matmul and FFHT, FastfoodDense vs Dense (same-run ratios over
  interleaved rounds, judged on the geometric mean's 95% interval); parameter ratios are
  measurements."""
  s = results.get("summary", {})
  cfg = results.get("config", {})
  where = str(results.get("devices", {}).get("platform", "cpu")).upper()
  setting = (f"{where}, float32, fwht batch {cfg.get('batch')}, layers batch "
             f"{cfg.get('layer_batch')}, {cfg.get('repeats')} interleaved rounds after "
             f"{cfg.get('warmup')} warm-up")
  rows = []
  if "fwht_vs_dense_at_4096_rounds" in s:
    r = s["fwht_vs_dense_at_4096_rounds"]
    rows.append(evidence.row(
        f"fwht [{s.get('impl', 'xla')}] vs dense Hadamard matmul, n=4096",
        "O(n log n) instead of O(n^2): at least 10x faster than the dense matmul",
        "target >= 10x (fastnets)", benchmarking.format_ratio(r, 1) + " faster",
        scale="paper", setting=setting, verdict=benchmarking.judge_ratio(r, 10.0)))
  if "fwht_over_ffht_worst_rounds" in s:
    r = s["fwht_over_ffht_worst_rounds"]
    per_n = ", ".join(f"{n}: {v:.1f}x" for n, v in sorted(s["fwht_over_ffht"].items(),
                                                           key=lambda kv: int(kv[0])))
    rows.append(evidence.row(
        f"fwht [{s.get('ffht_comparison_impl', 'xla')}] vs FFHT (C, AVX, 1 thread), "
        "n=2^10..2^14",
        "close to the fastest CPU FWHT: within 3x of FFHT's time at every n",
        "target <= 3x FFHT's time",
        f"worst n={s['fwht_over_ffht_worst_n']}: {benchmarking.format_ratio(r, 2)} of FFHT's "
        f"time (medians: {per_n})",
        scale="paper", setting=setting, verdict=benchmarking.judge_ratio(r, 3.0, "less")))
  elif "fwht_vs_dense_at_4096_rounds" in s:
    rows.append(evidence.row(
        "fwht vs FFHT (C, AVX, 1 thread)", "within 3x of FFHT's time", "target <= 3x",
        "FFHT is not installed here", scale="paper", setting=setting,
        verdict=evidence.not_testable("needs the ffht package: pip install "
                                      "ffht-unofficial")))
  layers = results.get("metrics", {}).get("layers", {})
  if layers:
    speeds = ", ".join(f"{w}: {r['speedup']:.1f}x" for w, r in sorted(
        layers.items(), key=lambda kv: int(kv[0])))
    if "layer_speedup_slowest_rounds" in s:
      r = s["layer_speedup_slowest_rounds"]
      rows.append(evidence.row(
          "FastfoodDense vs Dense, forward + backward",
          "O(n log d) time: faster than Dense from width 4096 up",
          "target > 1x from width 4096",
          f"slowest width >= 4096 ({s['layer_speedup_slowest_width']}): "
          f"{benchmarking.format_ratio(r)} (medians: {speeds})",
          scale="paper", setting=setting, verdict=benchmarking.judge_ratio(r, 1.0)))
    ratios = ", ".join(f"{w}: {r['param_ratio']:.0f}x" for w, r in sorted(
        layers.items(), key=lambda kv: int(kv[0])))
    rows.append(evidence.row(
        "FastfoodDense vs Dense, parameters", "O(n) parameters instead of O(n^2)",
        "> 100x fewer from width 4096", f"{ratios} fewer parameters (counted from shapes)",
        scale="paper", setting=setting, verdict=None))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
