"""Input fast-forwarding (FFNet, Ibrahim et al. 2017): FFNet vs its ablation and the ResNet.

    python -m experiments.ffnet --workdir=runs/ffnet --quick   # bundled MNIST, ~2-3 min
    python -m experiments.ffnet --workdir=runs/ffnet           # CIFAR-10 (tfds), full width

Trains the released FFNet (six stages of three 3x3 convs plus a 5x5 fast-forward branch, FC 400,
100, 10; `fastnets.models.FFNet`), the same net without the fast-forward branches (the ablation)
and the baseline ResNet for the same number of steps, and measures the vanishing-gradient claim:
the gradient norm of the early layers (the three main-path convs of stage 1, which both FFNets
share) at initialisation for several seeds, and during training every `grad_every` steps on a
fixed batch. Also the norm of every main-path conv's gradient against depth at initialisation.

Quick: FFNet width 16 (64 in the paper) on the bundled MNIST, 90 Adam steps of batch 32 (200 until
the main job had to fit 30 minutes), three training seeds (test accuracy, paired by seed), gradient
norms at initialisation over three seeds.
Each model's learning rate comes from the committed sweep `experiments/tuning/ffnet.json`
(`python -m experiments.ffnet --tune`: the same grid 3e-4, 1e-3, 3e-3, fixed before the sweep and
centred on the earlier hand-set 1e-3, for all three models, one tuning seed, validation accuracy
only). When the sweep was run, test numbers of the earlier setting (1e-3 for all) had been seen.
Full (DEFAULTS): width 64 on
CIFAR-10 (32x32 inputs: the stages give 28, ..., 8; the paper crops to 28), momentum SGD with the
released solver's learning rate and weight decay, three seeds.

Writes to --workdir: results.json (metrics.<ffnet|ablation|resnet> = {test_accuracy,
early_grad_norm, ...}) and grad_norms.png.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fastnets import data, evidence, models, train

from . import common

NAME = "ffnet"
DEFAULTS = {
    **common.TRAIN_DEFAULTS,
    "workdir": "runs/ffnet",
    "dataset": "cifar10",
    "features": 64,  # FFNet: channels of every conv (released: 64)
    "stages": 6,  # FFNet stages; each removes 4 pixels (inputs need 4 * stages + 1)
    "resnet_depth": 20,  # baseline ResNet depth (6n + 2)
    "resnet_widths": [16, 16, 32, 64],  # baseline ResNet channels: stem, then the three stages
    "steps": 40000,
    "batch_size": 32,
    "optimizer": "momentum",
    "learning_rate": 0.001,  # The released solver: SGD 0.001, momentum 0.9, weight decay 2e-4.
    "weight_decay": 2e-4,
    "schedule": "cosine",
    "augment": "crop_flip",
    "seeds": [0, 1, 2],  # training seeds (test accuracy paired by seed)
    "grad_seeds": [0, 1, 2, 3, 4],  # init seeds (one batch each) of the gradient norms at init
    "grad_every": 1000,  # steps between early gradient norms in training (first seed)
    "log_every": 500,
    "eval_every": 0,
    "checkpoint_every": 0,
    "tuning_record": False,  # read per-model learning rates from experiments/tuning/ffnet.json
}
QUICK = {
    "dataset": "mnist_bundled", "features": 16, "resnet_depth": 8, "resnet_widths": [8, 8, 16, 32],
    "steps": 90, "batch_size": 32, "optimizer": "adam", "learning_rate": 1e-3,
    "weight_decay": 0.0, "augment": "none", "seeds": [0, 1, 2], "grad_seeds": [0, 1, 2],
    "grad_every": 50, "log_every": 25, "tuning_record": True,
}
SMOKE = {**QUICK, "seeds": [0], "features": 4, "stages": 2, "steps": 3, "batch_size": 8,
         "eval_batch_size": 500,
         "log_every": 1, "grad_every": 2, "grad_seeds": [0, 1], "resnet_widths": [4, 4, 8, 8],
         "tuning_record": False}
PAPER = {"claim": "input fast-forwarding (a parallel path sending input representations to deeper "
                  "layers) counters vanishing gradients and learns better: a 20-conv FFNet beats "
                  "GoogLeNet and CaffeNet, 4x and 18x larger",
         "value": None, "source": "Ibrahim, Abbott, Hussein 2017, abstract; net from the "
                                  "aicentral/FFNet prototxt",
         "target": "fastnets target: larger early-layer gradient norms than the ablation at "
                   "initialisation and better or equal accuracy for the same steps, several seeds"}

MODELS = ("ffnet", "ablation", "resnet")
# The quick setting's sweep (`--tune`): the same grid and tuning seed for every model.
TUNING_GRID = {"learning_rate": [3e-4, 1e-3, 3e-3]}
# Measurement-only keys: the gradient norms do not change what is trained.
TUNING_IGNORED_KEYS = ("grad_seeds", "grad_every")


def _build(name: str, config: dict, num_classes: int):
  if name in ("ffnet", "ablation"):
    return models.FFNet(num_classes=num_classes, features=config["features"],
                        stages=config["stages"], fast_forward=name == "ffnet")
  return models.ResNet(num_classes=num_classes, depth=config["resnet_depth"],
                       widths=tuple(config["resnet_widths"]))


def _early(path: str) -> bool:
  """The early layers: stage 1's main path (FFNet and ablation); the stem and first block
  (ResNet, for reference only: not the same layers)."""
  return path.startswith(("stage1/main/", "stem/", "stage1_block1/"))


def make_grad_norms(model):
  """jit'd `(params, model_state, batch) -> {conv kernel path: gradient norm}` (train mode)."""
  loss_fn = train.classification_loss(model)

  @jax.jit
  def grad_norms(params, model_state, batch):
    grads, _ = jax.grad(loss_fn, has_aux=True)(params, model_state, batch, jax.random.key(0))
    flat = traverse_util.flatten_dict(grads, sep="/")
    return {k: jnp.linalg.norm(v.astype(jnp.float32)) for k, v in flat.items()
            if k.endswith("/kernel") and v.ndim == 4}

  return grad_norms


def early_norm(norms: dict) -> float:
  """Global norm of the early layers' kernel gradients."""
  return float(np.sqrt(sum(float(v) ** 2 for k, v in norms.items() if _early(k))))


def _init_state(model, sample, seed):
  variables = dict(model.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed)},
                              sample, train=False))
  return variables.pop("params"), variables


def _fixed_batch(dataset, batch_size, seed):
  batch = next(data.train_batches(dataset, batch_size, seed + 1000, num_steps=1))
  return {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])}


class GradTracker:
  """`fit` callback: the gradient norms on a fixed batch every `every` steps."""

  def __init__(self, grad_norms, batch, every):
    self.grad_norms, self.batch, self.every = grad_norms, batch, every
    self.records = []  # [step, early norm]

  def __call__(self, step, state):
    if step % self.every == 0:
      norms = self.grad_norms(state.params, state.model_state, self.batch)
      self.records.append([step, early_norm(norms)])  # Lists: the same after a JSON round trip.


def _plot(metrics: dict, history: dict, path: str, title: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for i, name in enumerate(("ffnet", "ablation")):
    profile = metrics[name]["main_path_grad_norms_at_init"]
    axes[0].plot(range(1, len(profile) + 1), profile, marker="o", color=f"C{i}", label=name)
  axes[0].set(xlabel="main-path conv layer (depth)", ylabel="gradient norm at init",
              yscale="log", title="gradient norm vs depth at initialisation")
  for i, name in enumerate(MODELS):
    traj = metrics[name]["early_grad_norm_trajectory"]
    if traj:
      axes[1].plot([s for s, _ in traj], [v for _, v in traj], marker=".", color=f"C{i}",
                   label=name)
    train_pts = [(h["step"], h["train_loss"]) for h in history[name] if "train_loss" in h]
    if train_pts:
      axes[2].plot(*zip(*train_pts), marker=".", color=f"C{i}",
                   label=f"{name} ({100 * metrics[name]['test_accuracy']:.1f}% test)")
  axes[1].set(xlabel="step", ylabel="early-layer gradient norm", yscale="log",
              title="early layers during training")
  axes[2].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  return common.save_figure(fig, path)


def tuning_arms(config: dict):
  """The sweep's arms (`common.tune_experiment`): validation accuracy of each model."""
  config = common.merge_config(DEFAULTS, config)
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)

  def score_fn(name):
    def score(values, view, seed):
      model = _build(name, config, view.num_classes)
      tcfg = common.train_config({**config, **values, "seed": seed})
      return train.fit(model, view, tcfg, None, verbose=False).metrics["val_accuracy"]
    return score
  return {name: score_fn(name) for name in MODELS}, dataset


def run(config: dict) -> dict:
  """Gradient norms at init, then training of each model for each seed; the results record."""
  config = common.merge_config(DEFAULTS, config)
  clock = common.Timer()
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  sample = jnp.zeros((1,) + dataset.image_shape, jnp.float32)
  metrics: dict = {}
  history: dict = {}
  tuned, tuning = common.apply_tuning(sys.modules[__name__], config)
  base = config
  for name in MODELS:
    config = {**base, **tuned.get(name, {})}
    model = _build(name, config, dataset.num_classes)
    grad_norms = make_grad_norms(model)
    # Gradient norms at initialisation: one init seed and one batch per grad seed.
    init_early, profiles = [], []
    for seed in config["grad_seeds"]:
      params, model_state = _init_state(model, sample, seed)
      norms = grad_norms(params, model_state, _fixed_batch(dataset, config["batch_size"], seed))
      init_early.append(early_norm(norms))
      if name != "resnet":
        profiles.append([float(norms[f"stage{s}/main/conv{c}/kernel"])
                         for s in range(1, config["stages"] + 1)
                         for c in (1, 2, 3)])
    params, _ = _init_state(model, sample, 0)
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    accs, times, trajectory = [], [], []
    for seed in config["seeds"]:
      # The gradient trajectory is recorded on the first seed only (it costs a gradient pass).
      first = seed == config["seeds"][0]
      tracker = GradTracker(grad_norms, _fixed_batch(dataset, config["batch_size"], 0),
                            config["grad_every"])
      t0 = time.time()
      result = train.fit(model, dataset, common.train_config({**config, "seed": seed}), None,
                         callbacks=[tracker] if first else [], verbose=False)
      times.append(time.time() - t0)
      accs.append(result.metrics["test_accuracy"])
      if seed == config["seeds"][0]:
        trajectory, history[name] = tracker.records, result.history
      print(f"{name} seed {seed}: test accuracy {accs[-1]:.4f} ({times[-1]:.0f} s), early grad "
            f"norm at init {np.mean(init_early):.3g}", flush=True)
    metrics[name] = {
        "test_accuracy": float(np.mean(accs)), "test_accuracy_seeds": accs,
        "early_grad_norm": float(np.mean(init_early)), "early_grad_norm_seeds": init_early,
        "early_grad_norm_trajectory": trajectory, "params": n_params,
        "fit_wall_time_s_seeds": times, "learning_rate": float(config["learning_rate"]),
        "main_path_grad_norms_at_init": (np.mean(profiles, axis=0).tolist() if profiles
                                         else None),
    }
  config = base
  metrics["resnet"]["early_layers"] = "stem + first block (not comparable to FFNet's)"
  plots = {}
  workdir = config["workdir"] or None
  if workdir:
    plots["grad_norms"] = _plot(metrics, history, os.path.join(workdir, "grad_norms.png"),
                                f"FFNet (width {config['features']}) vs ablation vs "
                                f"ResNet-{config['resnet_depth']} on {dataset.name}, "
                                f"{config['steps']} steps")
  return common.write_results(workdir, NAME, config, metrics, PAPER, clock(), plots=plots,
                              history=history, **tuning)


def report_rows(results: dict) -> list[dict]:
  """Gradient claim (paired log norms over init seeds), accuracy vs the ablation (paired over
  training seeds), and the ResNet beside them as a measurement."""
  m, cfg = results["metrics"], results["config"]
  ff, ab, rn = m["ffnet"], m["ablation"], m["resnet"]
  width = cfg["features"]
  scale = "paper" if cfg["dataset"] == "cifar10" and cfg["steps"] >= 40000 else "proxy"
  setting = (f"{cfg['dataset']}, FFNet width {width}, {cfg['stages']} stages, {cfg['steps']} "
             f"steps of batch {cfg['batch_size']}, training seeds "
             f"{', '.join(str(v) for v in cfg['seeds'])}; "
             f"{common.tuning_text(results) or 'learning rate ' + str(cfg['learning_rate'])}")
  log = lambda values: [float(np.log(max(v, 1e-30))) for v in values]
  grad, grad_verdict = evidence.judge_paired(log(ff["early_grad_norm_seeds"]),
                                             log(ab["early_grad_norm_seeds"]), 0.0, "greater",
                                             scale=scale)
  ratio = lambda x: f"{np.exp(x):.1f}x"
  grad_ci = (f" [{ratio(grad['ci95'][0])}, {ratio(grad['ci95'][1])}]" if grad.get("ci95") else "")
  acc, acc_verdict = evidence.judge_paired(ff["test_accuracy_seeds"], ab["test_accuracy_seeds"],
                                           0.0, "greater", scale=scale)
  summary = lambda v: evidence.format_summary(evidence.summarize(v), 100)
  return [
      evidence.row(
          "FFNet: early-layer gradients (vanishing-gradient claim)",
          PAPER["claim"] + "; here: larger early-layer gradient norms than the ablation at "
          "initialisation",
          "fast-forwarding strengthens the gradients of early layers",
          f"stage-1 gradient norm at init {ff['early_grad_norm']:.3g} (FFNet) vs "
          f"{ab['early_grad_norm']:.3g} (no fast-forward); paired ratio "
          f"{ratio(grad['mean'])}{grad_ci} over {grad['n']} init seeds",
          scale=scale, setting=f"{setting}; init seeds "
                               f"{', '.join(str(v) for v in cfg['grad_seeds'])}",
          verdict=grad_verdict),
      evidence.row(
          "FFNet vs its ablation: accuracy for the same steps",
          "FFNet learns better than the same net without fast-forwarding: higher test accuracy",
          "better learning (abstract; no ablation number we can cite)",
          f"{summary(ff['test_accuracy_seeds'])} vs {summary(ab['test_accuracy_seeds'])}; paired "
          f"difference {evidence.format_summary(acc, 100, unit=' pts')} ({ff['params']:,} vs "
          f"{ab['params']:,} params)",
          scale=scale, setting=setting, verdict=acc_verdict),
      evidence.row(
          "FFNet vs the baseline ResNet (context)",
          "FFNet beats 4x-18x larger nets (GoogLeNet, CaffeNet: not run here)",
          "better than GoogLeNet / CaffeNet",
          f"FFNet {summary(ff['test_accuracy_seeds'])} ({ff['params']:,} params) vs ResNet-"
          f"{cfg['resnet_depth']} {summary(rn['test_accuracy_seeds'])} ({rn['params']:,} "
          "params), as context",
          scale=scale, setting=setting,
          verdict=evidence.not_testable("needs GoogLeNet and CaffeNet on the paper's data")),
  ]


if __name__ == "__main__":
  common.main(sys.modules[__name__])
