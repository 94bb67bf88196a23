"""Smoke runs: every experiment's SMOKE setting runs end to end and writes its results; the report
runs them all; the baseline CLI on 4 forced devices records them."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from experiments import common, report
from fastnets import evidence, train
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
  # baseline and low_precision run side by side in two worker processes, bench_rounding alone.
  out = report.run_all(str(tmp_path), only=["baseline", "low_precision", "bench_rounding"],
                       smoke=True, jobs=2)
  text = open(out["report"]).read()
  assert "| technique | claim | scale | setting | paper | ours | verdict |" in text
  assert "## Summary" in text and "Baseline CNN" in text and not out["failed"]
  sections = [text.index(f"### {n}") for n in ("baseline", "low_precision", "bench_rounding")]
  assert sections == sorted(sections) and text.count("2 at a time") == 2
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


@pytest.mark.parametrize("name", report.EXPERIMENTS)
def test_workdir_of_another_configuration_is_refused(name, tmp_path, monkeypatch):
  """Results are never replaced by a run of another configuration, checkpointing or not."""
  module = importlib.import_module(f"experiments.{name}")
  config = common.merge_config(module.DEFAULTS, module.SMOKE, {"workdir": str(tmp_path)})
  common.claim_workdir(str(tmp_path), name, config)
  (tmp_path / "results.json").write_text("{}")  # The first run's output.
  key = next(k for k in config if k not in common.NON_IDENTITY_KEYS)
  changed = {**config, key: "changed"}
  ran = []
  monkeypatch.setattr(module, "run", lambda c: ran.append(c))
  with pytest.raises(train.WorkdirMismatchError, match=f"{key}: .*--overwrite"):
    common.run_experiment(module, changed)
  assert not ran and (tmp_path / "results.json").read_text() == "{}"
  common.run_experiment(module, config)  # The same configuration again is allowed ...
  common.run_experiment(module, changed, overwrite=True)  # ... and so is an explicit overwrite.
  assert len(ran) == 2


def test_report_refuses_before_running_anything(tmp_path):
  common.claim_workdir(str(tmp_path / "baseline"), "baseline", {"steps": 1})
  (tmp_path / "baseline" / "results.json").write_text("{}")
  with pytest.raises(train.WorkdirMismatchError, match="baseline: .*steps"):
    report.run_all(str(tmp_path), only=["bench_rounding", "baseline"], smoke=True)
  assert not (tmp_path / "bench_rounding" / "results.json").exists()


def test_cli_user_errors_are_one_line_with_exit_status_2(tmp_path):
  def cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.baseline", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))

  bad_flag = cli("--optimizer=adm", f"--workdir={tmp_path}")
  assert bad_flag.returncode == 2 and 'did you mean "adam"' in bad_flag.stderr
  bad_value = cli("--model=resnt", "--smoke", f"--workdir={tmp_path}")
  assert bad_value.returncode == 2, bad_value.stderr[-2000:]
  assert "Traceback" not in bad_value.stderr and 'Did you mean "resnet"' in bad_value.stderr
  helptext = cli("--help").stdout
  assert "--learning_rate: peak learning rate" in helptext and "<sgd|momentum|" in helptext


@pytest.mark.parametrize("name", report.EXPERIMENTS)
def test_every_flag_has_help(name):
  """`--help` documents every config key: TrainConfig's docs, or a DEFAULTS literal comment."""
  module = importlib.import_module(f"experiments.{name}")
  documented = {**common.config_comments(module), **getattr(module, "HELP", {})}
  missing = [k for k in module.DEFAULTS if k not in common.TRAIN_DEFAULTS and k not in documented]
  assert not missing, f"{name}: DEFAULTS keys without a help comment: {missing}"


def test_compilation_cache_lets_every_seed_reuse_the_first_seeds_programs(mnist, tiny_cnn):
  """`fit` passes its keys as arguments, so seed 1 runs seed 0's programs: inside
  `common.compilation_cache` its train and eval programs come from the cache (initialisation
  runs op by op, its small programs already compiled in this process)."""
  import dataclasses

  import jax
  from jax import monitoring

  events = []
  monitoring.register_event_listener(lambda name, **kw: events.append(name))
  config = train.TrainConfig(steps=2, batch_size=16, eval_batch_size=1000, learning_rate=1e-3,
                             log_every=1, eval_every=0, checkpoint_every=0)
  session_cache = jax.config.jax_compilation_cache_dir  # The test run's own (conftest.py).
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    with common.compilation_cache(min_compile_time_s=0):
      train.fit(tiny_cnn, mnist, config, verbose=False)
      events.clear()
      train.fit(tiny_cnn, mnist, dataclasses.replace(config, seed=1), verbose=False)
  finally:
    jax.config.update("jax_compilation_cache_dir", session_cache)
  hits = events.count("/jax/compilation_cache/cache_hits")
  misses = events.count("/jax/compilation_cache/cache_misses")
  assert hits >= 2 and misses == 0, (hits, misses)


@pytest.mark.parametrize("name", sorted(report.CONCURRENT_SAFE))
def test_concurrent_experiments_time_nothing(name):
  """The report runs these beside another job: none may hold a timing measurement."""
  source = open(os.path.join(REPO, "experiments", f"{name}.py")).read()
  for marker in ("benchmarking", "perf_counter", "time_interleaved", "StepTimer", "step_time",
                 "speedup"):
    assert marker not in source, f"{name} times something ({marker!r}): remove it from " \
                                 "report.CONCURRENT_SAFE"


TUNED = sorted(os.path.splitext(f)[0] for f in os.listdir(common.TUNING_DIR)
               if f.endswith(".json")) if os.path.isdir(common.TUNING_DIR) else []


@pytest.mark.parametrize("name", TUNED)
def test_tuning_records_match_quick_settings(name):
  """A committed sweep is the quick setting's: same setting, grid and arms; otherwise rerun
  `python -m experiments.<name> --tune` (the quick run then says `tuning_stale`)."""
  module = importlib.import_module(f"experiments.{name}")
  with open(common.tuning_path(name)) as f:
    record = json.load(f)
  quick = common.merge_config(module.DEFAULTS, module.QUICK)
  assert quick["tuning_record"], f"{name}: QUICK does not read its tuning record"
  stale = common.stale_keys(record, common.tuning_setting(module, quick))
  assert not stale, f"{name}: record swept with other {stale}; rerun with --tune"
  assert record["grid"] == json.loads(json.dumps(module.TUNING_GRID))
  assert not set(record["seeds"]) & set(evidence.EVAL_SEEDS)
  assert record["chosen"] and all(set(v) == set(module.TUNING_GRID)
                                  for v in record["chosen"].values())
  assert set(record["chosen"]) == set(record["arms"])


def test_tune_path_hides_test_and_quick_run_reads_the_record(tmp_path, monkeypatch):
  """The one smoke of the tune path: `--tune`'s driver on deep_fried's SMOKE setting (a one-point
  grid) sees no test split; the run that reads the record embeds it, a changed setting is
  `tuning_stale`, a missing record says "not re-derived"."""
  from experiments import deep_fried
  from fastnets import data

  monkeypatch.setattr(common, "TUNING_DIR", str(tmp_path / "tuning"))
  arms_fn = deep_fried.tuning_arms

  def checked_arms(config):  # Every score function must get the test-less view.
    fns, dataset = arms_fn(config)

    def check(fn):
      def score(values, view, seed):
        with pytest.raises(data.HiddenSplitError):
          view.split("test")
        return fn(values, view, seed)
      return score
    return {arm: check(fn) for arm, fn in fns.items()}, dataset

  monkeypatch.setattr(deep_fried, "tuning_arms", checked_arms)
  config = common.merge_config(deep_fried.DEFAULTS, deep_fried.SMOKE,
                               {"variants": ["dense"], "workdir": str(tmp_path / "run")})
  record = common.tune_experiment(deep_fried, config, grid={"learning_rate": [3e-3]},
                                  verbose=False)
  assert record["chosen"] == {"dense": {"learning_rate": 3e-3}}
  assert record["seeds"] == [evidence.TUNING_SEEDS[0]] and "learning_rate" not in record["setting"]
  assert json.load(open(common.tuning_path("deep_fried")))["setting"] == record["setting"]
  results = deep_fried.run({**config, "tuning_record": True})
  assert results["tuning"]["chosen"] == record["chosen"] and not results["tuning_stale"]
  assert results["metrics"]["dense"]["learning_rate"] == 3e-3
  assert common.tuning_text(results).endswith("): 0.003; experiments/tuning/deep_fried.json")
  # Untrained keys (seeds, workdir) never make a record stale; a training key does.
  _, extra = common.apply_tuning(deep_fried, {**config, "tuning_record": True, "seeds": [1, 2],
                                              "workdir": "elsewhere", "steps": 3})
  assert extra["tuning_stale"] and extra["tuning_stale_keys"] == ["steps"]
  os.remove(common.tuning_path("deep_fried"))
  chosen, extra = common.apply_tuning(deep_fried, {**config, "tuning_record": True})
  assert chosen == {} and extra["tuning"].startswith("not re-derived")


@pytest.mark.parametrize("name, arms, words", [
    ("pkt", ["kd"], "must include 'student'"),
    ("pkt", ["student", "fitnets"], "must include 'student'"),
    ("anl", ["anl"], "must include 'baseline'"),
    ("vcl", ["resnet_9000"], "models must name only some of"),
])
def test_arms_option_names_the_required_arm(name, arms, words, tmp_path):
  module = importlib.import_module(f"experiments.{name}")
  key = "models" if name == "vcl" else "arms"
  config = common.merge_config(module.DEFAULTS, module.SMOKE,
                               {"workdir": str(tmp_path), key: arms})
  with pytest.raises(ValueError, match=words):
    module.run(config)


def test_selected_keeps_the_known_order_and_names_the_option():
  assert common.selected(["c", "a"], ("a", "b", "c"), "arms", required="a") == ["a", "c"]
  with pytest.raises(ValueError, match="models must name only some of"):
    common.selected([], ("a", "b"), "models")


def test_setting_changes_reach_results_json(tmp_path):
  """A quick setting changed after its test numbers were seen says so in every results.json of
  that experiment; the record names only experiments of the report."""
  assert set(common.SETTING_CHANGES) <= set(report.EXPERIMENTS)
  name = sorted(common.SETTING_CHANGES)[0]
  record = common.write_results(str(tmp_path), name, {}, {}, {}, 0.0)
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["setting_changes"] == common.SETTING_CHANGES[name] == \
        record["setting_changes"]
  unchanged = next(n for n in report.EXPERIMENTS if n not in common.SETTING_CHANGES)
  assert "setting_changes" not in common.write_results(None, unchanged, {}, {}, {}, 0.0)


def test_side_by_side_jobs_start_longest_first():
  """Every experiment has an expected duration (the order and the progress estimate use it)."""
  assert set(report.EXPECTED_S) == set(report.EXPERIMENTS)
  order = report.longest_first(sorted(report.CONCURRENT_SAFE))
  assert sorted(order) == sorted(report.CONCURRENT_SAFE)
  assert [report.EXPECTED_S[n] for n in order] == sorted(
      (report.EXPECTED_S[n] for n in order), reverse=True)
  assert report.longest_first(["unknown_a", "revnet", "unknown_b"]) == [
      "revnet", "unknown_a", "unknown_b"]
