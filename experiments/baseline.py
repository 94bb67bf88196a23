"""Baseline: train a model on a dataset with the fastnets training loop.

    python -m experiments.baseline --workdir=runs/baseline

Default: the small CNN on the bundled MNIST (8,000 train / 2,000 validation real digits), 500
Adam steps of batch 128; about 1-2 minutes on 2 CPU cores, validation accuracy about 98%.
Scale up with e.g. `--dataset=cifar10 --data_dir=~/tensorflow_datasets --model=resnet20
--steps=64000 --optimizer=momentum --learning_rate=0.1 --augment=crop_flip --weight_decay=1e-4`.
Four simulated devices: `XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m
experiments.baseline ...` (batch split over devices; results.json records them).

Writes to --workdir: results.json, curves.png, tb/ (TensorBoard), checkpoints/ (rerun to resume).
"""

import os
import sys

from experiments import common
from fastnets import data, models, train

NAME = "baseline"
DEFAULTS = {**common.TRAIN_DEFAULTS, "workdir": "runs/baseline", "model": "cnn", "log_every": 25,
            "eval_every": 100}
QUICK = {}
SMOKE = {"steps": 2, "batch_size": 32, "log_every": 1, "checkpoint_every": 0,
         "eval_batch_size": 500}
PAPER = {"claim": "small CNN on the bundled MNIST reaches >= 97.5% validation accuracy in under "
                  "3 minutes on 2 CPU cores (fastnets' own target; no paper)",
         "value": 0.975, "source": "fastnets issue 2"}


def run(config: dict) -> dict:
  """Trains config["model"] on config["dataset"]; returns the results record."""
  config = common.merge_config(DEFAULTS, config)
  timer = common.Timer()
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  model = models.create_model(config["model"], dataset.num_classes)
  workdir = config["workdir"] or None
  result = train.fit(model, dataset, common.train_config(config), workdir,
                     run_info={"experiment": NAME, "model_name": config["model"]})
  params = sum(x.size for x in __import__("jax").tree.leaves(result.state.params))
  metrics = {**result.metrics, "params": int(params)}
  plots = {}
  if workdir:
    plots["curves"] = common.plot_history(result.history, os.path.join(workdir, "curves.png"),
                                          f"{config['model']} on {dataset.name}")
  return common.write_results(workdir, NAME, config, metrics, PAPER, timer(),
                              history=result.history, plots=plots, devices_used=result.devices,
                              resumed_from=result.resumed_from)


def report_rows(results: dict) -> list[dict]:
  """One report row: the accuracy/time target against the measurement."""
  m = results["metrics"]
  ok = m["val_accuracy"] >= PAPER["value"] and results["wall_time_s"] < 180
  return [{"technique": "Baseline CNN (fastnets)", "claim": PAPER["claim"],
           "paper": ">= 97.5% in < 180 s",
           "ours": f"{100 * m['val_accuracy']:.2f}% in {results['wall_time_s']:.0f} s "
                   f"({m['params']:,} params)",
           "reproduced": ok}]


if __name__ == "__main__":
  common.main(sys.modules[__name__])
