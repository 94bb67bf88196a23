"""The steps and the summary of `tools/gpu_check.sh`, the one-command GPU check of fastnets.

    tools/gpu_check.sh              # on a machine with an NVIDIA GPU (refuses to run without one)
    tools/gpu_check.sh --dry-run    # tiny sizes, Pallas kernels in the interpreter, on a CPU

The shell script runs each subcommand below as its own process under its own time limit:

* `probe`: jax's backend and devices, versions, optional packages; exits 3 without a GPU (unless
  `--dry-run`), before anything is installed or written;
* `tests`: the kernel tests (`test_hadamard`, `test_sparse_conv`, `test_autotune`) under pytest,
  on the GPU, where the Pallas kernels compile for real and `impl="auto"` picks them;
* `step fwht`: `experiments.bench_fastfood`, fwht Pallas vs XLA vs a dense Hadamard matmul
  (HIGHEST precision) at n = 2^10, 2^12, 2^14, batch 4096, with a device-to-device copy of the
  same array timed in the same rounds (the memory-bound floor) and the achieved bytes/s;
* `step escort`: `experiments.bench_sparse_conv` on AlexNet conv2, GoogLeNet inception3a 3x3 and
  ResNet-50 conv2_x / conv4_x 3x3 at batch 8 and 80/90/95% sparsity: the Pallas kernel autotuned
  (G-BFS, small budget) against cuDNN (dense conv), im2col + GEMM (cuBLAS) and im2col + BCOO
  (cuSPARSE), all in float32 (HIGHEST precision), every output checked against dense. One layer at
  a time, each written as it finishes, so a time-out keeps the layers done;
* `step reversible`: `experiments.bench_reversible` in its quick setting (compiled step memory vs
  depth); `step baseline`: a short training run of the baseline CNN on the bundled MNIST;
* `summary`: one page (`summary.md`, and `summary.json`) with every ratio and the verdicts on the
  targets: fwht >= 10x the dense matmul at n = 4096 and >= 50% of the copy bandwidth at
  n = 2^12..2^14; Pallas sparse conv faster than cuDNN at 90% and 95% on the ResNet-50 3x3 layers;
  Escort's 2.63x over im2col + cuBLAS and 3.07x over cuSPARSE at 80-95% sparsity (Chen 2018).

Timings come from the benchmarks: interleaved rounds after compilation and warm-up, medians,
every call waited for with `block_until_ready`; ratios are between medians of the same run. A
dry run runs every step's code (the kernels in the Pallas interpreter) at tiny sizes: its timings
say nothing about a GPU, and the summary says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import traceback
import xml.etree.ElementTree as ET

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `experiments` is a folder of the repository, not an installed package.
sys.path.insert(0, REPO)

KERNEL_TESTS = ("tests/test_hadamard.py", "tests/test_sparse_conv.py", "tests/test_autotune.py")
# Dry run: a few quick tests of each file, so that the pytest step itself is exercised.
DRY_RUN_TESTS = "hadamard_matrix or conv_flops or gbfs"
# The ResNet-50 3x3 layers first: the targets are judged on them, and a time-out loses the last.
ESCORT_LAYERS = ("conv2_x_3x3", "conv4_x_3x3", "conv2", "inception3a_3x3")
# Dry run: one 3x3 and one 5x5 layer (the same code; each interpreted kernel costs a compile).
DRY_RUN_ESCORT_LAYERS = ("conv2_x_3x3", "conv2")
RESNET_3X3 = ("conv2_x_3x3", "conv4_x_3x3")
# Optional packages (import name: what is lost without it). Missing ones go into the summary.
OPTIONAL_PACKAGES = {
    "tensorflow_datasets": "tfds datasets (the check trains on the bundled MNIST, no tfds needed)",
    "tensorboardX": "TensorBoard event files of training runs (skipped with a warning)",
    "xdist": "parallel pytest workers (the kernel tests run in one process, slower)",
    "ffht": "FFHT's CPU transform in bench_fastfood (not used on a GPU)",
}
OUTPUT_RTOL = 1e-4  # max |out - dense| / max |dense| for float32 outputs (HIGHEST precision)
EXIT_NO_GPU = 3

FWHT_LOG2 = (10, 12, 14)
TARGETS = {"fwht_vs_dense_at_4096": 10.0, "fwht_copy_fraction": 0.5,
           "escort_vs_im2col": 2.63, "escort_vs_cusparse": 3.07}


# ------------------------------------------------------------------------------------------------
# Step configurations: the GPU setting and the dry run's tiny one, side by side.


def fwht_config(dry_run: bool, workdir: str) -> dict:
  """`bench_fastfood` config: fwht impls against the dense matmul and a device copy."""
  if dry_run:
    # n = 256: the kernel's two-matmul form, the one that the GPU sizes (n >= 1024) use.
    sizes = dict(fwht_log2=[8], batch=8, dense_max_log2=8, calls_per_sample=2, widths=[64],
                 layer_batch=8, warmup=1, repeats=2)
  else:
    sizes = dict(fwht_log2=list(FWHT_LOG2), batch=4096, dense_max_log2=14, calls_per_sample=10,
                 widths=[1024, 4096], layer_batch=1024, warmup=2, repeats=11)
  return dict(workdir=workdir, impls=["pallas", "xla"], ffht=False, copy_baseline=True, **sizes)


def escort_layers(dry_run: bool) -> tuple[str, ...]:
  return DRY_RUN_ESCORT_LAYERS if dry_run else ESCORT_LAYERS


def escort_config(dry_run: bool, workdir: str, layer: str, end_to_end: bool) -> dict:
  """`bench_sparse_conv` config for one layer: Pallas (autotuned) vs cuDNN, cuBLAS, cuSPARSE.

  The end-to-end timing (a pruned CNN through `sparse_apply`) runs on the GPU only: interpreted,
  its five kernels would double the dry run (tests/test_sparse_conv.py covers that path).
  """
  if dry_run:
    sizes = dict(batch=1, spatial_scale=0.15, channel_scale=0.125, sparsities=[0.9],
                 autotune_budget=1, warmup=1, repeats=2, pallas="interpret", end_to_end=False)
  else:
    sizes = dict(batch=8, spatial_scale=1.0, channel_scale=1.0, sparsities=[0.8, 0.9, 0.95],
                 autotune_budget=6, warmup=3, repeats=10, pallas="auto", end_to_end=end_to_end,
                 e2e_sparsities=[0.9], e2e_width=32, e2e_size=32)
  return dict(workdir=workdir, networks=["alexnet", "googlenet", "resnet50"], layers=[layer],
              batches=[], bcoo=True, precision="highest", bcoo_cusparse=True, **sizes)


def reversible_config(dry_run: bool, workdir: str) -> dict:
  module = importlib.import_module("experiments.bench_reversible")
  if dry_run:  # the full-step memory needs a second compile per method and depth
    return dict(module.SMOKE, workdir=workdir, sgd_step_memory=False)
  return dict(module.QUICK, workdir=workdir)


def baseline_config(dry_run: bool, workdir: str) -> dict:
  module = importlib.import_module("experiments.baseline")
  if dry_run:
    return dict(module.SMOKE, workdir=workdir)
  return dict(workdir=workdir, steps=300, log_every=50, eval_every=100)


# ------------------------------------------------------------------------------------------------
# Subcommands.


def _package_status() -> dict:
  status = {}
  for name in OPTIONAL_PACKAGES:
    try:
      importlib.import_module(name)
      status[name] = "ok"
    except Exception as e:  # noqa: BLE001  (an ImportError, or a broken install)
      status[name] = f"missing ({type(e).__name__})"
  return status


def probe(args) -> int:
  """Records the machine; refuses (exit 3) without a GPU unless this is a dry run."""
  backend = jax.default_backend()
  devices = jax.devices()
  smi = None
  if shutil.which("nvidia-smi"):
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20,
                          check=False)
    smi = proc.stdout.strip() or proc.stderr.strip()
  env = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "dry_run": bool(args.dry_run), "backend": backend,
      "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
      "device_kind": devices[0].device_kind, "jax": jax.__version__,
      "jaxlib": importlib.import_module("jaxlib").__version__, "python": platform.python_version(),
      "host": platform.node(), "cpu_count": os.cpu_count(), "nvidia_smi": smi,
      "packages": _package_status(),
  }
  with open(args.env_json, "w", encoding="utf-8") as f:
    json.dump(env, f, indent=2)
  print(json.dumps(env, indent=2))
  if backend != "gpu" and not args.dry_run:
    print(f"gpu_check: no GPU: JAX's backend is {backend!r} (devices: {env['devices']}). This "
          "check needs an NVIDIA GPU with jax's CUDA plugin; nothing was installed or run. "
          "Use --dry-run to exercise it on a CPU.", file=sys.stderr)
    return EXIT_NO_GPU
  return 0


def run_tests(args) -> int:
  """The kernel tests under pytest (a few of them in a dry run); junit XML into the results."""
  out = os.path.join(args.out, "tests")
  os.makedirs(out, exist_ok=True)
  # -v: one line per test in the log, which the summary reads if the step times out before
  # pytest writes junit.xml.
  cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=10",
         f"--junitxml={os.path.join(out, 'junit.xml')}", *KERNEL_TESTS]
  if args.dry_run:
    cmd += ["-k", DRY_RUN_TESTS]
  else:
    if _package_status()["xdist"] == "ok":
      cmd += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    if importlib.util.find_spec("pytest_timeout") is not None:
      cmd += ["--timeout=60"]  # one hanging test fails alone
  # Several test processes share one GPU: allocate on demand instead of 75% each.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  print("+", " ".join(cmd), flush=True)
  return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


def run_step(args) -> int:
  """One benchmark step; its results.json lands in <out>/<step>[/<layer>]."""
  workdir = os.path.join(args.out, args.name)
  if args.name == "fwht":
    module, configs = "bench_fastfood", [fwht_config(args.dry_run, workdir)]
  elif args.name == "escort":
    module = "bench_sparse_conv"
    layers = escort_layers(args.dry_run)
    configs = [escort_config(args.dry_run, os.path.join(workdir, layer), layer,
                             end_to_end=(layer == layers[-1]))
               for layer in layers]
  elif args.name == "reversible":
    module, configs = "bench_reversible", [reversible_config(args.dry_run, workdir)]
  elif args.name == "baseline":
    module, configs = "baseline", [baseline_config(args.dry_run, workdir)]
  else:
    raise ValueError(f"unknown step {args.name!r}")
  experiment = importlib.import_module(f"experiments.{module}")
  failed = 0
  for config in configs:
    print(f"--- {module}: {config['workdir']}", flush=True)
    try:  # one layer failing (e.g. a compile error) must not cost the others
      experiment.run(config)
    except Exception:  # noqa: BLE001
      failed += 1
      os.makedirs(config["workdir"], exist_ok=True)
      with open(os.path.join(config["workdir"], "error.txt"), "w", encoding="utf-8") as f:
        f.write(traceback.format_exc())
      traceback.print_exc()
      if args.name == "fwht":  # a kernel that does not compile: still time XLA, dense and copy
        print("--- fwht again without the Pallas kernel", flush=True)
        experiment.run(dict(config, impls=["xla"]))
  return 1 if failed else 0


# ------------------------------------------------------------------------------------------------
# Summary.


def _load(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _error(workdir):
  path = os.path.join(workdir, "error.txt")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      lines = [line for line in f.read().strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error"
  return None


def _steps(path) -> list[dict]:
  rows = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f.read().splitlines()[1:]:
        name, rc, seconds, limit = line.split("\t")
        rows.append(dict(step=name, rc=rc, seconds=seconds, limit=limit,
                         status={"0": "ok", "124": "timed out", "137": "killed (time or memory)",
                                 "skipped": "skipped (time budget spent)",
                                 "dry-run": "skipped (dry run)"}.get(rc, f"failed (exit {rc})")))
  return rows


_OUTCOMES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"


def _tests_from_log(path) -> dict | None:
  """Counts from pytest's -v lines, for a run cut off before it wrote junit.xml."""
  if not os.path.exists(path):
    return None
  outcomes = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      # "tests/x.py::t PASSED [ 1%]" in one process; "[gw0] [ 1%] PASSED tests/x.py::t" with xdist
      match = (re.search(rf"(tests/\S+::\S+) ({_OUTCOMES})", line)
               or re.search(rf"({_OUTCOMES}) (tests/\S+::\S+)", line))
      if match:
        test, outcome = sorted(match.groups(), key=lambda g: "::" not in g)
        outcomes[test] = outcome
  if not outcomes:
    return None
  count = lambda *kinds: sum(v in kinds for v in outcomes.values())
  return dict(tests=len(outcomes), passed=count("PASSED", "XFAIL", "XPASS"),
              failures=count("FAILED"), errors=count("ERROR"), skipped=count("SKIPPED"),
              failing=[k for k, v in outcomes.items() if v in ("FAILED", "ERROR")],
              incomplete=True)


def _tests(path, log_path) -> dict | None:
  if not os.path.exists(path):
    return _tests_from_log(log_path)
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
  total = {k: sum(int(s.get(k, 0)) for s in suites)
           for k in ("tests", "failures", "errors", "skipped")}
  failing = []
  for case in root.iter("testcase"):
    for tag in ("failure", "error"):
      bad = case.find(tag)
      if bad is not None:
        msg = (bad.get("message") or "").strip().splitlines()
        failing.append(f"{case.get('classname')}::{case.get('name')}: "
                       f"{msg[0][:200] if msg else tag}")
  total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
  total["failing"] = failing
  total["incomplete"] = False
  return total


def _ratio(a, b):
  return a / b if a and b else None


def _geomean(values):
  values = [v for v in values if v]
  return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _verdict(value, threshold, dry_run, direction="greater"):
  if value is None:
    word = "not measured"
  else:
    met = value >= threshold if direction == "greater" else value <= threshold
    word = "met" if met else "missed"
  return f"{word} (dry run)" if dry_run else word


def _fwht_summary(results, dry_run) -> dict:
  if results is None:
    return {}
  m, errors = results["metrics"]["fwht"], results.get("details", {}).get("fwht_errors", {})
  rows = []
  for n in sorted(m, key=int):
    r = m[n]
    nbytes = 4 * int(results["config"]["batch"]) * int(n)
    us = lambda key, r=r: 1e6 * r[key] if key in r else None
    rows.append(dict(
        n=int(n), pallas_us=us("pallas_s"), xla_us=us("xla_s"),
        dense_us=1e6 * r["dense_matmul_s"] if "dense_matmul_s" in r else None,
        copy_us=1e6 * r["copy_s"], copy_gbytes_per_sec=2 * nbytes / r["copy_s"] / 1e9,
        pallas_gbytes_per_sec=r.get("pallas_gbytes_per_sec"),
        xla_gbytes_per_sec=r.get("xla_gbytes_per_sec"),
        pallas_copy_fraction=r.get("pallas_copy_fraction"),
        xla_copy_fraction=r.get("xla_copy_fraction"), dense_over_pallas=r.get("dense_over_pallas"),
        dense_over_xla=r.get("dense_over_xla"),
        pallas_max_rel_err=errors.get(n, {}).get("pallas_max_rel_err"),
        xla_max_rel_err=errors.get(n, {}).get("xla_max_rel_err")))
  at = {r["n"]: r for r in rows}
  big = [r for r in rows if 2**12 <= r["n"] <= 2**14]
  fractions = [r["pallas_copy_fraction"] for r in big]
  worst = min(fractions) if fractions and None not in fractions else None
  errs = [e for r in rows for e in (r["pallas_max_rel_err"], r["xla_max_rel_err"]) if e is not None]
  targets = [
      dict(target="fwht (Pallas) >= 10x faster than the dense matmul at n = 4096",
           value=at.get(4096, {}).get("dense_over_pallas"), threshold=10.0,
           verdict=_verdict(at.get(4096, {}).get("dense_over_pallas"), 10.0, dry_run)),
      dict(target="fwht (Pallas) >= 50% of the copy bandwidth at n = 2^12..2^14 (worst n)",
           value=worst, threshold=0.5, verdict=_verdict(worst, 0.5, dry_run)),
      dict(target=f"fwht outputs match the dense matmul (max rel. error <= {OUTPUT_RTOL:g})",
           value=max(errs) if errs else None, threshold=OUTPUT_RTOL,
           verdict=_verdict(max(errs) if errs else None, OUTPUT_RTOL, dry_run, "less")),
  ]
  return dict(rows=rows, targets=targets, calls_per_sample=results["config"]["calls_per_sample"],
              batch=results["config"]["batch"])


def _escort_summary(out, dry_run) -> dict:
  rows, errors, e2e, lowering = [], {}, [], set()
  for layer in escort_layers(dry_run):
    workdir = os.path.join(out, "escort", layer)
    results = _load(os.path.join(workdir, "results.json"))
    if results is None:
      errors[layer] = _error(workdir) or "no results (the step timed out or did not run)"
      continue
    e2e += results["metrics"].get("end_to_end", [])
    for r in results["metrics"]["layers"]:
      lowering.add(r.get("bcoo_lowering"))
      errs = r["max_rel_err"]
      rows.append(dict(
          network=r["network"], layer=r["layer"], sparsity=r["sparsity"],
          x=r["shape"]["x"], kernel=r["shape"]["kernel"],
          pallas_ms=1e3 * r["pallas_s"] if r.get("pallas_s") else None,
          dense_ms=1e3 * r["dense_s"], im2col_ms=1e3 * r["im2col_s"],
          bcoo_ms=1e3 * r["im2col_bcoo_s"] if r.get("im2col_bcoo_s") else None,
          direct_xla_ms=1e3 * r["direct_sparse_s"],
          pallas_vs_dense=_ratio(r["dense_s"], r.get("pallas_s")),
          pallas_vs_im2col=_ratio(r["im2col_s"], r.get("pallas_s")),
          pallas_vs_bcoo=_ratio(r.get("im2col_bcoo_s"), r.get("pallas_s")),
          bcoo_lowering=r.get("bcoo_lowering"), max_rel_err=max(errs.values()) if errs else None,
          max_rel_err_by_method=errs, pallas_config=r.get("pallas_config"),
          pallas_error=r.get("pallas_error")))
  hi = [r for r in rows if r["sparsity"] >= 0.8 - 1e-9]
  vs_im2col = _geomean([r["pallas_vs_im2col"] for r in hi])
  vs_bcoo = _geomean([r["pallas_vs_bcoo"] for r in hi])
  resnet = [r for r in rows if r["layer"] in RESNET_3X3 and r["sparsity"] >= 0.9 - 1e-9]
  complete = ({r["layer"] for r in resnet} == set(RESNET_3X3) & set(escort_layers(dry_run))
              and all(r["pallas_vs_dense"] for r in resnet))
  resnet_min = min(r["pallas_vs_dense"] for r in resnet) if complete else None
  errs = [r["max_rel_err"] for r in rows if r["max_rel_err"] is not None]
  cusparse = lowering == {"cusparse"}
  targets = [
      dict(target="Pallas sparse conv faster than cuDNN at 90% and 95% on the ResNet-50 3x3 "
                  "layers (slowest row's speed-up)",
           value=resnet_min, threshold=1.0, verdict=_verdict(resnet_min, 1.0, dry_run)),
      dict(target="Escort's 2.63x over im2col + GEMM (cuBLAS) at 80-95% sparsity (geomean)",
           value=vs_im2col, threshold=TARGETS["escort_vs_im2col"],
           verdict=_verdict(vs_im2col, TARGETS["escort_vs_im2col"], dry_run)),
      dict(target="Escort's 3.07x over im2col + cuSPARSE at 80-95% sparsity (geomean)"
                  + ("" if cusparse else "; BCOO did not run on cuSPARSE here"),
           value=vs_bcoo, threshold=TARGETS["escort_vs_cusparse"],
           verdict=_verdict(vs_bcoo, TARGETS["escort_vs_cusparse"], dry_run)),
      dict(target=f"every output matches dense (max rel. error <= {OUTPUT_RTOL:g})",
           value=max(errs) if errs else None, threshold=OUTPUT_RTOL,
           verdict=_verdict(max(errs) if errs else None, OUTPUT_RTOL, dry_run, "less")),
  ]
  return dict(rows=rows, errors=errors, end_to_end=e2e, targets=targets,
              bcoo_lowering=sorted(str(v)[:120] for v in lowering),
              geomean_pallas_vs_im2col=vs_im2col, geomean_pallas_vs_bcoo=vs_bcoo)


def _reversible_summary(results) -> dict:
  if results is None:
    return {}
  m = results["metrics"]
  depths = sorted(next(iter(m.values())), key=int)
  return dict(depths=[int(d) for d in depths],
              temp_mib={k: [m[k][d]["temp_bytes"] / 2**20 for d in depths] for k in m},
              step_ms={k: [1e3 * m[k][d]["step_time_s"] for d in depths] for k in m},
              summary=results.get("summary", {}))


def _baseline_summary(results) -> dict:
  if results is None:
    return {}
  m = results["metrics"]
  return dict(steps=results["config"]["steps"], val_accuracy=m.get("val_accuracy"),
              test_accuracy=m.get("test_accuracy"), wall_time_s=results["wall_time_s"],
              params=m.get("params"))


def summarize(out: str, dry_run: bool) -> dict:
  """Everything the summary page shows, from the results folder `out`."""
  env = _load(os.path.join(out, "env.json")) or {}
  fwht_res = _load(os.path.join(out, "fwht", "results.json"))
  return dict(
      dry_run=dry_run, env=env, steps=_steps(os.path.join(out, "steps.tsv")),
      missing_packages={k: OPTIONAL_PACKAGES[k] for k, v in env.get("packages", {}).items()
                        if v != "ok"},
      tests=_tests(os.path.join(out, "tests", "junit.xml"),
                   os.path.join(out, "logs", "tests.log")),
      fwht=_fwht_summary(fwht_res, dry_run), fwht_error=_error(os.path.join(out, "fwht")),
      escort=_escort_summary(out, dry_run),
      reversible=_reversible_summary(_load(os.path.join(out, "reversible", "results.json"))),
      baseline=_baseline_summary(_load(os.path.join(out, "baseline", "results.json"))))


def _f(v, spec=".2f", none="-"):
  return none if v is None else format(v, spec)


def _x(v, spec=".2f"):
  return "-" if v is None else format(v, spec) + "x"


def _table(head, rows) -> list[str]:
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
      "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _bad_tests(t):
  """Failed + errored tests; None (not measured) when none ran or a cut-off run found none."""
  if not t or not t["tests"]:
    return None
  bad = t["failures"] + t["errors"]
  return None if (t["incomplete"] and not bad) else bad


def render(s: dict) -> str:
  """The one-page markdown summary."""
  env = s["env"]
  lines = ["# fastnets GPU check" + (" (DRY RUN on the CPU)" if s["dry_run"] else ""), ""]
  if s["dry_run"]:
    lines += ["**Dry run**: tiny sizes, Pallas kernels in the interpreter, on the CPU. It checks "
              "that every step runs; its timings say nothing about a GPU and its verdicts are not "
              "evidence.", ""]
  lines += [f"- date: {env.get('date')}; device: {', '.join(env.get('devices', []))}"
            f"{'; ' + env['nvidia_smi'].splitlines()[0] if env.get('nvidia_smi') else ''}",
            f"- jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, Python {env.get('python')}, "
            f"host {env.get('host')}",
            "- command: `tools/gpu_check.sh" + (" --dry-run" if s["dry_run"] else "") + "`", ""]
  lines += ["## Steps", ""] + _table(
      ["step", "status", "seconds", "limit s"],
      [(r["step"], r["status"], r["seconds"], r["limit"]) for r in s["steps"]]) + [""]
  if s["missing_packages"]:
    lines += ["Optional packages missing: " + "; ".join(
        f"`{k}` ({v})" for k, v in s["missing_packages"].items()) + ".", ""]
  targets = s["fwht"].get("targets", []) + s["escort"].get("targets", [])
  t = s["tests"]
  lines += ["## Targets", ""] + _table(
      ["target", "measured", "threshold", "verdict"],
      [("every kernel test passes on the device",
        "-" if t is None else f"{t['passed']} passed, {t['failures']} failed, {t['errors']} "
        f"errors, {t['skipped']} skipped" + (" (cut off: counts so far)" if t["incomplete"]
                                             else ""), "0 failed",
        _verdict(_bad_tests(t), 0, s["dry_run"], "less"))]
      + [(r["target"], _f(r["value"], ".3g"), _f(r["threshold"], "g"), r["verdict"])
         for r in targets]) + [""]
  if t and t["failing"]:
    lines += ["Failing tests:", ""] + [f"- {x}" for x in t["failing"][:20]] + [""]
  fw = s["fwht"]
  lines += ["## fwht (float32, batch x n)", ""]
  if fw:
    lines += [f"Median per call over interleaved rounds ({fw['calls_per_sample']} back-to-back "
              f"calls per sample, batch {fw['batch']}); bytes/s count one read and one write of "
              "the array; the copy is a device-to-device copy of the same array.", ""]
    lines += _table(
        ["n", "Pallas us", "XLA us", "dense matmul us", "copy us", "Pallas GB/s", "copy GB/s",
         "Pallas / copy bw", "XLA / copy bw", "dense / Pallas", "dense / XLA", "max rel err"],
        [(r["n"], _f(r["pallas_us"], ".1f"), _f(r["xla_us"], ".1f"), _f(r["dense_us"], ".1f"),
          _f(r["copy_us"], ".1f"), _f(r["pallas_gbytes_per_sec"], ".0f"),
          _f(r["copy_gbytes_per_sec"], ".0f"), _f(r["pallas_copy_fraction"], ".0%"),
          _f(r["xla_copy_fraction"], ".0%"), _x(r["dense_over_pallas"], ".1f"),
          _x(r["dense_over_xla"], ".1f"),
          _f(max([e for e in (r["pallas_max_rel_err"], r["xla_max_rel_err"]) if e is not None],
                 default=None), ".1e"))
         for r in fw["rows"]]) + [""]
  else:
    lines += ["No results (the step timed out or did not run).", ""]
  if s["fwht_error"]:
    lines += [f"Error (the table, if any, is a rerun without Pallas): {s['fwht_error']}", ""]
  es = s["escort"]
  lines += ["## Escort: direct sparse convolution (float32, HIGHEST precision)", ""]
  if es["rows"]:
    lines += ["Speed-ups are median time of the baseline / median time of the autotuned Pallas "
              "kernel (> 1: Pallas faster). Dense is `lax.conv_general_dilated` (cuDNN), im2col "
              "is patches + matmul (cuBLAS), BCOO is patches times a `BCOO` kernel with "
              f"`jax_bcoo_cusparse_lowering` (lowered to: {', '.join(es['bcoo_lowering'])}); "
              "direct XLA is `sparse_conv2d(impl=\"xla\")`.", ""]
    lines += _table(
        ["layer", "x", "sparsity", "Pallas ms", "cuDNN ms", "im2col ms", "BCOO ms",
         "direct XLA ms", "vs cuDNN", "vs im2col", "vs BCOO", "max rel err", "tiles"],
        [(f"{r['network']} {r['layer']}", "x".join(map(str, r["x"])), f"{r['sparsity']:.2f}",
          _f(r["pallas_ms"], ".3f"), _f(r["dense_ms"], ".3f"), _f(r["im2col_ms"], ".3f"),
          _f(r["bcoo_ms"], ".3f"), _f(r["direct_xla_ms"], ".3f"),
          _x(r["pallas_vs_dense"]), _x(r["pallas_vs_im2col"]), _x(r["pallas_vs_bcoo"]),
          _f(r["max_rel_err"], ".1e"),
          "-" if not r["pallas_config"] else "{block_h}x{block_w}x{block_o}/w{num_warps}".format(
              **r["pallas_config"]))
         for r in es["rows"]]) + [""]
    lines += [f"Geometric mean at 80-95% sparsity: Pallas vs im2col + GEMM "
              f"{_x(es['geomean_pallas_vs_im2col'])} (Escort: 2.63x), vs im2col + BCOO "
              f"{_x(es['geomean_pallas_vs_bcoo'])} (Escort: 3.07x vs cuSPARSE).", ""]
    for r in es["rows"]:
      if r["pallas_error"]:
        lines += [f"- Pallas failed on {r['layer']} at {r['sparsity']:.2f}: "
                  f"{r['pallas_error'][:300]}"]
    for e in es["end_to_end"]:
      lines += [f"- End to end (small CNN, {e['impl']} sparse convs, {e['sparsity']:.0%} sparse): "
                f"{_x(e['speedup'])} vs dense, same predictions: {e['same_predictions']}."]
  for layer, err in es["errors"].items():
    lines += [f"- {layer}: {err}"]
  lines += [""]
  rv = s["reversible"]
  lines += ["## Reversible backprop: compiled step memory vs depth", ""]
  if rv:
    lines += _table(["method"] + [f"{d} blocks MiB / ms" for d in rv["depths"]],
                    [(k, *(f"{a:.2f} / {b:.2f}" for a, b in zip(rv["temp_mib"][k],
                                                                rv["step_ms"][k])))
                     for k in rv["temp_mib"]]) + [""]
  else:
    lines += ["No results.", ""]
  b = s["baseline"]
  lines += ["## Baseline training (small CNN, bundled MNIST)", ""]
  lines += ([f"{b['steps']} steps in {b['wall_time_s']:.0f} s: validation accuracy "
             f"{_f(b['val_accuracy'], '.2%')}, test accuracy {_f(b['test_accuracy'], '.2%')}."]
            if b else ["No results."])
  return "\n".join(lines) + "\n"


def summary(args) -> int:
  s = summarize(args.out, args.dry_run)
  with open(args.json, "w", encoding="utf-8") as f:
    json.dump(s, f, indent=2, default=str)
  text = render(s)
  with open(args.md, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("probe")
  p.add_argument("--env-json", required=True)
  p.set_defaults(fn=probe)
  p = sub.add_parser("tests")
  p.add_argument("--out", required=True)
  p.set_defaults(fn=run_tests)
  p = sub.add_parser("step")
  p.add_argument("name", choices=["fwht", "escort", "reversible", "baseline"])
  p.add_argument("--out", required=True)
  p.set_defaults(fn=run_step)
  p = sub.add_parser("summary")
  p.add_argument("--out", required=True)
  p.add_argument("--md", required=True)
  p.add_argument("--json", required=True)
  p.set_defaults(fn=summary)
  for p in sub.choices.values():
    p.add_argument("--dry-run", action="store_true")
  args = parser.parse_args(argv)
  return args.fn(args)


if __name__ == "__main__":
  sys.exit(main())
