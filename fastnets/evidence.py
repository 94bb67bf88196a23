"""Evidence a reader can check: seed statistics, confidence intervals, verdicts and report rows.

Every claim the report judges goes through this module, so that "reproduced" means the same thing
everywhere:

- `summarize(values)`: mean, standard error and a two-sided 95% Student-t interval over seeds.
- `paired_difference(a, b)`: the same for the per-seed differences a_i - b_i (seed i of both arms
  shares its data order and initialisation key, so pairing removes that variance).
- `verdict(summary, threshold, direction)`: `reproduced` when the whole interval lies on the
  claim's side of the threshold, `not reproduced` when it lies wholly on the other side,
  `inconclusive` otherwise, and `inconclusive (n seeds)` below `MIN_SEEDS` (no verdict from one
  seed).
- `row(...)`: one report row with its `scale` (`paper`, `proxy`, `smoke`), a one-line `setting`
  and a `verdict` from `VERDICTS`, or `measurement` for facts that cannot come out false
  (parameter counts, FLOP ratios computed from shapes).

Evaluation seeds (`EVAL_SEEDS`) and tuning seeds (`TUNING_SEEDS`) are disjoint by construction.
This module is a leaf: numpy only, no fastnets imports.
"""

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

SCALES = ("paper", "proxy", "smoke")
REPRODUCED = "reproduced"
REPRODUCED_PROXY = "reproduced on a proxy"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable here"
MEASUREMENT = "measurement"
VERDICTS = (REPRODUCED, REPRODUCED_PROXY, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
ROW_KEYS = ("technique", "claim", "paper", "ours", "scale", "setting", "verdict")

MIN_SEEDS = 3  # No verdict from fewer evaluation seeds.
# Where the claimed difference, or the margin of a "no worse than" claim, is under one point
# (e.g. "within 0.5 points of the dense net"): such intervals need more seeds to decide.
MIN_SEEDS_SMALL_EFFECT = 5
EVAL_SEEDS = (0, 1, 2, 3, 4)
TUNING_SEEDS = (1000, 1001, 1002)  # Disjoint from EVAL_SEEDS: tuning never sees an eval seed.

# Two-sided 95% quantiles of Student's t (0.975 quantile) for 1..30 degrees of freedom.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile_975(dof: int) -> float:
  """The 0.975 quantile of Student's t with `dof` degrees of freedom (a 95% interval's factor).

  Exact table to 4 decimals up to 30 degrees of freedom, the Cornish-Fisher expansion beyond
  (error below 1e-4 there).
  """
  if not isinstance(dof, (int, np.integer)) or isinstance(dof, bool) or dof < 1:
    raise ValueError(f"dof must be a positive integer, got {dof!r}.")
  if dof <= len(_T975):
    return _T975[dof - 1]
  z = 1.959963984540054
  g1 = (z**3 + z) / 4
  g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
  g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
  return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def _as_values(values: Iterable[float], name: str) -> np.ndarray:
  array = np.asarray(list(values), dtype=np.float64).reshape(-1)
  if array.size and not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite, got {array.tolist()} (count runs that failed "
                     "separately instead of passing NaN).")
  return array


def summarize(values: Iterable[float]) -> dict:
  """Mean, standard error and 95% Student-t interval of per-seed values.

  Returns {"n", "mean", "se", "ci95": [lo, hi], "values"}; with one value the standard error and
  the interval are None (one seed says nothing about the spread), with none the mean is None too.
  """
  array = _as_values(values, "values")
  n = int(array.size)
  if n == 0:
    return {"n": 0, "mean": None, "se": None, "ci95": None, "values": []}
  mean = float(array.mean())
  if n == 1:
    return {"n": 1, "mean": mean, "se": None, "ci95": None, "values": array.tolist()}
  se = float(array.std(ddof=1) / math.sqrt(n))
  half = t_quantile_975(n - 1) * se
  return {"n": n, "mean": mean, "se": se, "ci95": [mean - half, mean + half],
          "values": array.tolist()}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
  """`summarize` of the per-seed differences a_i - b_i; a and b must be the same seeds in order."""
  a, b = _as_values(a, "a"), _as_values(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"paired values need the same seeds: a has {a.size}, b has {b.size}.")
  return summarize(a - b)


def verdict(summary: Mapping[str, Any], threshold: float, direction: str = "greater",
            min_seeds: int = MIN_SEEDS, scale: str = "paper", unit: str = "seed") -> str:
  """Judges "the quantity is above (below) `threshold`" from a `summarize` result.

  Args:
    summary: from `summarize` or `paired_difference`.
    threshold: the claim's boundary, in the summary's units.
    direction: "greater" (the claim is quantity > threshold) or "less".
    min_seeds: fewer values than this give `inconclusive (n seeds)`.
    scale: a `proxy` (or `smoke`) result that reproduces is called `reproduced on a proxy`.
    unit: what the values are samples of, for the inconclusive note ("seed"; "round" for the
      interleaved rounds of a timing).

  Returns: one of `VERDICTS` (inconclusive may carry the seed count).
  """
  if direction not in ("greater", "less"):
    raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}.")
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
  n = summary.get("n", 0)
  if n < min_seeds or summary.get("ci95") is None:
    return f"{INCONCLUSIVE} ({n} {unit}{'s' if n != 1 else ''})"
  lo, hi = summary["ci95"]
  if direction == "less":
    lo, hi, threshold = -hi, -lo, -threshold
  if lo > threshold:
    return REPRODUCED if scale == "paper" else REPRODUCED_PROXY
  if hi < threshold:
    return NOT_REPRODUCED
  return INCONCLUSIVE


def not_testable(reason: str) -> str:
  """The verdict of a claim this machine cannot test, e.g. `not_testable("needs a GPU")`."""
  if not reason:
    raise ValueError("a 'not testable here' verdict needs its reason.")
  return f"{NOT_TESTABLE} ({reason})"


def format_summary(summary: Mapping[str, Any], scale: float = 1.0, digits: int = 2,
                   unit: str = "") -> str:
  """`mean ± se [lo, hi] (n seeds)` with values multiplied by `scale` (100 for percent)."""
  n = summary.get("n", 0)
  if not n or summary.get("mean") is None:
    return "no values"
  mean = summary["mean"] * scale
  if summary.get("se") is None:
    return f"{mean:.{digits}f}{unit} (1 seed)"
  lo, hi = (v * scale for v in summary["ci95"])
  return (f"{mean:.{digits}f} ± {summary['se'] * scale:.{digits}f}{unit} "
          f"[{lo:.{digits}f}, {hi:.{digits}f}] ({n} seeds)")


def is_verdict(value: Any) -> bool:
  """True for a verdict of `VERDICTS` (with an optional parenthesised note) or `measurement`."""
  if not isinstance(value, str):
    return False
  base = value.split(" (")[0]
  return base in VERDICTS or base == MEASUREMENT


def row(technique: str, claim: str, paper: str, ours: str, *, scale: str, setting: str,
        verdict: Optional[str], **extra: Any) -> dict:
  """A validated report row. `verdict=None` marks a measurement (a fact that cannot fail)."""
  record = {"technique": technique, "claim": claim, "paper": paper, "ours": ours,
            "scale": scale, "setting": setting,
            "verdict": MEASUREMENT if verdict is None else verdict, **extra}
  check_row(record)
  return record


def check_row(record: Mapping[str, Any]) -> None:
  """Raises ValueError naming what is wrong with a report row (missing keys, bad scale/verdict)."""
  missing = [k for k in ROW_KEYS if k not in record or record[k] is None]
  if missing:
    raise ValueError(f"report row {record.get('claim', record)!r} lacks {missing}; every row needs "
                     f"{list(ROW_KEYS)} (verdict 'measurement' for facts that cannot fail).")
  if record["scale"] not in SCALES:
    raise ValueError(f"report row {record['claim']!r}: scale must be one of {SCALES}, got "
                     f"{record['scale']!r}.")
  if not is_verdict(record["verdict"]):
    raise ValueError(f"report row {record['claim']!r}: verdict must be one of "
                     f"{VERDICTS + (MEASUREMENT,)} (optionally with a note in parentheses), got "
                     f"{record['verdict']!r}.")
  if not str(record["setting"]).strip():
    raise ValueError(f"report row {record['claim']!r}: setting must say dataset, model, steps "
                     "and seeds.")


def summary_counts(rows: Iterable[Mapping[str, Any]]) -> dict:
  """How many rows are reproduced at paper scale, on a proxy, not reproduced, inconclusive, not
  testable here, and measurements. The counts add up to the number of rows."""
  counts = {"reproduced at paper scale": 0, REPRODUCED_PROXY: 0, NOT_REPRODUCED: 0,
            INCONCLUSIVE: 0, NOT_TESTABLE: 0, "measurements": 0}
  for record in rows:
    check_row(record)
    base = record["verdict"].split(" (")[0]
    if base == REPRODUCED:
      key = "reproduced at paper scale" if record["scale"] == "paper" else REPRODUCED_PROXY
    elif base == MEASUREMENT:
      key = "measurements"
    else:
      key = base
    counts[key] += 1
  return counts


def judge(values: Sequence[float], threshold: float, direction: str = "greater", *,
          scale: str, min_seeds: int = MIN_SEEDS) -> tuple[dict, str]:
  """`summarize(values)` and its `verdict`, in one call."""
  summary = summarize(values)
  return summary, verdict(summary, threshold, direction, min_seeds=min_seeds, scale=scale)


def judge_paired(a: Sequence[float], b: Sequence[float], threshold: float,
                 direction: str = "greater", *, scale: str,
                 min_seeds: int = MIN_SEEDS) -> tuple[dict, str]:
  """`paired_difference(a, b)` and its `verdict` against `threshold`, in one call."""
  summary = paired_difference(a, b)
  return summary, verdict(summary, threshold, direction, min_seeds=min_seeds, scale=scale)
