"""Memory planning: cost-aware recomputation and a per-block planner against a memory budget.

    python -m experiments.memory_planning --workdir=runs/memory_planning --quick

SuperNeurons (Wang et al., PPoPP 2018) trains far deeper networks in a fixed GPU memory by, among
other things, cost-aware recomputation (keep the outputs of convolutions, recompute batch norm,
activations and pooling). Here, on bundled MNIST digits, a ResNet chain (strided conv stem,
`depth` basic blocks at one width, pooled linear head; `fastnets.models.chains.resnet_chain`)
is differentiated under each strategy:

* plain: plain autodiff (every residual kept);
* recompute: every block checkpointed (`fastnets.ops.remat(..., "recompute")`);
* cost_aware: every block with the cost-aware policy (`remat(..., "cost_aware")`);
* planner: `fastnets.nn.plan_memory` at the fixed budget (one strategy per block, exact DP);
* reversible: the RevNet chain of the same depth and width (`revnet_chain`: one
  `ReversibleStack`, RevNet Algorithm 1), a different network with the same blocks count.

For each strategy and depth: the compiled training step's temp memory (`memory_analysis()`,
deterministic) and the median step time over interleaved rounds (`fastnets.benchmarking`). The
fixed budget is plain autodiff's compiled temp memory at `budget_depth` blocks; the deepest
network each strategy trains within it is read off the depth grid. The step is the gradient of
the cross-entropy of one batch with respect to the parameters (batch-norm statistics updated);
parameters and gradients are arguments and outputs, so temp memory is activations plus
workspace.

fastnets' targets: cost-aware at <= 50% of plain's temp memory with <= 1.25x its step
time; the planner >= 4x deeper than plain within the budget, at <= 1.3x the step time of the best
single strategy that fits at that depth; gradients equal to plain autodiff (float32, rtol 1e-5).
Compiled memory is deterministic, so memory verdicts are decided from it; step-time verdicts come
from the per-round ratios' interval (`benchmarking.judge_ratio`, >= 5 rounds).

Writes --workdir/results.json: metrics.strategies.<strategy>.<depth> = {temp_bytes, step_time_s,
step_times_s}, metrics.budget_bytes, metrics.max_depth_at_budget.<strategy>,
metrics.planner_solve_s, and a memory-vs-time plot (pareto.png).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import benchmarking, data, evidence
from fastnets.models.chains import resnet_chain, revnet_chain
from fastnets.nn import memory_planning as mp
from fastnets.ops import cross_entropy_loss, min_peak_bytes

from . import common

NAME = "memory_planning"
STRATEGIES = ("plain", "recompute", "cost_aware", "planner", "reversible")
UNIFORM = {"plain": "store", "recompute": "recompute", "cost_aware": "cost_aware"}
DEFAULTS = {
    "workdir": "runs/memory_planning",
    "depths": [8, 16, 32, 64],      # residual blocks of the ResNet chains measured
    "budget_depth": 8,              # the budget is plain's compiled temp memory at this depth
    "budget_scale": 1.0,            # multiplier on that memory: budget = scale x plain's bytes
    "strategies": list(STRATEGIES),  # any of plain, recompute, cost_aware, planner, reversible
    "batch": 32,                    # MNIST training images per step
    "width": 16,                    # channels of the stem and of every residual block
    "warmup": 2,                    # untimed calls per strategy before the timed rounds
    "repeats": 7,                   # timed interleaved rounds (each runs every strategy once)
    "min_flops_per_byte": 4.0,      # cost-aware: keep outputs costing >= this FLOPs/byte to redo
    "seed": 0,
}
QUICK = {"depths": [4, 8, 16], "budget_depth": 4, "batch": 16, "width": 8, "warmup": 1,
         "repeats": 5}
SMOKE = {"depths": [1, 2], "budget_depth": 1, "batch": 2, "width": 4, "warmup": 1, "repeats": 2}
PAPER = {
    "claim": "SuperNeurons: cost-aware recomputation keeps the memory of recomputation at a small "
             "time cost, and with liveness analysis and offload trains much deeper networks in a "
             "fixed memory (at least 3.24x deeper than the frameworks of its day; ResNet-2500 "
             "on a 12 GB K40c; Wang et al. 2018). fastnets' targets: "
             "cost-aware <= 50% of plain temp memory at <= 1.25x step time; planner >= 4x deeper "
             "than plain within a budget at <= 1.3x the best fitting single strategy's step "
             "time; gradients equal to plain autodiff (rtol 1e-5)",
    "value": {"cost_aware_memory_vs_plain": 0.5, "cost_aware_time_vs_plain": 1.25,
              "planner_depth_vs_plain": 4.0, "planner_time_vs_best": 1.3, "grad_rtol": 1e-5},
    "source": "Wang et al. 2018 (PPoPP), SuperNeurons; Jain et al. 2020 (MLSys), Checkmate; "
              "fastnets' own targets",
}


def _batch(config):
  ds = data.load_dataset()
  n = config["batch"]
  images, labels = ds.train.images[:n], ds.train.labels[:n]
  return jnp.asarray(ds.normalize(images)), jnp.asarray(labels)


def _loss_fn(labels):
  return lambda logits: cross_entropy_loss(logits, labels)


def _compile(step, variables, x):
  """The executable that is both measured (memory_analysis) and timed."""
  return jax.jit(step).lower(variables, x).compile()


def _max_rel_err(got, ref) -> float:
  """max |got - ref| / max |ref| over all leaves (numpy: no eager JAX kernels to compile)."""
  ref, got = [np.asarray(a) for a in jax.tree.leaves(ref)], [np.asarray(a)
                                                           for a in jax.tree.leaves(got)]
  scale = max(float(np.max(np.abs(a))) for a in ref)
  return max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got)) / scale


def _plot(metrics: dict, budget: int, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for strategy, rows in metrics["strategies"].items():
    depths = sorted((k for k in rows if "temp_bytes" in rows[k]), key=int)
    if not depths:
      continue
    mem = [rows[k]["temp_bytes"] / 2**20 for k in depths]
    ax1.plot([int(k) for k in depths], mem, marker="o", label=strategy)
    timed = [k for k in depths if "step_time_s" in rows[k]]
    ax2.plot([rows[k]["temp_bytes"] / 2**20 for k in timed],
             [rows[k]["step_time_s"] * 1e3 for k in timed], marker="o", label=strategy)
    for k in timed:
      ax2.annotate(k, (rows[k]["temp_bytes"] / 2**20, rows[k]["step_time_s"] * 1e3),
                   fontsize=7)
  ax1.axhline(budget / 2**20, color="k", ls="--", lw=1, label="budget")
  ax1.set(xlabel="residual blocks", ylabel="compiled temp memory (MiB)", title="memory vs depth")
  ax1.set_xscale("log", base=2)
  ax2.axvline(budget / 2**20, color="k", ls="--", lw=1)
  ax2.set(xlabel="compiled temp memory (MiB)", ylabel="median step time (ms)",
          title="time vs memory (labels: depth)")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return common.save_figure(fig, path)


def run(config: dict) -> dict:
  """Compiles and times every (strategy, depth); plans at the budget; writes the results."""
  config = common.merge_config(DEFAULTS, config)
  timer = common.Timer()
  strategies = list(config["strategies"])
  unknown = sorted(set(strategies) - set(STRATEGIES))
  if unknown:
    raise ValueError(f"strategies must be among {list(STRATEGIES)}, got {unknown}.")
  depths = sorted(int(d) for d in config["depths"])
  if config["budget_depth"] not in depths or "plain" not in strategies:
    raise ValueError(f"budget_depth={config['budget_depth']} must be one of depths {depths} and "
                     "'plain' among the strategies (the budget is plain's memory there).")
  x, labels = _batch(config)
  loss_fn = _loss_fn(labels)
  width, mfpb = config["width"], config["min_flops_per_byte"]
  metrics = {"strategies": {s: {} for s in strategies}, "grad_max_rel_err": {},
             "planner": {}, "max_depth_at_budget": {}}
  budget = None
  block_figures = None
  for depth in depths:
    chain = resnet_chain(depth, width)
    key = jax.random.key(config["seed"])
    variables = jax.jit(chain.init)(key, x)
    steps = {}
    temps = {}
    for name in ("plain", "recompute", "cost_aware"):
      if name not in strategies and not (name != "plain" and "planner" in strategies):
        continue
      apply = mp.planned_apply(chain, [UNIFORM[name]] * len(chain.blocks),
                               min_flops_per_byte=mfpb)
      step = _compile(mp.training_step(apply, loss_fn=loss_fn), variables, x)
      temps[UNIFORM[name]] = benchmarking.memory_of(step)["temp_bytes"]
      if name in strategies:
        steps[name] = (step, variables)
        metrics["strategies"][name][str(depth)] = {"temp_bytes": temps[UNIFORM[name]]}
    if depth == config["budget_depth"]:
      budget = int(temps["store"] * config["budget_scale"])
      metrics["budget_bytes"] = budget
    if "planner" in strategies and budget is not None:
      if block_figures is None:  # identical blocks: measure once, reuse at every depth
        block_figures = mp.block_options(chain, variables, x, min_flops_per_byte=mfpb)
      options = [block_figures[0]] + [block_figures[1]] * depth + [block_figures[-1]]
      # The least peak of the uncalibrated model (the calibrated one is the plan's).
      record = {"min_reachable_model_bytes": min_peak_bytes(options)}
      try:
        plan = mp.plan_memory(chain, variables, x, budget, calibrate=temps, options=options,
                              min_flops_per_byte=mfpb, loss_fn=loss_fn)
      except ValueError as err:
        record["error"] = str(err)
        plan = None
      if plan is not None:
        counts = {s: plan.strategies.count(s) for s in sorted(set(plan.strategies))}
        record.update(strategies=counts, estimate_bytes=plan.estimate_bytes,
                      compiled_temp_bytes=plan.compiled_temp_bytes, solve_s=plan.solve_s,
                      fits=plan.compiled_temp_bytes <= budget, calibration=plan.calibration,
                      refinements=plan.refinements, uniform_fallback=plan.uniform_fallback)
        metrics["strategies"]["planner"][str(depth)] = {"temp_bytes": plan.compiled_temp_bytes}
        steps["planner"] = (plan.executable, variables)
        metrics["planner_solve_s"] = max(metrics.get("planner_solve_s", 0.0), plan.solve_s)
      metrics["planner"][str(depth)] = record
    if "reversible" in strategies:
      rev = revnet_chain(depth, width)
      rev_vars = jax.jit(rev.init)(key, x)
      rev_step = _compile(mp.training_step(rev.apply, loss_fn=loss_fn), rev_vars, x)
      metrics["strategies"]["reversible"][str(depth)] = {
          "temp_bytes": benchmarking.memory_of(rev_step)["temp_bytes"]}
      steps["reversible"] = (rev_step, rev_vars)
      if depth == depths[0]:
        ref = jax.jit(mp.training_step(revnet_chain(depth, width, backprop="store").apply,
                                       loss_fn=loss_fn))(rev_vars, x)
        metrics["grad_max_rel_err"]["reversible"] = _max_rel_err(rev_step(rev_vars, x), ref)
    timing = benchmarking.time_interleaved(
        {name: (lambda s=s, v=v: s(v, x)) for name, (s, v) in steps.items()},
        warmup=config["warmup"], repeats=config["repeats"])
    for name, times in timing["times"].items():
      row = metrics["strategies"][name][str(depth)]
      row["step_time_s"] = timing["median"][name]
      row["step_times_s"] = list(times)
    if "plain" in timing["outputs"]:
      ref = timing["outputs"]["plain"]
      for name, out in timing["outputs"].items():
        if name not in ("plain", "reversible"):
          err = _max_rel_err(out, ref)
          metrics["grad_max_rel_err"][name] = max(metrics["grad_max_rel_err"].get(name, 0.0),
                                                  err)
    print(f"depth {depth}: " + ", ".join(
        f"{n} {r[str(depth)]['temp_bytes'] / 2**20:.2f} MiB "
        f"{r[str(depth)].get('step_time_s', float('nan')) * 1e3:.1f} ms"
        for n, r in metrics["strategies"].items() if str(depth) in r), flush=True)
  for name, rows in metrics["strategies"].items():
    fitting = [int(d) for d, r in rows.items() if r["temp_bytes"] <= budget]
    metrics["max_depth_at_budget"][name] = max(fitting) if fitting else 0
  metrics.setdefault("planner_solve_s", None)  # None: no plan was solved (no planner, or none fit)
  metrics["offload"] = mp.offload_support()[1]
  plot = None
  if config["workdir"]:
    plot = _plot(metrics, budget, os.path.join(config["workdir"], "pareto.png"))
  return common.write_results(
      config["workdir"] or None, NAME, config, metrics, PAPER, timer(),
      plots={"pareto": plot} if plot else {}, load_average=common.load_average(),
      step="jit(grad of cross-entropy w.r.t. params, batch_stats updated); float32",
      tuning={"note": "no hyperparameters are tuned: depths, width and batch are sized for a "
                      "quick CPU run; min_flops_per_byte=4 is the library default, chosen "
                      "before any measurement"})


def _setting(results: dict) -> str:
  cfg = results["config"]
  return (f"{results['devices']['platform'].upper()}, ResNet chain (basic blocks, width "
          f"{cfg['width']}), MNIST batch {cfg['batch']}, depths "
          f"{', '.join(str(d) for d in cfg['depths'])}, budget = plain at "
          f"{cfg['budget_depth']} blocks, {cfg['repeats']} interleaved rounds")


def report_rows(results: dict) -> list[dict]:
  """Rows: cost-aware memory and time vs plain, planner depth and time at the budget, gradient
  equality. Memory rows are decided from the deterministic compiled figure; time rows from the
  per-round ratios' interval."""
  m = results["metrics"]
  rows_by = m["strategies"]
  setting = _setting(results)
  scale = "smoke" if results["config"]["depths"][-1] < 8 else "proxy"
  out = []
  plain, ca = rows_by.get("plain", {}), rows_by.get("cost_aware", {})
  common_depths = sorted(set(plain) & set(ca), key=int)
  if common_depths:
    d = common_depths[-1]
    mem = ca[d]["temp_bytes"] / plain[d]["temp_bytes"]
    out.append(evidence.row(
        "Cost-aware recomputation (SuperNeurons): memory", "keep expensive outputs, recompute "
        "cheap ones: large memory saving", "target <= 50% of plain's temp memory",
        f"{mem:.0%} of plain at {d} blocks ({ca[d]['temp_bytes'] / 2**20:.2f} vs "
        f"{plain[d]['temp_bytes'] / 2**20:.2f} MiB compiled)", scale=scale, setting=setting,
        verdict=(evidence.REPRODUCED_PROXY if mem <= 0.5 else evidence.NOT_REPRODUCED)
        if scale != "smoke" else evidence.INCONCLUSIVE))
    ratio = benchmarking.ratio_summary(ca[d]["step_times_s"], plain[d]["step_times_s"])
    out.append(evidence.row(
        "Cost-aware recomputation (SuperNeurons): step time", "small time overhead",
        "target <= 1.25x plain", f"{benchmarking.format_ratio(ratio)} at {d} blocks",
        scale=scale, setting=setting,
        verdict=benchmarking.judge_ratio(ratio, 1.25, "less", scale="proxy")))
  depth_at = m.get("max_depth_at_budget", {})
  if "planner" in depth_at and depth_at.get("plain"):
    ratio_depth = depth_at["planner"] / depth_at["plain"]
    grid_top = max(int(d) for d in results["config"]["depths"])
    out.append(evidence.row(
        "Memory planner: depth within a budget", "much deeper networks in fixed memory",
        "SuperNeurons: >= 3.24x deeper than 2018 frameworks; target >= 4x plain's depth",
        f"{ratio_depth:.0f}x: planner {depth_at['planner']} blocks, plain {depth_at['plain']}, "
        + ", ".join(f"{k} {v}" for k, v in depth_at.items() if k not in ("planner", "plain"))
        + f" (grid up to {grid_top}; solve {m.get('planner_solve_s', 0) * 1e3:.0f} ms)",
        scale=scale, setting=setting,
        verdict=(evidence.REPRODUCED_PROXY if ratio_depth >= 4 else evidence.NOT_REPRODUCED)
        if scale != "smoke" else evidence.INCONCLUSIVE))
    d = str(depth_at["planner"])
    fitting = [s for s in ("plain", "recompute", "cost_aware")
               if d in rows_by.get(s, {}) and rows_by[s][d]["temp_bytes"] <= m["budget_bytes"]
               and "step_times_s" in rows_by[s][d]]
    if fitting and "step_times_s" in rows_by["planner"].get(d, {}):
      best = min(fitting, key=lambda s: rows_by[s][d]["step_time_s"])
      ratio = benchmarking.ratio_summary(rows_by["planner"][d]["step_times_s"],
                                         rows_by[best][d]["step_times_s"])
      out.append(evidence.row(
          "Memory planner: step time at the budget", "cost-aware choices cost little time",
          "target <= 1.3x the best single strategy that fits",
          f"{benchmarking.format_ratio(ratio)} vs {best} at {d} blocks", scale=scale,
          setting=setting, verdict=benchmarking.judge_ratio(ratio, 1.3, "less", scale="proxy")))
  errs = m.get("grad_max_rel_err", {})
  if errs:
    worst = max(errs.values())
    out.append(evidence.row(
        "Memory planning: gradients", "recomputation is exact", "equal to plain autodiff "
        "(float32, rtol 1e-5)", "max |diff| / max |grad|: " + ", ".join(
            f"{k} {v:.1e}" for k, v in sorted(errs.items())), scale=scale, setting=setting,
        verdict=evidence.REPRODUCED_PROXY if worst <= 1e-5 else evidence.NOT_REPRODUCED))
  return out


if __name__ == "__main__":
  common.main(sys.modules[__name__])
