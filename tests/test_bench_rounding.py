"""Smoke test of experiments/bench_rounding.py: the core timing function on a tiny input."""

import json

import pytest

from experiments import bench_rounding


def test_bench_core_on_tiny_input():
  out = bench_rounding.bench(2048, formats=("bfloat16", "fixed_2_14"), warmup=1, repeats=2,
                             use_qtorch=False)
  methods = {(r["format"], r["method"]) for r in out["rows"]}
  assert {("bfloat16", m) for m in ("cast", "cast_only", "nearest", "stochastic_hash",
                                    "stochastic_jax")} <= methods
  assert ("fixed_2_14", "cast") not in methods  # no native dtype for fixed point
  for row in out["rows"]:
    assert row["median_s"] > 0 and row["elements_per_sec"] > 0 and len(row["times_s"]) == 2
    assert row["ratio_to_nearest"] == pytest.approx(row["median_s"] / next(
        r["median_s"] for r in out["rows"]
        if r["format"] == row["format"] and r["method"] == "nearest"))
  checks = out["checks"]
  assert checks["bfloat16"]["nearest_equals_cast"]
  for fmt in ("bfloat16", "fixed_2_14"):
    for rng in ("hash", "jax"):
      assert checks[fmt][f"stochastic_{rng}_representable"]
      assert checks[fmt][f"stochastic_{rng}_bias_in_se"] < 6.0
  assert out["qtorch"] == {"available": False, "info": "not requested"}
  summary = bench_rounding.summarize(out)
  assert set(summary["per_format"]) == {"bfloat16", "fixed_2_14"}
  # The verdict follows from the worst format's ratio and the paper's bound, whatever the timing.
  worst = max(s["stochastic_hash_over_nearest"] for s in summary["per_format"].values())
  assert summary["worst_hash_sr_over_nearest"] == worst
  assert summary["per_format"][summary["worst_format"]]["stochastic_hash_over_nearest"] == worst
  assert summary["target_met"] is (worst <= bench_rounding.PAPER["value"])
  slow = lambda r: (dict(r, ratio_to_nearest=r["ratio_to_nearest"] * 1e3)
                    if r["method"] == "stochastic_hash" else r)
  flipped = dict(out, rows=[slow(r) for r in out["rows"]])
  assert bench_rounding.summarize(flipped)["target_met"] is False


def test_bench_run_writes_results(tmp_path):
  config = {**bench_rounding.SMOKE, "workdir": str(tmp_path), "formats": ["fp8_e5m2"]}
  results = bench_rounding.run(config)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["experiment"] == "bench_rounding"
  assert on_disk["metrics"]["checks"]["fp8_e5m2"]["nearest_equals_cast"]
  assert (tmp_path / "rates.png").stat().st_size > 1000
  rows = bench_rounding.report_rows(results)
  # Two smoke rounds are too few for a timing verdict: the row must say so, not guess.
  assert rows[0]["verdict"] == "inconclusive (2 rounds)" and rows[0]["scale"] == "paper"


def test_bench_bad_input():
  with pytest.raises(ValueError, match="formats: unknown"):
    bench_rounding.bench(16, formats=("float7",), use_qtorch=False)
  with pytest.raises(ValueError, match="size and repeats"):
    bench_rounding.bench(0, use_qtorch=False)
