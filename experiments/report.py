"""The main job: run every experiment and benchmark in its quick setting and write report.md.

    python -m experiments.report --workdir=runs/report [--results_doc=docs/RESULTS.md]

Each experiment writes its own results.json and plots under --workdir/<name>/. report.md opens
with a summary (how many claims are reproduced at paper scale, on a proxy, not reproduced,
inconclusive, not testable here, and how many rows are measurements), then one row per claim with
its scale (`paper` / `proxy` / `smoke`), its setting and its verdict (see `fastnets.evidence`),
then one section per experiment with its plots. `--results_doc` also writes the same report, with
its plots copied beside it, to the given path (the repository's docs/RESULTS.md is written this
way, never by hand). `--only=baseline,revnet` runs a subset; `--smoke` the tiny test settings
(seconds; every row then says scale `smoke` and its numbers mean nothing).

The experiments without timing rows (`CONCURRENT_SAFE`) run first, `--jobs` at a time, each in a
spawned process pinned to its own core and compiling at XLA's backend optimization level 1
(`WORKER_XLA_FLAGS`: shorter compiles, no timing depends on them); the others run alone afterwards,
on all cores, at XLA's defaults. XLA on one core sums in another order than on two, so a
concurrent experiment's numbers can differ from its CLI run's in the last bits, and after
training in the seed-to-seed noise, never systematically.
"""

import importlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from concurrent import futures

import jax

from fastnets import evidence
from fastnets.train import WorkdirMismatchError

from . import common

# In report order: the baseline, one entry per technique, then the benchmarks.
EXPERIMENTS = [
    "baseline",
    "bt_rnn",
    "revnet",
    "sparse_inference",
    "pacgan",
    "low_precision",
    "deep_fried",
    "dynamic_downsampling",
    "ffnet",
    "ktanh",
    "abc_net",
    "gm_sop",
    "pkt",
    "lcw",
    "anl",
    "vcl",
    "batchnorm_study",
    "gate_decorator",
    "free_tickets",
    "selective_conv",
    "bench_fastfood",
    "bench_rounding",
    "bench_sparse_conv",
    "bench_reversible",
    "bench_bt_rnn",
    "memory_planning",
]

# Quick-setting durations in seconds, for the progress line's estimate (rescaled by how fast this
# machine ran the experiments done so far) and the longest-first order of the side-by-side jobs:
# the main job of 2026-12-07 on 2 idle CPU cores, the CONCURRENT_SAFE ones each on its own core
# beside another (estimates where a setting was cut after that run).
EXPECTED_S = {
    "revnet": 250, "ffnet": 140, "sparse_inference": 147, "baseline": 130, "bt_rnn": 130,
    "batchnorm_study": 130, "selective_conv": 125, "pacgan": 120, "pkt": 120, "lcw": 98,
    "low_precision": 90, "deep_fried": 90, "dynamic_downsampling": 85, "vcl": 70, "anl": 70,
    "memory_planning": 69, "gate_decorator": 62, "gm_sop": 61, "abc_net": 61, "free_tickets": 55,
    "bench_sparse_conv": 48, "bench_bt_rnn": 46, "ktanh": 43, "bench_reversible": 28,
    "bench_fastfood": 23, "bench_rounding": 5,
}
DEFAULT_EXPECTED_S = 90

COLUMNS = ("technique", "claim", "scale", "setting", "paper", "ours", "verdict")


def _cell(value) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def _verdict_cell(verdict: str) -> str:
  base = verdict.split(" (")[0]
  if base == evidence.NOT_REPRODUCED:
    return f"**{verdict}**"
  if base == evidence.MEASUREMENT:
    return f"_{verdict}_"
  return verdict


def _minutes(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  return f"{seconds // 60}:{seconds % 60:02d}"


# Experiments whose rows hold no wall-clock measurement: the report runs them side by side
# (`jobs` at a time, each on its own core) before the others. Every experiment with a timing row
# runs alone on all cores (never beside another job). `test_concurrent_experiments_time_nothing`
# keeps timing code out of these modules.
CONCURRENT_SAFE = frozenset({
    "baseline", "bt_rnn", "revnet", "pacgan", "low_precision", "deep_fried", "ffnet", "pkt", "lcw",
    "vcl", "batchnorm_study", "selective_conv",
})
# Passed to the side-by-side workers. The thread flags do not stop XLA:CPU's Eigen pool threads
# (seen with `top -H`): pinning each worker to its own core (`_pin_worker`) is what keeps the jobs
# apart; they are kept for the floating-point order. Backend optimization level 1 (XLA's default
# is 3) shortens LLVM's code generation: on lcw's quick run (one core each, side by side) compile
# time 52 -> 30 s and wall 134 -> 112 s, training steps as fast, MNIST results identical to the
# printed digits. These workers run no timing code (CONCURRENT_SAFE), so no measured time
# depends on it; results may differ from a CLI run's in the last bits (chaotic GAN training
# turns that into seed-level noise). Timing experiments run at XLA's default.
WORKER_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 "
                    "--xla_backend_optimization_level=1")


class Pace:
  """Progress lines with an estimate of what is left:
  `[4/26] pacgan starts ... 7:40 elapsed, about 12 min left`.

  The estimate is the expected time (EXPECTED_S) of the experiments not yet finished, the
  concurrent ones divided by `jobs`, scaled by how this run's finished experiments compared with
  their expected times."""

  def __init__(self, start: float, total: int, done: int, concurrent, alone, jobs: int):
    self.start, self.total, self.done, self.jobs = start, total, done, max(1, jobs)
    self.left = {n: EXPECTED_S.get(n, DEFAULT_EXPECTED_S) / (self.jobs if n in concurrent else 1)
                 for n in list(concurrent) + list(alone)}
    self.done_expected = 0.0

  def finished(self, name: str) -> None:
    self.done += 1
    self.done_expected += self.left.pop(name, 0.0)

  def line(self, name: str, event: str) -> str:
    elapsed = time.time() - self.start
    speed = elapsed / self.done_expected if self.done_expected > 0 else 1.0
    left = sum(self.left.values()) * speed
    index = self.done + (1 if event == "starts" else 0)
    return (f"[{index}/{self.total}] {name} {event} ... {_minutes(elapsed)} elapsed, about "
            f"{max(1, round(left / 60))} min left")


def _error_text(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}"


def _run_here(module, config: dict) -> tuple:
  """(results, error text or None, seconds, reused=False) of `module.run(config)` here."""
  t0 = time.time()
  try:
    return module.run(config), None, time.time() - t0, False
  except Exception as e:  # The report records the failure and goes on with the others.
    traceback.print_exc()
    return None, _error_text(e), time.time() - t0, False


def _run_in_worker(package: str, name: str, config: dict) -> tuple:
  return _run_here(importlib.import_module(f"{package}.{name}"), config)


def _pin_worker(cores: list, counter) -> None:
  """Worker initializer: the next of `cores` for this worker, before its XLA starts (XLA:CPU sizes
  its thread pool from the cores it may use), so that side-by-side jobs do not share a core."""
  with counter.get_lock():
    index = counter.value
    counter.value += 1
  os.sched_setaffinity(0, {cores[index % len(cores)]})


def longest_first(names: list) -> list:
  """`names` by expected duration, longest first (ties keep their order): the side-by-side jobs
  start in this order, so that no long job starts last while the other core idles."""
  return sorted(names, key=lambda n: -EXPECTED_S.get(n, DEFAULT_EXPECTED_S))


def _run_concurrently(names: list, configs: dict, jobs: int, pace: Pace) -> dict:
  """Runs `names` in `jobs` fresh processes (spawned, each on its own core where the platform
  allows, sharing this run's compilation cache); returns {name: outcome} as
  `_run_here` gives it."""
  jax.devices()  # This process's XLA keeps its threads: it is set up before the flags change.
  saved = {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR",
                                          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  os.environ["XLA_FLAGS"] = f"{saved['XLA_FLAGS'] or ''} {WORKER_XLA_FLAGS}".strip()
  if jax.config.jax_compilation_cache_dir:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(
        jax.config.jax_persistent_cache_min_compile_time_secs)
  outcomes = {}
  try:
    context = multiprocessing.get_context("spawn")
    pin = {}
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
      pin = {"initializer": _pin_worker,
             "initargs": (sorted(os.sched_getaffinity(0)), context.Value("i", 0))}
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, **pin) as pool:
      running = {pool.submit(_run_in_worker, __package__, n, configs[n]): n for n in names}
      for future in futures.as_completed(running):
        name = running[future]
        try:
          outcomes[name] = future.result()
        except Exception as e:  # The worker itself died (e.g. out of memory).
          outcomes[name] = (None, _error_text(e), 0.0, False)
        pace.finished(name)
        print(pace.line(name, f"finished ({outcomes[name][2]:.0f} s)"), flush=True)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return outcomes


def _failure_row(name: str, error: str, smoke: bool) -> dict:
  return evidence.row(name, "(experiment failed)", "", f"FAILED: {error}",
                      scale="smoke" if smoke else "proxy",
                      setting=f"quick setting of experiments/{name}.py",
                      verdict=f"{evidence.INCONCLUSIVE} (experiment failed)")


def checked_rows(name: str, rows: list, smoke: bool) -> list:
  """The experiment's rows, each validated (scale, setting and verdict required); in a smoke run
  every row's scale is `smoke`, whatever the experiment said."""
  out = []
  for row in rows:
    row = dict(row, experiment=name)
    if smoke:
      row["scale"] = "smoke"
      if row.get("verdict", "").startswith(evidence.REPRODUCED):
        row["verdict"] = evidence.REPRODUCED_PROXY
    evidence.check_row(row)
    out.append(row)
  return out


def render(rows: list, sections: list, header: list) -> str:
  """report.md's text: header, summary counts, the claims table, the sections."""
  counts = evidence.summary_counts(rows)
  lines = list(header)
  lines += ["## Summary", "", f"{len(rows)} rows:", ""]
  lines += [f"- {label}: {count}" for label, count in counts.items()]
  lines += ["", "Scale: `paper` = the paper's setting; `proxy` = a smaller stand-in (the bundled "
            "MNIST digits, narrower nets, fewer steps), so a verdict there is about the proxy; "
            "`smoke` = a seconds-long check whose numbers mean nothing. Verdicts come from 95% "
            "intervals over evaluation seeds (see `fastnets/evidence.py`); `measurement` rows "
            "are facts that cannot fail and carry no verdict.", "",
            "## Claims", "",
            "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
  for row in rows:
    cells = [_cell(row[c]) for c in COLUMNS[:-1]] + [_cell(_verdict_cell(row["verdict"]))]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "## Experiments", ""] + sections
  return "\n".join(lines) + "\n"


def write_results_doc(report_path: str, doc_path: str, command: str) -> str:
  """Copies report.md (and its plots, into `<doc dir>/results/`) to `doc_path`, with a header
  naming the command that regenerates it."""
  workdir = os.path.dirname(os.path.abspath(report_path))
  doc_dir = os.path.dirname(os.path.abspath(doc_path))
  plot_dir = os.path.join(doc_dir, "results")
  text = open(report_path).read()
  out_lines = []
  for line in text.splitlines():
    if line.startswith("![") and "](" in line:
      label, rel = line[2:].split("](", 1)
      rel = rel.rstrip(")")
      src = os.path.join(workdir, rel)
      dst = os.path.join(plot_dir, rel.replace(os.sep, "__"))
      if os.path.exists(src):
        os.makedirs(plot_dir, exist_ok=True)
        shutil.copyfile(src, dst)
        line = f"![{label}]({os.path.relpath(dst, doc_dir)})"
    out_lines.append(line)
  header = ["<!-- Generated: do not edit by hand. -->",
            f"_Written by `{command}`; rerun it to regenerate this file._", ""]
  return common.write_text_atomic(doc_path, "\n".join(header + out_lines) + "\n")


def reusable_results(path: str, config: dict):
  """The results.json at `path` when it was written for the same `config` (every key of `config`
  recorded with the same value; keys an experiment adds itself are ignored), else None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  recorded = results.get("config") or {}
  norm = lambda v: json.dumps(v, sort_keys=True, default=str)
  same = all(k in recorded and norm(recorded[k]) == norm(v) for k, v in config.items())
  return results if same and "error" not in results else None


def run_all(workdir: str, only=None, smoke: bool = False, reuse: bool = False,
            overwrite: bool = False, jobs: int = 2) -> dict:
  """Runs the experiments (quick or smoke settings) and writes workdir/report.md and report.json.

  With `reuse`, an experiment whose workdir already holds a results.json of exactly the same
  configuration is not rerun: its results are read back, and its section says so with the date
  they were written (timings then come from that earlier run). Every experiment's workdir is
  claimed before anything runs (`common.claim_workdir`): one holding results of another
  configuration stops the report at once, unless `overwrite`.

  Returns {"report": path, "results": {name: results or {"error": ...}}, "failed": [names],
  "rows": [...], "counts": summary counts, "reused": [names]}.
  """
  names = list(only) if only else list(EXPERIMENTS)
  unknown = sorted(set(names) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f"unknown experiments {unknown}; known: {EXPERIMENTS}.")
  os.makedirs(workdir, exist_ok=True)
  modules = {name: importlib.import_module(f"{__package__}.{name}") for name in names}
  configs = {name: common.merge_config(m.DEFAULTS, getattr(m, "SMOKE" if smoke else "QUICK", {}),
                                       {"workdir": os.path.join(workdir, name)})
             for name, m in modules.items()}
  mismatched = []
  for name, config in configs.items():
    try:
      common.claim_workdir(config["workdir"], name, config, overwrite)
    except WorkdirMismatchError as e:
      mismatched.append(f"{name}: {e}")
  if mismatched:
    raise WorkdirMismatchError(
        "the report's workdir holds results of other configurations (nothing was run or "
        "changed):\n  " + "\n  ".join(mismatched))
  start = time.time()
  outcomes = {}  # name -> (results, error or None, seconds, reused)
  pending = []
  for name in names:
    previous = (reusable_results(os.path.join(workdir, name, "results.json"),
                                 common.merge_config(modules[name].DEFAULTS, configs[name]))
                if reuse else None)
    if previous is not None:
      outcomes[name] = (previous, None, 0.0, True)
    else:
      pending.append(name)
  concurrent = longest_first([n for n in pending if n in CONCURRENT_SAFE]) if jobs > 1 else []
  concurrent = concurrent if len(concurrent) > 1 else []
  alone = [n for n in pending if n not in concurrent]
  pace = Pace(start, len(names), len(outcomes), concurrent, alone, jobs)
  # One compilation cache for the whole run: experiments share programs (e.g. the MNIST CNNs).
  with common.compilation_cache():
    if concurrent:
      print(f"{len(concurrent)} experiments without timings run {jobs} at a time, each on one "
            f"core: {', '.join(concurrent)}", flush=True)
      outcomes.update(_run_concurrently(concurrent, configs, jobs, pace))
    for name in alone:  # Timing experiments (and everything when jobs=1) run alone, on all cores.
      print(pace.line(name, "starts"), flush=True)
      outcomes[name] = _run_here(modules[name], configs[name])
      pace.finished(name)

  all_results, rows, sections, failed, reused = {}, [], [], [], []
  for name in names:  # Report order, whatever order they ran in.
    results, error, seconds, was_reused = outcomes[name]
    module = modules[name]
    if was_reused:
      reused.append(name)
    if error is None:
      try:
        rows.extend(checked_rows(name, module.report_rows(results), smoke))
      except Exception as e:  # A broken row fails its experiment, not the report.
        error = _error_text(e)
        traceback.print_exc()
    if error is not None:
      failed.append(name)
      results = {"error": error}
      rows.append(dict(_failure_row(name, error, smoke), experiment=name))
    all_results[name] = results
    took = (f"reused: results written {results.get('date')} in "
            f"{results.get('wall_time_s', 0):.0f} s" if was_reused
            else f"{seconds:.0f} s here" + (f", {jobs} at a time" if name in concurrent else ""))
    section = [f"### {name}", "", f"`python -m experiments.{name} --workdir=DIR --quick` "
               f"({took}). Results: `{name}/results.json`.", ""]
    for label, path in (results.get("plots") or {}).items():
      section.append(f"![{label}]({os.path.relpath(path, workdir)})")
    sections.append("\n".join(section))

  devices = common.devices_record()
  setting = "SMOKE settings: numbers are meaningless" if smoke else "quick settings"
  header = [
      "# fastnets report", "",
      f"Every experiment in its {setting}, jax {jax.__version__}, {devices['count']} "
      f"{devices['platform']} device(s) ({devices['kind']}), {time.time() - start:.0f} s in all. "
      "Accuracies are on each dataset's test split (the bundled MNIST: 2,000 digits never used "
      "for tuning); tuning, where an experiment tunes, scored on the validation split only and "
      "is recorded in its results.json under `tuning`. Timing rows are same-run ratios of "
      "interleaved measurements (medians after warm-up).", ""]
  if reused:
    header += [f"Reused from earlier runs of the same configuration (`--reuse`): "
               f"{', '.join(reused)}.", ""]
  text = render(rows, sections, header)
  path = os.path.join(workdir, "report.md")
  common.write_text_atomic(path, text)
  counts = evidence.summary_counts(rows)
  common.write_json_atomic(os.path.join(workdir, "report.json"),
                           {"rows": rows, "failed": failed, "counts": counts, "reused": reused,
                            "wall_time_s": time.time() - start})
  print(f"wrote {path} ({_minutes(time.time() - start)} in all)", flush=True)
  return {"report": path, "results": all_results, "failed": failed, "rows": rows,
          "counts": counts, "reused": reused}


def main(argv):
  del argv
  from absl import flags, logging
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  out = common.exit_on_user_error(
      lambda: run_all(flags.FLAGS.workdir, flags.FLAGS.only, flags.FLAGS.smoke,
                      flags.FLAGS.reuse, flags.FLAGS.overwrite, flags.FLAGS.jobs),
      flags.FLAGS.debug)
  if flags.FLAGS.results_doc:
    command = ("python -m experiments.report --workdir=runs/report "
               + ("--reuse " if flags.FLAGS.reuse else "")
               + f"--results_doc={flags.FLAGS.results_doc}")
    print(f"wrote {write_results_doc(out['report'], flags.FLAGS.results_doc, command)}")
  if out["failed"]:
    print(f"experiments failed: {out['failed']}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", "runs/report", "where report.md and each experiment's files go")
  flags.DEFINE_list("only", [], f"run only these experiments (of {', '.join(EXPERIMENTS)})")
  flags.DEFINE_bool("smoke", False, "tiny settings (for tests): numbers are meaningless")
  flags.DEFINE_bool("reuse", False, "do not rerun an experiment whose workdir holds results of "
                    "exactly the same configuration; the report says which were reused")
  flags.DEFINE_string("results_doc", "", "also write the report to this path (docs/RESULTS.md), "
                      "with its plots copied into results/ beside it")
  flags.DEFINE_bool("overwrite", False, "replace results of other configurations in the "
                    "experiments' workdirs (without it, the report refuses them)")
  flags.DEFINE_integer("jobs", 2, "experiments without timing rows run this many at a time, each "
                       "on its own core; the others always run alone (1: all one after another)",
                       lower_bound=1)
  flags.DEFINE_bool("debug", False, "show the traceback of a user error instead of one line")
  app.run(main, flags_parser=common.parse_flags_or_exit)
