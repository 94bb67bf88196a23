"""Smoke runs: every experiment's SMOKE setting runs end to end and writes its results; the report
runs them all; the baseline CLI on 4 forced devices records them."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from experiments import common, report
from fastnets import evidence
from tests.conftest import REPO

REQUIRED_KEYS = {"experiment", "config", "metrics", "paper", "wall_time_s", "devices",
                 "jax_version"}


@pytest.mark.parametrize("name", report.EXPERIMENTS)
def test_experiment_smoke(name, tmp_path):
  module = importlib.import_module(f"experiments.{name}")
  config = common.merge_config(module.DEFAULTS, module.SMOKE, {"workdir": str(tmp_path)})
  results = module.run(config)
  with open(tmp_path / "results.json") as f:
    on_disk = json.load(f)
  assert REQUIRED_KEYS <= set(on_disk)
  as_json = lambda x: json.dumps(x, sort_keys=True, default=str)  # NaN-safe, tuples as lists.
  assert on_disk["experiment"] == name
  assert as_json(results["metrics"]) == as_json(on_disk["metrics"])
  rows = module.report_rows(results)
  assert rows
  for row in rows:  # Every row says its scale, setting and verdict (or is a measurement).
    evidence.check_row(row)
  for path in (results.get("plots") or {}).values():
    assert os.path.getsize(path) > 1000


def test_report_smoke_writes_markdown(tmp_path):
  out = report.run_all(str(tmp_path), only=["baseline", "bench_rounding"], smoke=True)
  text = open(out["report"]).read()
  assert "| technique | claim | scale | setting | paper | ours | verdict |" in text
  assert "## Summary" in text and "Baseline CNN" in text and not out["failed"]
  assert sum(out["counts"].values()) == len(out["rows"]) and all(
      r["scale"] == "smoke" for r in out["rows"])
  doc = report.write_results_doc(out["report"], str(tmp_path / "docs" / "RESULTS.md"), "cmd")
  assert "_Written by `cmd`" in open(doc).read()


def test_report_rejects_unknown_experiment(tmp_path):
  with pytest.raises(ValueError, match="unknown experiments"):
    report.run_all(str(tmp_path), only=["nope"])


def test_baseline_cli_on_four_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.baseline", "--smoke",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["devices"]["count"] == 4 and results["devices_used"] == 4
  assert {"val_accuracy", "train_loss"} <= set(results["metrics"])
  assert (tmp_path / "curves.png").exists() and (tmp_path / "tb").is_dir()
