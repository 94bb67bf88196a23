"""FreeTickets: dynamic sparse training and EDST ensembles against a dense net of the same steps.

    python -m experiments.free_tickets --workdir=runs/free_tickets --quick

Liu et al. (ICLR 2022) train sparse networks whose connections move during training (DST: ERK
initial densities, every `update_every` steps the smallest-magnitude `death_rate` of each layer's
weights is dropped and as many regrown where the gradient is largest, RigL) and collect an
ensemble from one run (EDST): after an exploration phase, each of `num_tickets` refinement phases
begins with a global exploration step of death rate `refine_death_rate` and ends in one sparse
ticket. Here, on the bundled MNIST with LeNet-300-100 (`models.MLP`), under each evaluation seed,
three arms of `steps` steps each (same batches, same optimizer):

- `dense`: the dense MLP;
- `dst`: one RigL DST network at `density`;
- `edst`: one EDST run at `density` with `num_tickets` tickets, evaluated as the softmax-average
  ensemble of its tickets, with the mean member accuracy and the pairwise disagreement of the
  members' test predictions.

A conv ticket (measurement only, the first seed): one RigL DST run of a small CNN
(`models.SmallCNN`, `conv_channels`, `conv_steps` steps, same density and schedule scaled to its
steps); its masks (`ops.dst_masks` of the optimizer state) take its convolutions through the
sparse inference path (`nn.sparsify_variables(..., masks=...)`, `nn.sparse_apply`, impl "auto"):
test predictions equal to the masked dense model's, and the interleaved inference time of the
dense and the sparse path at batch `time_batch`.

Training FLOPs (analytic, `ops.dense_flops`; a training step is 3x a forward pass): the dense net
pays its dense matmuls every step; the sparse runs pay their nonzeros every step plus, at each
topology update, one dense weight-gradient product for RigL's regrowth scores. Our training runs
the masked weights as dense arrays (XLA has no sparse matmul on CPU), so these FLOPs are what a
sparse kernel would pay, not what this run paid in time.

Writes --workdir/results.json.
"""

import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import benchmarking, data, evidence, models, nn, ops, train

from . import common

NAME = "free_tickets"
DEFAULTS = {
    **common.TRAIN_DEFAULTS,
    "workdir": "runs/free_tickets",
    "steps": 3000,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "checkpoint_every": 0,
    "log_every": 500,
    "hidden": [300, 100],  # MLP hidden widths (LeNet-300-100)
    "density": 0.2,  # fraction of weights kept in the sparse arms (ERK)
    "update_every": 100,  # steps between RigL topology updates
    "death_rate": 0.5,  # fraction of each layer's weights dropped and regrown per update
    "refine_death_rate": 0.8,  # EDST: death rate opening each refinement phase
    "num_tickets": 3,  # EDST: tickets (refinement phases) in the ensemble
    "exploration_fraction": 0.4,  # EDST: fraction of the steps in the exploration phase
    "seeds": list(evidence.EVAL_SEEDS),  # evaluation seeds
    "conv_channels": [16, 32],  # conv ticket (measurement): SmallCNN conv widths
    "conv_hidden": 64,  # conv ticket: SmallCNN dense hidden width
    "conv_steps": 600,  # conv ticket: DST steps (first seed only)
    "time_batch": 256,  # conv ticket: inference batch of the sparse vs dense timing
    "time_repeats": 9,  # conv ticket: interleaved timing rounds
}
QUICK = {"steps": 900,  # cut for time: common.SETTING_CHANGES
         "conv_steps": 300, "seeds": list(evidence.EVAL_SEEDS[:3])}
SMOKE = {"steps": 12, "update_every": 2, "batch_size": 16, "eval_batch_size": 500,
         "log_every": 4, "hidden": [16, 8], "seeds": [0], "conv_channels": [4, 8],
         "conv_hidden": 8, "conv_steps": 6, "time_batch": 8, "time_repeats": 2}
PAPER = {
    "claim": "EDST ensembles of sparse tickets from one dynamic sparse training run beat a dense "
             "network and approach a deep ensemble at a fraction of the training FLOPs "
             "(density 0.2, ERK, prune/regrow every 1000 iterations, death rate 0.5, refinement "
             "death rate 0.8)",
    "value": "EDST ensemble above the single dense net at fewer training FLOPs (CIFAR, "
             "Wide ResNet-28-10 / ResNet-50; numbers not in our digest)",
    "source": "Liu et al., Deep Ensembling with No Overhead for either Training or Testing: The "
              "All-Round Blessings of Dynamic Sparsity (FreeTickets), ICLR 2022",
    "target": "fastnets: EDST ensemble >= mean member + 0.3 points, disagreement > 1%, ensemble "
              "at least as accurate as the dense net at fewer training FLOPs",
}
TUNING = {"note": "not tuned: Adam 1e-3 with a cosine schedule (the project default), every arm "
                  "alike; density, death rates and ticket count are the paper's; update_every "
                  "(100) and the exploration fraction (0.4) scale the paper's schedule down to "
                  "the quick run's steps, fixed before any run; the conv ticket (measurement "
                  "only, no verdict: SmallCNN [16, 32], hidden 64, 300 quick steps, the update "
                  "interval scaled to its steps) was added later with its settings fixed "
                  "before its first run; the MLP arms are unchanged"}


def _kernel_sizes(params):
  return {ops.pruning.path_to_str(p): int(x.size)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
          if ops.default_prunable(p, x)}


def _train_flops(sizes, kept, steps, batch, updates):
  """Training FLOPs: 3 forward-sized products per step over the kept weights, plus one dense
  weight-gradient product per topology update (RigL's regrowth scores)."""
  per_step = 3 * sum(ops.dense_flops(batch, 1, 1, kept[k]) for k in sizes)
  dense_grad = sum(ops.dense_flops(batch, 1, 1, n) for n in sizes.values())
  return int(steps * per_step + updates * dense_grad)


def _test_logits(model, params, dataset, batch_size):
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  out, labels = [], []
  for b in data.eval_batches(dataset, dataset.test, batch_size):
    keep = b["mask"] > 0
    out.append(np.asarray(apply(params, jnp.asarray(b["image"])))[keep])
    labels.append(b["label"][keep])
  return np.concatenate(out), np.concatenate(labels)


def _conv_ticket(config, dataset, seed):
  """The conv ticket measurement (module docstring): one RigL run of a SmallCNN, its test
  predictions through the sparse path against the masked dense model, and their timings."""
  model = models.SmallCNN(num_classes=dataset.num_classes,
                          channels=tuple(config["conv_channels"]), hidden=config["conv_hidden"],
                          dropout_rate=0.0)
  steps = config["conv_steps"]
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1,) + dataset.image_shape)))["params"]
  counts = ops.erk_counts(shapes, config["density"])
  sched = ops.DSTSchedule(update_every=max(1, config["update_every"] * steps // config["steps"]),
                          death_rate=config["death_rate"], end_step=int(0.75 * steps))

  def wrap(tx):
    masks = ops.random_sparse_masks(jax.random.key(30_000 + seed), shapes, counts)
    return ops.dynamic_sparse_training(tx, masks, sched, "rigl", key=jax.random.key(40_000 + seed))

  cfg = common.train_config({**config, "seed": seed, "steps": steps})
  res = train.fit(model, dataset, cfg, tx_wrapper=wrap, verbose=False)
  masks = ops.dst_masks(res.state.opt_state)
  variables = jax.device_get({"params": ops.apply_masks(res.state.params, masks)})
  sparse_vars = nn.sparsify_variables(variables, masks=masks)
  dense_f = jax.jit(lambda v, x: model.apply(v, x))
  sparse_f = jax.jit(lambda v, x: nn.sparse_apply(model, v, x, impl="auto"))
  equal, n = True, 0
  for b in data.eval_batches(dataset, dataset.test, config["eval_batch_size"]):
    x, keep = jnp.asarray(b["image"]), b["mask"] > 0
    d, sp = np.asarray(dense_f(variables, x))[keep], np.asarray(sparse_f(sparse_vars, x))[keep]
    equal &= bool(np.array_equal(np.argmax(d, -1), np.argmax(sp, -1)))
    n += int(keep.sum())
  x = jax.random.normal(jax.random.key(0), (config["time_batch"],) + dataset.image_shape)
  timing = benchmarking.time_interleaved(
      {"dense": lambda: dense_f(variables, x), "sparse": lambda: sparse_f(sparse_vars, x)},
      repeats=config["time_repeats"])
  conv_density = {k: float(np.mean(np.asarray(m))) for k, m in (
      (ops.pruning.path_to_str(p), m) for p, m in jax.tree_util.tree_flatten_with_path(
          masks, is_leaf=lambda x: x is None)[0] if m is not None) if np.ndim(m) == 4}
  return {"seed": seed, "test_accuracy": res.metrics["test_accuracy"],
          "predictions_equal": equal, "test_examples": n, "conv_density": conv_density,
          "speedup": benchmarking.ratio_summary(timing["times"]["dense"],
                                                timing["times"]["sparse"]),
          "median_s": timing["median"]}


def run(config: dict) -> dict:
  config = common.merge_config(DEFAULTS, config)
  timer = common.Timer()
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  seeds = [int(s) for s in config["seeds"]]
  model = models.MLP(num_classes=dataset.num_classes, hidden=tuple(config["hidden"]))
  steps, batch = config["steps"], config["batch_size"]
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1,) + dataset.image_shape)))["params"]
  sizes = _kernel_sizes(shapes)
  counts = {k.removeprefix("params/"): v for k, v in ops.erk_counts(
      {"params": shapes}, config["density"]).items()}
  dst_sched = ops.DSTSchedule(update_every=config["update_every"],
                              death_rate=config["death_rate"], end_step=int(0.75 * steps))
  edst_sched = ops.EDSTSchedule(
      total_steps=steps, exploration_steps=int(config["exploration_fraction"] * steps),
      num_tickets=config["num_tickets"], update_every=config["update_every"],
      death_rate=config["death_rate"], refine_death_rate=config["refine_death_rate"])

  def updates_of(schedule):
    return int(np.sum(np.asarray(jax.vmap(schedule.death_rate_at)(jnp.arange(steps))) > 0))

  def sparse(schedule, seed):
    def wrap(tx):
      masks = ops.random_sparse_masks(jax.random.key(10_000 + seed), shapes, counts)
      return ops.dynamic_sparse_training(tx, masks, schedule, "rigl",
                                         key=jax.random.key(20_000 + seed))
    return wrap

  acc = {"dense": [], "dst": [], "edst_ensemble": []}
  member_mean, disagreement, density_seen = [], [], []
  for seed in seeds:
    cfg = common.train_config({**config, "seed": seed})
    acc["dense"].append(train.fit(model, dataset, cfg, verbose=False).metrics["test_accuracy"])
    res = train.fit(model, dataset, cfg, tx_wrapper=sparse(dst_sched, seed), verbose=False)
    acc["dst"].append(res.metrics["test_accuracy"])
    tickets = []

    def collect(step, state, tickets=tickets):
      if step in edst_sched.ticket_steps():
        tickets.append(jax.device_get(state.params))

    train.fit(model, dataset, cfg, tx_wrapper=sparse(edst_sched, seed), callbacks=[collect],
              verbose=False)
    logits, labels = zip(*(_test_logits(model, p, dataset, config["eval_batch_size"])
                           for p in tickets))
    labels = labels[0]
    preds = np.argmax(np.stack(logits), -1)
    members = [float(np.mean(p == labels)) for p in preds]
    ens = np.asarray(ops.ensemble_probabilities(jnp.asarray(np.stack(logits))))
    acc["edst_ensemble"].append(float(np.mean(np.argmax(ens, -1) == labels)))
    member_mean.append(statistics.fmean(members))
    disagreement.append(float(ops.pairwise_disagreement(jnp.asarray(preds)))
                        if len(preds) > 1 else 0.0)
    nnz = sum(int(np.count_nonzero(np.asarray(x))) for p, x in
              jax.tree_util.tree_flatten_with_path(tickets[-1])[0]
              if ops.default_prunable(p, x))
    density_seen.append(nnz / sum(sizes.values()))
    print(f"[{NAME}] seed {seed}: dense {acc['dense'][-1]:.4f}, dst {acc['dst'][-1]:.4f}, "
          f"edst ensemble {acc['edst_ensemble'][-1]:.4f} (members {members}), disagreement "
          f"{disagreement[-1]:.4f}", flush=True)

  conv = _conv_ticket(config, dataset, seeds[0])
  print(f"[{NAME}] conv ticket: predictions equal {conv['predictions_equal']}, sparse path "
        f"{conv['speedup']['median']:.2f}x dense", flush=True)
  kept = counts
  metrics = {arm: {"test_accuracy": statistics.fmean(v), "test_accuracy_per_seed": v,
                   "test_accuracy_summary": evidence.summarize(v)} for arm, v in acc.items()}
  metrics["dense"]["train_flops"] = _train_flops(sizes, sizes, steps, batch, 0)
  metrics["dst"]["train_flops"] = _train_flops(sizes, kept, steps, batch, updates_of(dst_sched))
  metrics["edst"] = {"train_flops": _train_flops(sizes, kept, steps, batch,
                                                 updates_of(edst_sched)),
                     "ticket_steps": edst_sched.ticket_steps(),
                     "final_density_per_seed": density_seen}
  metrics.update(edst_member_mean_accuracy=statistics.fmean(member_mean),
                 edst_member_mean_accuracy_per_seed=member_mean,
                 disagreement=statistics.fmean(disagreement), disagreement_per_seed=disagreement,
                 erk_counts=counts, seeds=seeds, conv_ticket=conv,
                 load_average=common.load_average())
  return common.write_results(config["workdir"] or None, NAME, config, metrics, PAPER, timer(),
                              tuning=TUNING)


def report_rows(results: dict) -> list[dict]:
  m, cfg = results["metrics"], results["config"]
  scale = "smoke" if cfg["steps"] < 200 else "proxy"
  setting = (f"{cfg['dataset']}, MLP 784-{'-'.join(str(h) for h in cfg['hidden'])}-10, "
             f"{cfg['steps']} steps of batch {cfg['batch_size']}, density {cfg['density']} "
             f"(ERK), RigL every {cfg['update_every']} steps, {cfg['num_tickets']} tickets, "
             f"seeds {', '.join(str(s) for s in m['seeds'])}")
  fmt = lambda v: evidence.format_summary(evidence.summarize(v), 100)
  ens, members = m["edst_ensemble"]["test_accuracy_per_seed"], \
      m["edst_member_mean_accuracy_per_seed"]
  dense = m["dense"]["test_accuracy_per_seed"]
  rows = []
  diff, verdict = evidence.judge_paired(ens, members, 0.003, scale=scale,
                                        min_seeds=evidence.MIN_SEEDS_SMALL_EFFECT)
  rows.append(evidence.row(
      "FreeTickets: EDST ensemble vs its members",
      "the EDST ensemble is >= 0.3 points above its mean member",
      "ensembling sparse tickets improves on a single ticket",
      f"{fmt(ens)} vs {fmt(members)}; paired difference "
      f"{evidence.format_summary(diff, 100, unit=' pts')}", scale=scale, setting=setting,
      verdict=verdict))
  summary, verdict = evidence.judge(m["disagreement_per_seed"], 0.01, scale=scale)
  rows.append(evidence.row(
      "FreeTickets: ticket diversity", "pairwise prediction disagreement of tickets above 1%",
      "tickets are diverse", f"disagreement {evidence.format_summary(summary, 100, unit='%')}",
      scale=scale, setting=setting, verdict=verdict))
  ratio = m["edst"]["train_flops"] / m["dense"]["train_flops"]
  diff, verdict = evidence.judge_paired(ens, dense, 0.0, scale=scale)
  rows.append(evidence.row(
      "FreeTickets: EDST ensemble vs dense net",
      "the EDST ensemble is at least as accurate as the dense net of the same steps, at fewer "
      "training FLOPs (paired difference above 0)",
      "EDST beats the dense network at a fraction of its training FLOPs",
      f"{fmt(ens)} vs {fmt(dense)}; paired difference "
      f"{evidence.format_summary(diff, 100, unit=' pts')}; training FLOPs {ratio:.2f}x dense",
      scale=scale, setting=setting, verdict=verdict))
  dst = m["dst"]["test_accuracy_per_seed"]
  rows.append(evidence.row(
      "FreeTickets: single DST network (RigL)",
      f"accuracy of one RigL network at density {cfg['density']} next to the dense net",
      "DST at density 0.2 close to dense", f"{fmt(dst)} vs dense {fmt(dense)}; training FLOPs "
      f"{m['dst']['train_flops'] / m['dense']['train_flops']:.2f}x dense",
      scale=scale, setting=setting, verdict=None))
  if "conv_ticket" in m:
    c = m["conv_ticket"]
    conv_setting = (f"{cfg['dataset']}, SmallCNN conv {cfg['conv_channels']}, hidden "
                    f"{cfg['conv_hidden']}, {cfg['conv_steps']} RigL steps at density "
                    f"{cfg['density']} (ERK), seed {c['seed']}; inference batch "
                    f"{cfg['time_batch']}")
    dens = ", ".join(f"{k.split('/')[-2]} {v:.2f}" for k, v in c["conv_density"].items())
    rows.append(evidence.row(
        "FreeTickets: a conv ticket through the sparse inference path (measurement)",
        "a DST ticket's convolutions run through nn.sparse_apply (direct sparse convolution, "
        "impl auto) with the masked dense model's test predictions; inference speed of the "
        "sparse path over the dense one", "sparse tickets are cheap at test time",
        f"predictions equal on all {c['test_examples']:,} test images: "
        f"{c['predictions_equal']}; ticket test accuracy {100 * c['test_accuracy']:.2f}%; "
        f"conv densities {dens}; sparse path {benchmarking.format_ratio(c['speedup'])} the "
        f"dense model's speed ({1e3 * c['median_s']['dense']:.1f} vs "
        f"{1e3 * c['median_s']['sparse']:.1f} ms; load average {m.get('load_average')})",
        scale=scale, setting=conv_setting, verdict=None))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
