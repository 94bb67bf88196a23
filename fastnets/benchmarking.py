"""Timing that survives a shared machine: interleaved rounds, same-run ratios, intervals.

Every benchmark in fastnets times through `time_interleaved`: each callable is compiled and
warmed up, then `repeats` rounds run every callable once in turn, so that machine drift (another
process, frequency scaling) hits every variant alike. A comparison is then the per-round ratio of
two variants timed in the same round; `ratio_summary` gives its median and a 95% interval of the
geometric mean (Student t over the rounds' log ratios), and `judge_ratio` turns that interval into
a `fastnets.evidence` verdict. Absolute times are printed, never judged.

Memory is measured, not estimated: `compiled_memory` reads the compiled executable's
`memory_analysis()` (deterministic for a given program, backend and XLA version).

A leaf module: jax, numpy and `fastnets.evidence` only.
"""

import math
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from fastnets import evidence

MIN_ROUNDS = 5  # A timing verdict needs at least this many interleaved rounds.


def time_interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int = 2,
                     repeats: int = 7) -> dict:
  """Times zero-argument callables in interleaved rounds after compilation and warm-up.

  Args:
    fns: {name: thunk}; each thunk's result is waited for with `jax.block_until_ready`.
    warmup: untimed calls per callable after the first (compiling) call.
    repeats: timed rounds; each round calls every callable once, in order.

  Returns:
    {"times": {name: [seconds per round]}, "median": {name: seconds}, "min": {name: seconds},
     "outputs": {name: the last warm-up result}}.
  """
  if not fns:
    raise ValueError("fns must hold at least one callable to time.")
  if int(warmup) < 0 or int(repeats) < 1:
    raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}.")
  outputs = {}
  for name, fn in fns.items():
    for _ in range(int(warmup) + 1):  # The first call compiles.
      outputs[name] = jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(int(repeats)):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {"times": times, "median": {n: float(np.median(t)) for n, t in times.items()},
          "min": {n: float(np.min(t)) for n, t in times.items()}, "outputs": outputs}


def compiled_memory(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> dict:
  """Byte counts of `jax.jit(fn, **jit_kwargs)` compiled for `args` (nothing runs).

  Returns {"temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "peak_bytes"} from
  `compile().memory_analysis()`: temp is the scratch XLA allocates besides arguments and outputs
  (activations kept for the backward pass, workspaces); peak is XLA's own peak figure where the
  backend reports one (else temp + arguments + outputs - aliased).
  """
  return memory_of(jax.jit(fn, **jit_kwargs).lower(*args).compile())


def memory_of(compiled: Any) -> dict:
  """`compiled_memory`'s figures for an already compiled executable (`jit(f).lower().compile()`),
  so that the executable that is measured is also the one that is timed."""
  mem = compiled.memory_analysis()
  out = {"temp_bytes": int(mem.temp_size_in_bytes),
         "argument_bytes": int(mem.argument_size_in_bytes),
         "output_bytes": int(mem.output_size_in_bytes),
         "alias_bytes": int(mem.alias_size_in_bytes)}
  peak = getattr(mem, "peak_memory_in_bytes", 0)
  out["peak_bytes"] = int(peak) if peak else (out["temp_bytes"] + out["argument_bytes"]
                                               + out["output_bytes"] - out["alias_bytes"])
  return out


def ratio_summary(numerator, denominator) -> dict:
  """Per-round ratios numerator_i / denominator_i of two interleaved timings.

  Args:
    numerator, denominator: per-round seconds of the same rounds (e.g. `times["dense"]` and
      `times["sparse"]` for the sparse kernel's speed-up over dense).

  Returns:
    {"median", "geomean", "ci95": [lo, hi] (the geometric mean's 95% interval), "rounds",
     "ratios"}; "ci95" is None with fewer than 2 rounds.
  """
  a = np.asarray(numerator, np.float64).reshape(-1)
  b = np.asarray(denominator, np.float64).reshape(-1)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"numerator and denominator must be per-round times of the same rounds, got "
                     f"{a.size} and {b.size} values.")
  if np.any(a <= 0) or np.any(b <= 0):
    raise ValueError("times must be positive.")
  logs = evidence.summarize(np.log(a / b))
  ci = None if logs["ci95"] is None else [math.exp(v) for v in logs["ci95"]]
  return {"median": float(np.median(a / b)), "geomean": math.exp(logs["mean"]), "ci95": ci,
          "rounds": int(a.size), "ratios": (a / b).tolist(), "log_summary": logs}


def judge_ratio(summary: Mapping[str, Any], threshold: float, direction: str = "greater",
                scale: str = "paper") -> str:
  """The verdict on "ratio > threshold" (or < for direction="less") from a `ratio_summary`:
  decided by the geometric mean's 95% interval; fewer than `MIN_ROUNDS` rounds are
  inconclusive."""
  if threshold <= 0:
    raise ValueError(f"threshold must be a positive ratio, got {threshold}.")
  return evidence.verdict(summary["log_summary"], math.log(threshold), direction,
                          min_seeds=MIN_ROUNDS, scale=scale, unit="round")


def format_ratio(summary: Mapping[str, Any], digits: int = 2) -> str:
  """`1.23x [1.10, 1.31] (7 rounds)`: the median ratio and the geometric mean's interval."""
  if summary.get("ci95") is None:
    return f"{summary['median']:.{digits}f}x ({summary['rounds']} round)"
  lo, hi = summary["ci95"]
  return (f"{summary['median']:.{digits}f}x [{lo:.{digits}f}, {hi:.{digits}f}] "
          f"({summary['rounds']} rounds)")
