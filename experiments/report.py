"""The main job: run every experiment in its quick setting and write report.md.

    python -m experiments.report --workdir=runs/report

Each experiment writes its own results.json and plots under --workdir/<name>/; report.md puts the
papers' claims beside our measurements, one row per claim, with the plots below. Re-running with the
same workdir resumes experiments that checkpoint. `--only=baseline,revnet` runs a subset;
`--smoke` uses the tiny test settings (seconds, numbers meaningless).
"""

import importlib
import json
import os
import sys
import time
import traceback

import jax

from experiments import common

# In report order: the baseline first, then one entry per technique.
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
]


def _cell(value) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def _verdict(value) -> str:
  return {True: "yes", False: "**no**", None: "n/a"}.get(value, str(value))


def run_all(workdir: str, only=None, smoke: bool = False) -> dict:
  """Runs the experiments (quick or smoke settings) and writes workdir/report.md.

  Returns {"report": path, "results": {name: results or {"error": ...}}, "failed": [names]}.
  """
  names = list(only) if only else list(EXPERIMENTS)
  unknown = sorted(set(names) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f"unknown experiments {unknown}; known: {EXPERIMENTS}.")
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  all_results, rows, sections, failed = {}, [], [], []
  for name in names:
    module = importlib.import_module(f"experiments.{name}")
    overrides = getattr(module, "SMOKE" if smoke else "QUICK", {})
    config = common.merge_config(module.DEFAULTS, overrides,
                                 {"workdir": os.path.join(workdir, name)})
    print(f"=== {name} ({'smoke' if smoke else 'quick'} setting) ===", flush=True)
    t0 = time.time()
    try:
      results = module.run(config)
      all_results[name] = results
      rows.extend(dict(row, experiment=name) for row in module.report_rows(results))
    except Exception as e:  # The report records the failure and goes on with the others.
      failed.append(name)
      all_results[name] = {"error": f"{type(e).__name__}: {e}"}
      rows.append({"experiment": name, "technique": name, "claim": "(experiment failed)",
                   "paper": "", "ours": f"FAILED: {type(e).__name__}: {e}", "reproduced": False})
      traceback.print_exc()
    section = [f"### {name}", "", f"`python -m experiments.{name} --workdir=DIR --quick` "
               f"({time.time() - t0:.0f} s here). Results: `{name}/results.json`.", ""]
    for label, path in (all_results[name].get("plots") or {}).items():
      section.append(f"![{label}]({os.path.relpath(path, workdir)})")
    sections.append("\n".join(section))

  devices = common.devices_record()
  lines = [
      "# fastnets report", "",
      f"Quick settings of every experiment ({'SMOKE settings: numbers are meaningless' if smoke else 'minutes on a CPU'}), "
      f"jax {jax.__version__}, {devices['count']} {devices['platform']} device(s), "
      f"{time.time() - start:.0f} s in all. Paper numbers are the papers' full settings; ours are "
      "the quick settings unless the row says otherwise.", "",
      "| technique | claim | paper | ours | reproduced |",
      "| --- | --- | --- | --- | --- |",
  ]
  for row in rows:
    lines.append(f"| {_cell(row['technique'])} | {_cell(row['claim'])} | {_cell(row['paper'])} | "
                 f"{_cell(row['ours'])} | {_verdict(row['reproduced'])} |")
  lines += ["", "## Experiments", ""] + sections
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump({"rows": rows, "failed": failed}, f, indent=2, default=str)
  print(f"wrote {path}", flush=True)
  return {"report": path, "results": all_results, "failed": failed}


def main(argv):
  del argv
  from absl import flags, logging
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  out = run_all(flags.FLAGS.workdir, flags.FLAGS.only, flags.FLAGS.smoke)
  if out["failed"]:
    print(f"experiments failed: {out['failed']}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", "runs/report", "where report.md and each experiment's files go")
  flags.DEFINE_list("only", [], "run only these experiments")
  flags.DEFINE_bool("smoke", False, "tiny settings (for tests)")
  app.run(main)
