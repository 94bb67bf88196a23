"""Hyperparameter tuning that cannot see the test split, with the same budget for every arm.

`grid_search` scores every point of a grid over named config keys on the validation split, with
tuning seeds disjoint from the evaluation seeds (`fastnets.evidence.TUNING_SEEDS`), and returns
the whole sweep as a JSON-able record for results.json (`grid`, per-point scores, `chosen`).
The scoring function receives `dataset.without_test()`: reading its test split raises
`fastnets.data.HiddenSplitError`, so a tuning path cannot peek at the numbers that are reported.

`tune_arms` runs the same grid, with the same seeds, for each compared arm (e.g. Fastfood and the
dense net), so that no arm gets a tuning budget the other lacks.
"""

import itertools
import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from fastnets import evidence
from fastnets.data import Dataset

ScoreFn = Callable[[dict, Optional[Dataset], int], float]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
  """Every combination of the grid's values, in the grid's key order (the last key fastest)."""
  if not grid:
    raise ValueError("grid must name at least one config key.")
  for key, values in grid.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}.")
  keys = list(grid)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def grid_search(score_fn: ScoreFn, grid: Mapping[str, Sequence[Any]],
                dataset: Optional[Dataset] = None,
                seeds: Sequence[int] = evidence.TUNING_SEEDS, maximize: bool = True,
                name: str = "tuning", verbose: bool = True) -> dict:
  """Scores every grid point on validation data and picks the best mean over the tuning seeds.

  Args:
    score_fn: `score_fn(values, dataset, seed) -> float`, a validation score of one training run
      with the config values `values`. `dataset` is `dataset.without_test()` (None when the caller
      passes no dataset, e.g. synthetic tasks that make their own validation data).
    grid: {config key: [values]}.
    dataset: the full dataset; only its test-less view reaches `score_fn`.
    seeds: tuning seeds; must not overlap `evidence.EVAL_SEEDS`.
    maximize: whether a higher score is better (accuracy) or a lower one (loss, distance).
    name: printed in progress lines.

  Returns:
    {"grid", "seeds", "maximize", "points": [{"values", "scores", "mean"}], "chosen",
     "chosen_score", "budget" (training runs spent), "wall_time_s"}. A run whose score is not
    finite (diverged) scores -inf (+inf when minimising) and is recorded as such.
  """
  seeds = [int(s) for s in seeds]
  overlap = sorted(set(seeds) & set(evidence.EVAL_SEEDS))
  if overlap:
    raise ValueError(f"tuning seeds {overlap} are evaluation seeds; use seeds disjoint from "
                     f"{list(evidence.EVAL_SEEDS)} (e.g. evidence.TUNING_SEEDS).")
  if not seeds:
    raise ValueError("seeds must hold at least one tuning seed.")
  view = dataset.without_test() if dataset is not None else None
  points = grid_points(grid)
  worst = -math.inf if maximize else math.inf
  records, start = [], time.time()
  total = len(points) * len(seeds)
  for i, values in enumerate(points):
    scores = []
    for seed in seeds:
      score = float(score_fn(dict(values), view, seed))
      scores.append(score if math.isfinite(score) else worst)
    finite = [s for s in scores if math.isfinite(s)]
    mean = sum(scores) / len(scores) if len(finite) == len(scores) else worst
    records.append({"values": values, "scores": scores, "mean": mean})
    if verbose:
      done = (i + 1) * len(seeds)
      left = (time.time() - start) / done * (total - done)
      print(f"[{name}] {values}: val score {mean:.4g} ({done}/{total} runs, about "
            f"{left / 60:.1f} min left)", flush=True)
  best = (max if maximize else min)(records, key=lambda r: r["mean"])
  return {"grid": {k: list(v) for k, v in grid.items()}, "seeds": seeds, "maximize": maximize,
          "points": records, "chosen": dict(best["values"]), "chosen_score": best["mean"],
          "budget": total, "wall_time_s": time.time() - start}


def tune_arms(score_fns: Mapping[str, ScoreFn], grid: Mapping[str, Sequence[Any]],
              dataset: Optional[Dataset] = None,
              seeds: Sequence[int] = evidence.TUNING_SEEDS, maximize: bool = True,
              verbose: bool = True) -> dict:
  """`grid_search` for every arm with the same grid and seeds: {arm: record}."""
  if not score_fns:
    raise ValueError("score_fns must name at least one arm.")
  return {arm: grid_search(fn, grid, dataset, seeds, maximize, name=f"tuning {arm}",
                           verbose=verbose)
          for arm, fn in score_fns.items()}
