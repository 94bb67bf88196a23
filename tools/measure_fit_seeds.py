"""fit_seeds with 3 and 5 seeds against one fit run: the baseline CNN on the bundled MNIST.

    python tools/measure_fit_seeds.py [--steps=200] [--rounds=1]

Runs, per round, fit, fit_seeds(3 seeds), fit_seeds(5 seeds) and fit again (bracketing the
multi-seed runs, so drifting load shows), all end to end: compilation, training, validation and
test evaluation. Prints the wall times, the median train steps/s, their ratios to the mean of the
two fit runs and the load average. Then times one train step of each seed mapping ("vmap",
"unroll") against one single-seed step (interleaved medians, 3 seeds). Run on a quiet machine.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import data, evidence, models, train


def step_times(model, dataset, config, num_seeds=3, rounds=5, calls=5):
  """Median seconds per train step: one seed (fit's step) and num_seeds seeds per mapping."""
  tx = train.make_optimizer(config)
  loss = train.classification_loss(model)
  sample = jnp.zeros((1,) + dataset.image_shape, jnp.float32)
  batch = next(data.train_batches(dataset, config.batch_size, 0))
  names = ["loss", "grad_norm", "accuracy"]
  stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * num_seeds), t)
  keys = jnp.stack([train.init_key(s) for s in range(num_seeds)])
  run_keys = jnp.stack([jax.random.key(s) for s in range(num_seeds)])
  one = train.init_train_state(model, tx, train.init_key(0), sample)
  many = jax.vmap(lambda k: train.init_train_state(model, tx, k, sample))(keys)
  keyed = train.make_keyed_train_step(loss, tx)
  fns = {"1 seed": (jax.jit(train.make_train_step(loss, tx, 0)),
                    (one, batch, train.empty_metric_sums(names)))}
  for mode in ("unroll", "vmap"):
    fn = jax.jit(train.map_seeds(keyed, num_seeds, mode, (0, 0, 0, 0)))
    fns[f"{num_seeds} seeds, {mode}"] = (fn, (many, stack(batch),
                                              stack(train.empty_metric_sums(names)), run_keys))
  for fn, args in fns.values():
    jax.block_until_ready(fn(*args))
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for name, (fn, args) in fns.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        out = fn(*args)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / calls)
  return {k: float(np.median(v)) for k, v in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=1)
  args = parser.parse_args()
  dataset = data.load_dataset("mnist_bundled")
  model = models.create_model("cnn", dataset.num_classes)
  config = train.TrainConfig(steps=args.steps, batch_size=128, log_every=25,
                             checkpoint_every=0)
  print(f"load average before: {os.getloadavg()}", flush=True)
  rows = []
  for _ in range(args.rounds):
    for label, seeds in (("fit", None), ("fit_seeds x3", evidence.EVAL_SEEDS[:3]),
                         ("fit_seeds x5", evidence.EVAL_SEEDS[:5]), ("fit", None)):
      t0 = time.perf_counter()
      if seeds is None:
        metrics = train.fit(model, dataset, config, verbose=False).metrics
      else:
        metrics = train.fit_seeds(model, dataset, config, seeds, verbose=False).metrics
      wall = time.perf_counter() - t0
      rows.append((label, wall, metrics["steps_per_sec"]))
      print(f"{label:14s} wall {wall:7.1f} s | {metrics['steps_per_sec']:.2f} steps/s | "
            f"load {os.getloadavg()[0]:.2f}", flush=True)
  fit_wall = np.mean([w for label, w, _ in rows if label == "fit"])
  fit_rate = np.mean([r for label, _, r in rows if label == "fit"])
  for label in ("fit_seeds x3", "fit_seeds x5"):
    wall = np.mean([w for lab, w, _ in rows if lab == label])
    rate = np.mean([r for lab, _, r in rows if lab == label])
    print(f"{label}: wall {wall / fit_wall:.2f}x one fit run, time per step "
          f"{fit_rate / rate:.2f}x", flush=True)
  print("one train step, median seconds:",
        {k: round(v, 4) for k, v in step_times(model, dataset, config).items()}, flush=True)
  print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
  main()
