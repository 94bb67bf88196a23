"""tools/gpu_check.sh: the CPU dry run end to end, and the refusal to run without a GPU.

The dry run runs every step of the GPU check (kernel tests, fwht and Escort benchmarks with the
Pallas kernels in the interpreter, reversible memory, a training run, the summary) at tiny sizes,
with tensorboardX and tensorflow-datasets made unimportable as on the GPU machine, so that the
script cannot rot between GPU runs.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

from experiments import baseline, bench_fastfood, bench_reversible, bench_sparse_conv, common
from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")
HIDDEN = ("tensorboardX", "tensorflow_datasets")


def _env(tmp_path, **extra):
  stubs = tmp_path / "hidden_packages"
  for name in HIDDEN:
    (stubs / name).mkdir(parents=True, exist_ok=True)
    (stubs / name / "__init__.py").write_text(
        f"raise ImportError('{name} is hidden by tests/test_gpu_check.py')\n")
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", OUT=str(tmp_path / "out"),
             **extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stubs), env.get("PYTHONPATH")) if p)
  return env


def test_refuses_without_a_gpu_before_installing_anything(tmp_path):
  proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO,
                        env=_env(tmp_path))
  assert proc.returncode == 3, proc.stdout + proc.stderr
  assert "no GPU" in proc.stderr and "--dry-run" in proc.stderr
  assert not (tmp_path / "out").exists()  # nothing installed, nothing written
  bad = subprocess.run(["bash", SCRIPT, "--gpu"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env=_env(tmp_path))
  assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_dry_run_end_to_end(tmp_path):
  proc = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True,
                        timeout=900, cwd=REPO, env=_env(tmp_path))
  out = tmp_path / "out"
  log = proc.stdout[-6000:] + proc.stderr[-3000:]
  assert proc.returncode == 0, log
  assert sorted(os.listdir(out)) == ["gpu_check.log", "results.tgz", "summary.json",
                                     "summary.md"], log
  s = json.loads((out / "summary.json").read_text())
  assert s["dry_run"] is True
  status = {r["step"]: r["status"] for r in s["steps"]}
  assert status == {"install": "skipped (dry run)", "tests": "ok", "fwht": "ok", "escort": "ok",
                    "reversible": "ok", "baseline": "ok"}, status
  assert s["tests"]["passed"] >= 3 and s["tests"]["failures"] == s["tests"]["errors"] == 0
  # The missing optional packages are reported, and training went on without them.
  assert set(HIDDEN) <= set(s["missing_packages"])
  (fw,) = s["fwht"]["rows"]
  assert fw["n"] == 256 and fw["pallas_us"] > 0 and fw["copy_us"] > 0
  assert fw["pallas_max_rel_err"] < 1e-4 and fw["pallas_copy_fraction"] > 0
  rows = s["escort"]["rows"]
  assert [r["layer"] for r in rows] == ["conv2_x_3x3", "conv2"] and not s["escort"]["errors"]
  for r in rows:  # the interpreted Pallas kernel ran, was autotuned, and matches dense
    assert r["pallas_ms"] and r["pallas_error"] is None and r["pallas_config"]
    assert r["max_rel_err"] < 1e-4 and r["bcoo_ms"] and r["bcoo_lowering"] == "xla"
  assert s["reversible"]["depths"] == [2, 4] and s["baseline"]["val_accuracy"] is not None
  md = (out / "summary.md").read_text()
  assert "DRY RUN" in md and "tensorboardX" in md and "3.07x" in md and "2.63x" in md
  assert "(dry run)" in md and "| escort | ok |" in md
  with tarfile.open(out / "results.tgz") as tar:
    names = set(tar.getnames())
  for path in ("fwht/results.json", "escort/conv2/results.json",
               "escort/conv2_x_3x3/results.json", "reversible/results.json",
               "baseline/results.json", "tests/junit.xml", "env.json", "logs/escort.log"):
    assert f"results/{path}" in names, sorted(names)
  assert not any("checkpoints" in n for n in names)


def test_summary_of_a_run_cut_short(tmp_path):
  # Steps that timed out or failed leave no results.json and no junit.xml: the summary still
  # renders, counts the tests from pytest's -v lines, and judges nothing it did not measure.
  out = tmp_path / "results"
  (out / "logs").mkdir(parents=True)
  (out / "escort" / "conv2_x_3x3").mkdir(parents=True)
  (out / "escort" / "conv2_x_3x3" / "error.txt").write_text("Traceback\nRuntimeError: boom\n")
  (out / "steps.tsv").write_text("step\trc\tseconds\tlimit\ninstall\t0\t5\t60\n"
                                 "tests\t124\t75\t75\nfwht\t1\t3\t60\nescort\tskipped\t0\t150\n")
  (out / "logs" / "tests.log").write_text(
      "tests/test_hadamard.py::test_a PASSED [ 1%]\n"
      "[gw1] [ 66%] FAILED tests/test_sparse_conv.py::test_b \n"
      "[gw0] [100%] PASSED tests/test_autotune.py::test_c \n")
  (out / "env.json").write_text(json.dumps({"devices": ["gpu:NVIDIA H100"], "packages": {
      "tensorboardX": "missing (ImportError)", "xdist": "ok"}}))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "summary", "--out",
       str(out), "--md", str(tmp_path / "s.md"), "--json", str(tmp_path / "s.json")],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  s = json.loads((tmp_path / "s.json").read_text())
  assert s["tests"]["incomplete"] and (s["tests"]["passed"], s["tests"]["failures"]) == (2, 1)
  assert [r["status"] for r in s["steps"]] == ["ok", "timed out", "failed (exit 1)",
                                               "skipped (time budget spent)"]
  assert s["escort"]["errors"]["conv2_x_3x3"] == "RuntimeError: boom"
  assert {t["verdict"] for t in s["escort"]["targets"] + s["fwht"].get("targets", [])} <= {
      "not measured"}
  md = (tmp_path / "s.md").read_text()
  assert "DRY RUN" not in md and "cut off" in md and "| missed |" in md
  assert "test_sparse_conv.py::test_b" in md and "tensorboardX" in md


def test_gpu_settings_are_valid_configs(tmp_path):
  # The GPU-only settings never run in CI: at least their keys and values must be what the
  # experiments accept (a typo would otherwise first show on the scarce GPU machine).
  spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "tools",
                                                                          "gpu_check.py"))
  gc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gc)
  for dry in (False, True):
    fw = common.merge_config(bench_fastfood.DEFAULTS, gc.fwht_config(dry, str(tmp_path)))
    assert dry or [2**k for k in fw["fwht_log2"]] == [1024, 4096, 16384] and fw["batch"] == 4096
    for layer in gc.escort_layers(dry):
      cfg = common.merge_config(bench_sparse_conv.DEFAULTS,
                                gc.escort_config(dry, str(tmp_path), layer, end_to_end=True))
      assert cfg["layers"] == [layer] and any(
          layer == row[0] for net in cfg["networks"] for row in bench_sparse_conv.LAYERS[net])
      assert cfg["precision"] == "highest" and cfg["bcoo_cusparse"]
      assert cfg["pallas"] == ("interpret" if dry else "auto")
    common.merge_config(bench_reversible.DEFAULTS, gc.reversible_config(dry, str(tmp_path)))
    common.merge_config(baseline.DEFAULTS, gc.baseline_config(dry, str(tmp_path)))
  assert set(gc.escort_layers(False)) == {"conv2", "inception3a_3x3", "conv2_x_3x3",
                                          "conv4_x_3x3"}
