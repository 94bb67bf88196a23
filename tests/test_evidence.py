"""The evidence protocol: seed statistics, verdicts, report rows, timing ratios, tuning that cannot
see the test split, and the three data splits."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from fastnets import benchmarking, data, evidence, train

# --- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 29, 30, 31, 60, 200])
def test_t_quantile_matches_scipy(dof):
  assert evidence.t_quantile_975(dof) == pytest.approx(sps.t.ppf(0.975, dof), abs=2e-4)


def test_t_quantile_bad_input():
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="dof"):
      evidence.t_quantile_975(bad)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12))
@example([10.0, 14.0, 20.0, 40.0])  # An interval whose end lies near zero.
def test_summary_interval_matches_scipy(values):
  s = evidence.summarize(values)
  arr = np.asarray(values)
  assert s["n"] == len(values) and s["mean"] == pytest.approx(arr.mean(), abs=1e-9)
  se = arr.std(ddof=1) / math.sqrt(len(values))
  assert s["se"] == pytest.approx(se, abs=1e-9)
  lo, hi = s["ci95"]
  assert lo <= s["mean"] <= hi
  if se > 0:
    # The t table has 4 decimals: compare the half-widths (relative), not the end points (an end
    # point near zero has no useful relative precision).
    ref = sps.t.interval(0.95, len(values) - 1, loc=arr.mean(), scale=se)
    assert (hi - lo) / 2 == pytest.approx((ref[1] - ref[0]) / 2, rel=1e-4)
    assert (lo + hi) / 2 == pytest.approx(arr.mean(), rel=1e-9, abs=1e-9)


def test_summary_of_one_and_none():
  assert evidence.summarize([0.5]) == {"n": 1, "mean": 0.5, "se": None, "ci95": None,
                                       "values": [0.5]}
  assert evidence.summarize([])["mean"] is None


def test_summary_rejects_nan():
  with pytest.raises(ValueError, match="finite"):
    evidence.summarize([0.1, float("nan"), 0.2])


def test_paired_difference_removes_the_shared_seed_effect():
  a = [0.90, 0.95, 0.99]
  b = [0.89, 0.94, 0.98]
  d = evidence.paired_difference(a, b)
  assert d["mean"] == pytest.approx(0.01) and d["se"] == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match="same seeds"):
    evidence.paired_difference([1, 2, 3], [1, 2])


# --- verdicts ---------------------------------------------------------------------------------


def test_verdict_reproduced_not_reproduced_inconclusive():
  above = evidence.summarize([0.981, 0.983, 0.982, 0.984, 0.980])
  below = evidence.summarize([0.961, 0.963, 0.962, 0.960, 0.964])
  straddle = evidence.summarize([0.95, 0.99, 0.975, 0.96, 0.99])
  assert evidence.verdict(above, 0.975) == "reproduced"
  assert evidence.verdict(below, 0.975) == "not reproduced"
  assert evidence.verdict(straddle, 0.975) == "inconclusive"
  # "less" flips the side of the claim.
  assert evidence.verdict(below, 0.975, "less") == "reproduced"
  assert evidence.verdict(above, 0.975, "less") == "not reproduced"
  assert evidence.verdict(above, 0.975, scale="proxy") == "reproduced on a proxy"


def test_no_verdict_from_fewer_than_three_seeds():
  assert evidence.verdict(evidence.summarize([0.99]), 0.5) == "inconclusive (1 seed)"
  assert evidence.verdict(evidence.summarize([0.99, 0.991]), 0.5) == "inconclusive (2 seeds)"
  three = evidence.summarize([0.99, 0.991, 0.992])
  assert evidence.verdict(three, 0.5) == "reproduced"
  assert evidence.verdict(three, 0.5, min_seeds=5) == "inconclusive (3 seeds)"


def test_verdict_bad_input():
  s = evidence.summarize([1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="direction"):
    evidence.verdict(s, 0.0, "above")
  with pytest.raises(ValueError, match="scale"):
    evidence.verdict(s, 0.0, scale="full")
  with pytest.raises(ValueError, match="reason"):
    evidence.not_testable("")


# --- report rows ------------------------------------------------------------------------------


def _row(**kw):
  base = dict(technique="t", claim="c", paper="p", ours="o", scale="proxy", setting="s",
              verdict="reproduced on a proxy")
  base.update(kw)
  return base


def test_rows_without_scale_or_verdict_are_rejected():
  for key in ("scale", "verdict", "setting"):
    bad = _row()
    del bad[key]
    with pytest.raises(ValueError, match=key):
      evidence.check_row(bad)
  with pytest.raises(ValueError, match="scale"):
    evidence.check_row(_row(scale="full"))
  with pytest.raises(ValueError, match="verdict"):
    evidence.check_row(_row(verdict="yes"))
  evidence.check_row(_row(verdict="not testable here (needs a GPU)"))
  assert evidence.row("t", "c", "p", "o", scale="paper", setting="s",
                      verdict=None)["verdict"] == "measurement"


def test_summary_counts_equal_the_rows():
  rows = [_row(scale="paper", verdict="reproduced"), _row(), _row(verdict="not reproduced"),
          _row(verdict="inconclusive (2 seeds)"), _row(verdict="inconclusive"),
          _row(verdict="not testable here (needs a GPU)"), _row(verdict="measurement"),
          _row(scale="proxy", verdict="reproduced")]
  counts = evidence.summary_counts(rows)
  assert sum(counts.values()) == len(rows)
  assert counts == {"reproduced at paper scale": 1, "reproduced on a proxy": 2,
                    "not reproduced": 1, "inconclusive": 2, "not testable here": 1,
                    "measurements": 1}


def test_report_rejects_a_row_without_verdict():
  from experiments import report
  with pytest.raises(ValueError, match="verdict"):
    report.checked_rows("x", [{"technique": "t", "claim": "c", "paper": "p", "ours": "o",
                               "scale": "proxy", "setting": "s", "reproduced": True}], False)
  rows = report.checked_rows("x", [_row(scale="paper", verdict="reproduced")], smoke=True)
  assert rows[0]["scale"] == "smoke" and rows[0]["verdict"] == "reproduced on a proxy"
  text = report.render(rows, [], ["# r"])
  assert "reproduced on a proxy: 1" in text and "| technique | claim | scale |" in text


def test_progress_line_estimates_what_is_left():
  import time

  from experiments import report
  expected = report.EXPECTED_S
  # pacgan and ffnet side by side (2 jobs); baseline, alone, took twice its expected time.
  pace = report.Pace(time.time() - 2 * expected["baseline"], 4, 0, ["pacgan", "ffnet"],
                     ["baseline", "bench_rounding"], jobs=2)
  pace.finished("baseline")
  line = pace.line("pacgan", "starts")
  left = 2 * ((expected["pacgan"] + expected["ffnet"]) / 2 + expected["bench_rounding"])
  assert line.startswith("[2/4] pacgan starts ... ") and line.endswith(" min left"), line
  # Rounded to whole minutes; the elapsed time grows a little while the test runs.
  minutes = int(line.rsplit("about ", 1)[1].split()[0])
  assert abs(minutes - left / 60) <= 0.5 + 0.05, line


# --- timing ratios ----------------------------------------------------------------------------


def test_ratio_summary_and_verdict():
  fast = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]
  slow = [3.0 * t for t in fast]
  r = benchmarking.ratio_summary(slow, fast)
  assert r["median"] == pytest.approx(3.0) and r["ci95"][0] == pytest.approx(3.0)
  assert benchmarking.judge_ratio(r, 2.0) == "reproduced"
  assert benchmarking.judge_ratio(r, 4.0) == "not reproduced"
  assert benchmarking.judge_ratio(r, 2.0, "less") == "not reproduced"
  few = benchmarking.ratio_summary(slow[:3], fast[:3])
  assert benchmarking.judge_ratio(few, 2.0) == "inconclusive (3 rounds)"
  with pytest.raises(ValueError, match="same rounds"):
    benchmarking.ratio_summary([1.0, 2.0], [1.0])


def test_time_interleaved_runs_each_callable_per_round():
  calls = []
  out = benchmarking.time_interleaved({"a": lambda: calls.append("a") or np.float32(1),
                                       "b": lambda: calls.append("b") or np.float32(2)},
                                      warmup=1, repeats=3)
  assert calls[4:] == ["a", "b"] * 3  # 2 untimed calls each, then interleaved rounds.
  assert len(out["times"]["a"]) == 3 and out["outputs"]["b"] == 2
  with pytest.raises(ValueError, match="repeats"):
    benchmarking.time_interleaved({"a": lambda: 1}, repeats=0)


# --- splits and tuning ------------------------------------------------------------------------


def test_bundled_split_sizes_and_stability():
  parts = data.bundled_split_indices()
  assert [len(parts[s]) for s in ("train", "validation", "test")] == [7000, 1000, 2000]
  union = np.concatenate([parts[s] for s in parts])
  assert np.array_equal(np.sort(union), np.arange(10000))
  # The test digits never change: pinned by their first indices and a checksum of all of them.
  assert parts["test"][:5].tolist() == _PINNED_TEST_HEAD
  assert int(np.sort(parts["test"]).astype(np.int64) @ np.arange(2000)) == _PINNED_TEST_DOT


_PINNED_TEST_HEAD = [9404, 3810, 1048, 8368, 1749]
_PINNED_TEST_DOT = 13193205327


def test_dataset_splits_and_bad_split_name():
  ds = data.load_dataset("mnist_bundled")
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (7000, 1000, 2000)
  assert ds.split("val") is ds.validation
  with pytest.raises(data.DatasetError, match=r"splits: \['train', 'validation', 'test'\]"):
    ds.split("tset")


def test_tuning_cannot_read_the_test_split():
  ds = data.load_dataset("mnist_bundled")
  seen = []

  def peek(values, view, seed):
    seen.append(seed)
    assert not view.has_test
    with pytest.raises(data.HiddenSplitError):
      view.split("test")
    with pytest.raises(data.HiddenSplitError):
      len(view.test)
    return float(len(view.validation)) + values["lr"]

  record = train.grid_search(peek, {"lr": [0.1, 0.3]}, ds, verbose=False)
  assert record["chosen"] == {"lr": 0.3} and record["budget"] == 2 * len(evidence.TUNING_SEEDS)
  assert set(seen) == set(evidence.TUNING_SEEDS)
  assert not set(seen) & set(evidence.EVAL_SEEDS)
  assert ds.has_test  # The caller's dataset is untouched.


def test_tuning_records_divergence_and_rejects_eval_seeds():
  record = train.grid_search(lambda v, d, s: float("nan") if v["lr"] > 1 else v["lr"],
                             {"lr": [0.5, 10.0]}, None, verbose=False)
  assert record["chosen"] == {"lr": 0.5}
  assert record["points"][1]["mean"] == -math.inf
  with pytest.raises(ValueError, match="evaluation seeds"):
    train.grid_search(lambda v, d, s: 0.0, {"lr": [1.0]}, None, seeds=[0, 1000])
  with pytest.raises(ValueError, match="non-empty list"):
    train.grid_search(lambda v, d, s: 0.0, {"lr": []}, None)


def test_tune_arms_gives_every_arm_the_same_budget():
  arms = {"dense": lambda v, d, s: v["lr"], "fastfood": lambda v, d, s: -v["lr"]}
  records = train.tune_arms(arms, {"lr": [1.0, 2.0]}, None, verbose=False)
  assert records["dense"]["budget"] == records["fastfood"]["budget"]
  assert records["dense"]["chosen"] == {"lr": 2.0} and records["fastfood"]["chosen"] == {"lr": 1.0}


def test_idx_directory_test_files_and_too_small(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 50), ("t10k", 20)):
    data.write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte"),
                   rng.integers(0, 255, (n, 4, 4), dtype=np.uint8))
    data.write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"),
                   rng.integers(0, 10, (n,), dtype=np.uint8))
  ds = data.load_dataset(f"idx:{tmp_path}")
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (45, 5, 20)
  with pytest.raises(data.DatasetError, match="too few"):
    data.carve_validation(1, 0.1, 0, "tiny")


def test_report_reuses_only_results_of_the_same_config(tmp_path):
  import json as _json

  from experiments import report
  path = tmp_path / "results.json"
  assert report.reusable_results(str(path), {"a": 1}) is None
  path.write_text(_json.dumps({"config": {"a": 1, "b": [1, 2], "extra": True}, "metrics": {}}))
  assert report.reusable_results(str(path), {"a": 1, "b": (1, 2)}) is not None
  assert report.reusable_results(str(path), {"a": 2, "b": [1, 2]}) is None
  assert report.reusable_results(str(path), {"a": 1, "c": 0}) is None
