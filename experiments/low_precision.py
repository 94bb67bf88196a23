"""Limited-precision training: 16-bit fixed point (Gupta et al. 2015) and FP8 (Wang et al. 2018).

    python -m experiments.low_precision --workdir=runs/low_precision --quick

Runs, all with the same initialisation seed, data order and plain SGD at a small constant learning
rate (full setting: 0.01 for all, the regime where round-to-nearest fails; quick: see below):

* `float32`: the reference.
* `fixed16_fl<FL>_<nearest|stochastic>` for FL in 8, 10, 12, 14: Gupta's setting. Weights, biases,
  layer inputs (activations) and back-propagated gradients (error gradients dL/dy, dL/dx and weight
  gradients dL/dW, see `QuantConfig.gradients`) of every Dense/Conv layer are rounded to 16-bit
  fixed point `FixedPoint(IL, FL)` in the forward and backward passes (`fastnets.nn.quantized`,
  entered inside the loss function); the weight update keeps the parameters in their format
  (`low_precision_updates`: w <- Q(w - lr * g)); the parameters start in it (the kernel
  initialiser rounds). One rounding mode per run for everything. Multiply-accumulates run in
  float32 and their results are rounded as the next layer's input (Gupta's MACC accumulates at
  full width). The logits and the loss stay in float32.
* `fp8`: Wang's recipe. Middle layers: FP8 (1-5-2, `FP8_E5M2`) weights, activations and gradients
  (round to nearest), matmuls accumulated in FP16 (1-6-9, `FP16_WANG`) in chunks of 64
  (`chunked_dot`). First and last layers in 16 bits (FP16 1-6-9 operands and gradients).
  Master weights in FP16 1-6-9, updated with stochastic rounding. Optional loss scaling.

Integer bits (how they are chosen): a 16-bit word has IL + FL = 16, so a run's FL fixes
IL = 16 - FL, and FL = 14 leaves [-2, 2), which the hidden activations exceed. Each tensor therefore
gets IL_t = max(16 - FL, IL_needed_t), FL_t = 16 - IL_t, where IL_needed_t = 1 (sign) +
ceil(log2(headroom * max|t|)) is measured on the float32 run: max|.| of each layer's input, kernel,
bias, and of its gradients (dL/dy, dL/dx, dL/dW; one format for the three), on one training batch,
at the initial and at the final float32 parameters (headroom 2). So a run's FL is exact for every
tensor whose values fit in 16 - FL integer bits (in the quick setting: all weights, biases and
gradients at every FL, and the activations at FL <= 10); tensors with larger values get the integer
bits they need and correspondingly fewer fraction bits (recorded in results.json, `formats`).
Gupta used one <IL, FL> for all tensors; this is the deviation that keeps FL = 14 from saturating.

Evaluation runs the quantised forward pass with round-to-nearest (weights are already in the
format; layer inputs are rounded), so the accuracies are those of the low-precision network.

Deviation from Wang (for CPU cost): chunked FP16 accumulation (`fp8_chunk_layers="middle"`) is
applied only to the FP8 middle layer(s), in the forward and both backward GEMMs; the 16-bit first
and last layers accumulate in float32. `chunked_dot` is an exact simulation, far slower than
a BLAS matmul on a CPU; `fp8_chunk_layers="all"` chunks every layer as Wang did.

Quick (the report's setting): bundled MNIST (7,000 train / 1,000 validation / 2,000 test), MLP
784-100-100-10 (Gupta's 784-1000-1000-10, narrowed), batch 100, 1,000 SGD steps (2,000 until the
main job had to fit 30 minutes), fraction bits 8 and 10 (the ones the claims name), three
evaluation seeds; every comparison is a paired per-seed difference of test accuracies. The numbers
are in results.json and the report.
Learning rates: each run (float32, every fixed-point run, FP8) uses its own rate from the
committed sweep `experiments/tuning/low_precision.json` (`python -m experiments.low_precision
--tune`: the same grid 0.003, 0.01, 0.03 around the earlier fixed 0.01 for every run, fixed
before the sweep, one tuning seed, validation accuracy only). Gupta compared the roundings at one
small rate; tuning each run instead asks whether round-to-nearest still loses when it gets its
best rate of the grid (the record shows which rate each run picked). When the sweep was run, test
numbers of the earlier setting (0.01 for all) had been seen.
Full (DEFAULTS): CIFAR-10 from tfds (`--data_dir`), the Caffe "cifar10 quick"-style CNN that Gupta
used (conv 5x5 32-32-64 with pooling, dense 64, 10), 20,000 steps.

Writes --workdir/results.json (metrics.<run>: test_accuracy (mean over seeds),
test_accuracy_per_seed, val_accuracy_per_seed, train_loss_per_seed, wall_time_s; `formats` per run
and layer; `ranges` from the float32 run; `history` per run) and
curves.png (validation accuracy against steps, final accuracy against FL).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import data, evidence, ops, train
from fastnets import nn as fnn
from fastnets.models.low_precision import LowPrecisionNet
from fastnets.ops import FP8_E5M2, FP16_WANG, FixedPoint, QuantConfig

from . import common

NAME = "low_precision"
DEFAULTS = {
    **common.TRAIN_DEFAULTS,
    "workdir": "runs/low_precision",
    "dataset": "cifar10",
    "model": "cnn",                  # "mlp" or "cnn"
    "features": [32, 32, 64],        # mlp: hidden widths; cnn: conv channels (5x5, 2x2 max-pool)
    "dense": 64,                     # cnn: width of the dense hidden layer
    "steps": 20000,
    "batch_size": 100,
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "schedule": "constant",
    "log_every": 500,
    "eval_every": 1000,
    "checkpoint_every": 0,           # > 0: each run checkpoints (and resumes) in workdir/<run>
    "word_bits": 16,              # fixed-point word length (Gupta: 16)
    "fraction_bits": [8, 10, 12, 14],  # FL values of the fixed-point sweep
    "roundings": ["nearest", "stochastic"],  # "nearest" and/or "stochastic"
    "range_headroom": 2.0,           # integer bits cover headroom * the measured max |value|
    "fp8": True,                  # also run Wang et al.'s FP8 recipe
    "fp8_chunk": 64,                 # Wang's chunk length
    "fp8_chunk_layers": "middle",    # "middle", "all" or "none": layers with chunked accumulation
    "fp8_loss_scale": 1.0,           # power of two; gradients are computed for loss * scale
    "rng": "hash",                   # random bits of stochastic rounding: "hash" or "jax"
    "seeds": [0, 1, 2],              # evaluation seeds (init, data order, rounding keys)
    "tuning_record": False,          # read per-run learning rates from tuning/low_precision.json
}
QUICK = {"dataset": "mnist_bundled", "model": "mlp", "features": [100, 100], "steps": 1000,
         "log_every": 200, "eval_every": 200, "fraction_bits": [8, 10], "tuning_record": True}
SMOKE = {"dataset": "mnist_bundled", "model": "mlp", "features": [16, 16], "steps": 3,
         "batch_size": 20, "log_every": 1, "eval_every": 0, "eval_batch_size": 500,
         "fraction_bits": [8], "seeds": [0]}
# The quick setting's sweep (`--tune`): the same grid and tuning seed for every run name.
TUNING_GRID = {"learning_rate": [0.003, 0.01, 0.03]}
PAPER = {
    "claim": "16-bit fixed point with stochastic rounding trains about as well as float32, and "
             "round-to-nearest fails at few fraction bits (Gupta et al. 2015); FP8 operands with "
             "FP16 chunked accumulation and stochastic weight updates match float32 "
             "(Wang et al. 2018)",
    "value": {"gupta_sr_fl10_gap": 0.01, "gupta_nearest_fl8_gap": 0.10, "wang_fp8_gap": 0.01},
    "source": "Gupta et al., ICML 2015, Fig. 1-2; Wang et al., NeurIPS 2018, Table 2",
}


# ---------------------------------------------------------------------------------------------
# Ranges and formats


def _max_abs(x) -> float:
  return float(jnp.max(jnp.abs(x))) if x.size else 0.0


def measure_ranges(model: nn.Module, params: Any, batch: dict) -> dict:
  """max |value| per layer of its input, kernel, bias and gradients (float32 forward/backward).

  Args:
    model: a LowPrecisionNet (float32).
    params: its "params".
    batch: {"image": (B, H, W, C) float32, "label": (B,) int32}; B should be the training batch
      size (the gradients of a mean loss scale with 1/B).

  Returns:
    {layer_name: {"inputs", "kernel", "bias", "gradients"}} of Python floats; "gradients" is the
    max over dL/dy (layer output), dL/dx (layer input) and dL/dW.
  """
  shapes = {}

  def probe(eps, acts):
    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != "__call__" or fnn.quantized_layer_kind(module) is None:
        return next_fun(*args, **kwargs)
      x = args[0] if eps is None else args[0] + eps[module.name]["in"]
      acts[module.name] = jnp.max(jnp.abs(x))
      y = next_fun(x, *args[1:], **kwargs)
      shapes[module.name] = {"in": x.shape, "out": y.shape}
      return y if eps is None else y + eps[module.name]["out"]
    return interceptor

  def loss(p, eps):
    acts = {}
    with nn.intercept_methods(probe(eps, acts)):
      logits = model.apply({"params": p}, batch["image"], train=True)
    return ops.cross_entropy_loss(logits, batch["label"]), acts

  with nn.intercept_methods(probe(None, {})):
    jax.eval_shape(lambda p: model.apply({"params": p}, batch["image"], train=True), params)
  eps = {n: {k: jnp.zeros(s, jnp.float32) for k, s in v.items()} for n, v in shapes.items()}
  (_, acts), (g_params, g_eps) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, eps)
  out = {}
  for name in shapes:
    out[name] = {
        "inputs": float(acts[name]),
        "kernel": _max_abs(params[name]["kernel"]),
        "bias": _max_abs(params[name]["bias"]),
        "gradients": max(_max_abs(g_eps[name]["in"]), _max_abs(g_eps[name]["out"]),
                         _max_abs(g_params[name]["kernel"])),
    }
  return out


def integer_bits_needed(max_abs: float, headroom: float) -> int:
  """Integer bits (sign included) of a two's-complement format holding +-headroom * max_abs."""
  span = headroom * max_abs
  return 1 + (max(0, math.ceil(math.log2(span))) if span > 0 else 0)


def fixed_format(fraction_bits: int, max_abs: float, word_bits: int, headroom: float) -> FixedPoint:
  """FixedPoint(IL, word - IL), IL = max(word - fraction_bits, integer_bits_needed(max_abs))."""
  il = min(max(word_bits - fraction_bits, integer_bits_needed(max_abs, headroom)), word_bits)
  return FixedPoint(il, word_bits - il)


def _path_layer(path) -> tuple[str, str]:
  names = [getattr(p, "key", str(p)) for p in path]
  return str(names[-2]), str(names[-1])


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (bound methods in modules)
class Recipe:
  """Everything one low-precision run needs: per-layer QuantConfigs and parameter formats."""
  layer_configs: dict        # layer name -> QuantConfig (training)
  param_formats: dict        # (layer name, "kernel" | "bias") -> format
  loss_scale: float = 1.0

  def select(self, module):
    return self.layer_configs.get(module.name)

  def eval_select(self, module):
    cfg = self.layer_configs.get(module.name)
    if cfg is None:
      return None
    return dataclasses.replace(cfg, gradients=None, mode="nearest", grad_mode="nearest")

  def param_format(self, path, leaf):
    del leaf
    return self.param_formats.get(_path_layer(path))

  def kernel_formats(self, num_layers: int) -> tuple:
    return tuple(self.param_formats.get((f"layer{i}", "kernel")) for i in range(num_layers))

  def describe(self) -> dict:
    out = {}
    for name, cfg in sorted(self.layer_configs.items()):
      out[name] = {"weights": str(cfg.weights), "activations": str(cfg.activations),
                   "gradients": str(cfg.gradients), "accumulation": str(cfg.accumulation),
                   "chunk": cfg.chunk if cfg.accumulation is not None else None,
                   "mode": cfg.mode, "grad_mode": cfg.grad_mode,
                   "bias": str(self.param_formats.get((name, "bias")))}
    return out


def fixed_recipe(ranges: dict, fraction_bits: int, mode: str, word_bits: int, headroom: float,
                 rng: str = "hash") -> Recipe:
  """Gupta: every tensor of every layer in 16-bit fixed point, one rounding mode for all."""
  f = lambda m: fixed_format(fraction_bits, m, word_bits, headroom)
  layers, params = {}, {}
  for name, r in ranges.items():
    w = f(r["kernel"])
    layers[name] = QuantConfig(weights=w, activations=f(r["inputs"]), gradients=f(r["gradients"]),
                               mode=mode, grad_mode=mode, rng=rng)
    params[(name, "kernel")] = w
    params[(name, "bias")] = f(r["bias"])
  return Recipe(layers, params)


def fp8_recipe(layer_names: Sequence[str], chunk: int, chunk_layers: str, loss_scale: float,
               rng: str = "hash") -> Recipe:
  """Wang: FP8 (1-5-2) middle layers with FP16 (1-6-9) chunked accumulation, 16-bit ends."""
  names = sorted(layer_names, key=lambda n: int(n[len("layer"):]))
  layers, params = {}, {}
  for i, name in enumerate(names):
    edge = i in (0, len(names) - 1)
    chunked = chunk_layers == "all" or (chunk_layers == "middle" and not edge)
    op = FP16_WANG if edge else FP8_E5M2
    layers[name] = QuantConfig(weights=op, activations=op, gradients=op,
                               accumulation=FP16_WANG if chunked else None, chunk=chunk, rng=rng)
    params[(name, "kernel")] = FP16_WANG
    params[(name, "bias")] = FP16_WANG
  return Recipe(layers, params, loss_scale)


# ---------------------------------------------------------------------------------------------
# Training


def make_loss_fn(model: nn.Module, recipe: Recipe) -> train.steps.LossFn:
  """Cross-entropy of the model under `fastnets.nn.quantized`, entered inside the loss function.

  The stochastic-rounding key is the train step's rng (`fold_in(key(seed), step)`). With
  recipe.loss_scale = s != 1 the backward pass carries s * dL (so small FP8 gradients do not
  underflow) and the parameter gradients are divided by s again (exact for powers of two).
  """
  s = float(recipe.loss_scale)
  default = next(iter(recipe.layer_configs.values()))

  def loss_fn(params, model_state, batch, rng):
    p = ops.scale_grad(params, jnp.float32(1.0 / s)) if s != 1.0 else params
    with fnn.quantized(default, rng, select=recipe.select):
      logits = model.apply({"params": p, **model_state}, batch["image"], train=True)
    scaled = ops.scale_grad(logits, jnp.float32(s)) if s != 1.0 else logits
    loss = ops.cross_entropy_loss(scaled, batch["label"])
    return loss, (model_state, {"accuracy": ops.accuracy(logits, batch["label"])})

  return loss_fn


def _net(config: dict, num_classes: int, **kw) -> LowPrecisionNet:
  return LowPrecisionNet(num_classes=num_classes, kind=config["model"],
                         features=tuple(config["features"]), dense=config["dense"], **kw)


def _fit(model, dataset, config, run, **kw):
  workdir = config["workdir"] or None
  run_dir = os.path.join(workdir, run) if workdir and config["checkpoint_every"] else None
  return train.fit(model, dataset, common.train_config(config), run_dir,
                   run_info={"experiment": NAME, "run": run}, verbose=config.get("verbose", True),
                   **kw)


def run_names(config: dict) -> list[str]:
  names = ["float32"]
  names += [f"fixed{config['word_bits']}_fl{fl}_{mode}" for fl in config["fraction_bits"]
            for mode in config["roundings"]]
  return names + (["fp8"] if config["fp8"] else [])


def _ranges(model32, params, dataset, config, seed) -> dict:
  """Per-layer max |value| of the float32 net at its initial and at `params`, on one batch."""
  batch = next(data.train_batches(dataset, config["batch_size"], seed))
  init_key = train.init_key(seed)
  params0 = model32.init({"params": init_key, "dropout": init_key}, batch["image"][:1])["params"]
  r0 = measure_ranges(model32, params0, batch)
  r1 = measure_ranges(model32, params, batch)
  return {n: {k: max(r0[n][k], r1[n][k]) for k in r0[n]} for n in r0}


def _recipes(ranges: dict, config: dict) -> dict:
  """{run name: (recipe, update rounding mode)} of the fixed-point grid and FP8."""
  recipes = {}
  for fl in config["fraction_bits"]:
    for mode in config["roundings"]:
      recipes[f"fixed{config['word_bits']}_fl{fl}_{mode}"] = (
          fixed_recipe(ranges, fl, mode, config["word_bits"], config["range_headroom"],
                       config["rng"]), mode)
  if config["fp8"]:
    recipes["fp8"] = (fp8_recipe(list(ranges), config["fp8_chunk"], config["fp8_chunk_layers"],
                                 config["fp8_loss_scale"], config["rng"]), "stochastic")
  return recipes


def _fit_quantized(name: str, index: int, recipes: dict, num_layers: int, dataset, config):
  """Trains run `name` (the `index`-th recipe) with `config["seed"]`."""
  recipe, update_mode = recipes[name]
  seed = int(config["seed"])
  model = _net(config, dataset.num_classes, kernel_formats=recipe.kernel_formats(num_layers),
               eval_select=recipe.eval_select)
  wrapper = functools.partial(ops.low_precision_updates, fmt=recipe.param_format,
                              mode=update_mode, key=jax.random.key(seed + 1 + index),
                              rng=config["rng"])
  return _fit(model, dataset, config, f"{name}_seed{seed}", loss_fn=make_loss_fn(model, recipe),
              tx_wrapper=wrapper)


def tuning_arms(config: dict):
  """The sweep's arms (`common.tune_experiment`): validation accuracy of every run name.

  The fixed-point formats of the sweep come from a float32 run at the config's learning rate on
  the tuning seed (the evaluation runs measure them on their own float32 run), so every point of
  the grid of a quantised arm uses the same formats.
  """
  config = common.merge_config({**DEFAULTS, "verbose": False}, config,
                               {"workdir": "", "checkpoint_every": 0})
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  model32 = _net(config, dataset.num_classes)
  formats = {}  # tuning seed -> (recipes, number of layers)

  def recipes_for(view, seed):
    if seed not in formats:
      result = _fit(model32, view, {**config, "seed": seed}, "ranges")
      ranges = _ranges(model32, result.state.params, view, config, seed)
      formats[seed] = (_recipes(ranges, config), len(ranges))
    return formats[seed]

  def score_fn(name):
    def score(values, view, seed):
      cfg = {**config, **values, "seed": seed}
      if name == "float32":
        return _fit(model32, view, cfg, name).metrics["val_accuracy"]
      recipes, num_layers = recipes_for(view, seed)
      index = list(recipes).index(name)
      return _fit_quantized(name, index, recipes, num_layers, view, cfg).metrics["val_accuracy"]
    return score
  return {name: score_fn(name) for name in run_names(config)}, dataset


def run(config: dict) -> dict:
  """Trains float32, the fixed-point grid and FP8; returns the results record."""
  config = common.merge_config({**DEFAULTS, "verbose": True}, config)
  for mode in config["roundings"]:
    if mode not in ("nearest", "stochastic"):
      raise ValueError(f"roundings must hold 'nearest' and/or 'stochastic', got {mode!r}.")
  if config["fp8_chunk_layers"] not in ("middle", "all", "none"):
    raise ValueError(f"fp8_chunk_layers must be 'middle', 'all' or 'none', got "
                     f"{config['fp8_chunk_layers']!r}.")
  timer = common.Timer()
  dataset = data.load_dataset(config["dataset"], data_dir=config["data_dir"] or None)
  workdir = config["workdir"] or None
  metrics, histories, formats = {}, {}, {}

  seeds = [int(v) for v in config["seeds"]]
  per_seed: dict = {}

  def record(name, result, seed, recipe=None):
    m = result.metrics
    per_seed.setdefault(name, []).append({k: m[k] for k in (
        "test_accuracy", "val_accuracy", "val_loss", "train_loss", "steps", "steps_per_sec",
        "wall_time_s")})
    if seed == seeds[0]:
      histories[name] = result.history
    if recipe is not None:
      formats[name] = recipe.describe()
    print(f"[{NAME}] {name} seed {seed}: test accuracy {m['test_accuracy']:.4f} "
          f"({m['wall_time_s']:.1f} s)", flush=True)

  tuned, tuning = common.apply_tuning(sys.modules[__name__], config)
  arm = lambda name, seed: {**config, **tuned.get(name, {}), "seed": seed}
  model32 = _net(config, dataset.num_classes)
  recipes = ranges = None
  for seed in seeds:
    # float32 reference; the first seed's run also gives the value ranges that choose the
    # integer bits (the same formats for every seed).
    result32 = _fit(model32, dataset, arm("float32", seed), f"float32_seed{seed}")
    record("float32", result32, seed)
    if recipes is None:
      ranges = _ranges(model32, result32.state.params, dataset, config, seed)
      recipes = _recipes(ranges, config)
    for i, name in enumerate(recipes):
      result = _fit_quantized(name, i, recipes, len(ranges), dataset, arm(name, seed))
      record(name, result, seed, recipes[name][0])

  for name, runs in per_seed.items():
    metrics[name] = {
        "test_accuracy": sum(r["test_accuracy"] for r in runs) / len(runs),
        "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
        "val_accuracy_per_seed": [r["val_accuracy"] for r in runs],
        "train_loss_per_seed": [r["train_loss"] for r in runs],
        "wall_time_s": sum(r["wall_time_s"] for r in runs),
        "steps": runs[0]["steps"],
    }

  plots = {}
  if workdir:
    plots["curves"] = plot_curves(histories, metrics, config, os.path.join(workdir, "curves.png"))
  for name in metrics:
    metrics[name]["learning_rate"] = float(arm(name, 0)["learning_rate"])
  return common.write_results(workdir, NAME, config, metrics, PAPER, timer(), formats=formats,
                              ranges=ranges, history=histories, plots=plots,
                              dataset=dataset.name, **tuning)


def plot_curves(histories: dict, metrics: dict, config: dict, path: str) -> str:
  """Validation accuracy against steps (left) and final accuracy against FL (right), as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  fls = list(config["fraction_bits"])
  colors = {fl: f"C{i}" for i, fl in enumerate(fls)}
  for name, hist in histories.items():
    pts = [(h["step"], h["val_accuracy"]) for h in hist if "val_accuracy" in h]
    if not pts:
      continue
    if name == "float32":
      style = {"color": "k", "lw": 2}
    elif name == "fp8":
      style = {"color": "C6", "lw": 2}
    else:
      fl = int(name.split("_fl")[1].split("_")[0])
      style = {"color": colors[fl], "ls": "--" if name.endswith("nearest") else "-"}
    ax1.plot(*zip(*pts), marker=".", label=name, **style)
  ax1.set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1),
          title="accuracy curves (dashed: round-to-nearest)")
  ax1.legend(fontsize=7, ncol=2, loc="center right")
  word = config["word_bits"]
  for mode, marker in (("nearest", "s"), ("stochastic", "o")):
    pts = [(fl, metrics[f"fixed{word}_fl{fl}_{mode}"]["test_accuracy"]) for fl in fls
           if f"fixed{word}_fl{fl}_{mode}" in metrics]
    if pts:
      ax2.plot(*zip(*pts), marker=marker, label=f"fixed {word}-bit, {mode}")
  for name, color in (("float32", "k"), ("fp8", "C6")):
    if name in metrics:
      ax2.axhline(metrics[name]["test_accuracy"], color=color, ls=":", label=name)
  ax2.set(xlabel="fraction bits FL", ylabel="final test accuracy (mean over seeds)", ylim=(0, 1),
          title=f"{word}-bit fixed point, SGD lr {config['learning_rate']}")
  ax2.set_xticks(fls)
  ax2.legend(fontsize=8)
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  return common.save_figure(fig, path)


def report_rows(results: dict) -> list[dict]:
  """Gupta's two findings and Wang's, each a paired per-seed difference with its interval."""
  m, cfg = results["metrics"], results["config"]
  word = cfg["word_bits"]
  gaps = PAPER["value"]
  scale = "paper" if cfg["dataset"] == "cifar10" and cfg["steps"] >= 20000 else "proxy"
  setting = (f"{cfg['dataset']}, {cfg['model']} {cfg['features']}, {cfg['steps']} "
             f"{cfg['optimizer']} steps, batch {cfg['batch_size']}, seeds "
             f"{', '.join(str(v) for v in cfg['seeds'])}; "
             f"{common.tuning_text(results) or 'lr ' + str(cfg['learning_rate'])}")
  acc = lambda name: m[name]["test_accuracy_per_seed"] if name in m else None
  summary = lambda v: evidence.format_summary(evidence.summarize(v), 100)

  def compare(technique, claim, paper, a_name, b_name, threshold):
    a, b = acc(a_name), acc(b_name)
    if a is None or b is None:
      return evidence.row(technique, claim, paper, f"{a_name} or {b_name} not run", scale=scale,
                          setting=setting, verdict=f"{evidence.INCONCLUSIVE} (not run)")
    diff, verdict = evidence.judge_paired(a, b, threshold, "greater", scale=scale)
    return evidence.row(technique, claim, paper,
                        f"{a_name} {summary(a)} vs {b_name} {summary(b)}; paired difference "
                        f"{evidence.format_summary(diff, 100, unit=' pts')}",
                        scale=scale, setting=setting, verdict=verdict)

  return [
      compare("16-bit fixed point, stochastic rounding (Gupta 2015)",
              "with stochastic rounding, <IL, FL=10> 16-bit fixed point ends at most 1 point "
              "below float32",
              "SR at FL 10 ~ float32 (digits calibration: 3.5% vs 3.4% error)",
              f"fixed{word}_fl10_stochastic", "float32", -gaps["gupta_sr_fl10_gap"]),
      compare("16-bit fixed point, round-to-nearest (Gupta 2015)",
              "at a small learning rate, round-to-nearest at FL 8 ends at least 10 points below "
              "stochastic rounding at FL 8",
              "digits calibration: 76.4% vs 4.2% error",
              f"fixed{word}_fl8_stochastic", f"fixed{word}_fl8_nearest",
              gaps["gupta_nearest_fl8_gap"]),
      compare("FP8 training (Wang 2018)",
              "FP8 (1-5-2) operands, FP16 (1-6-9) chunk-64 accumulation, stochastic-rounding FP16 "
              "weight updates, 16-bit first/last layers: at most 1 point below float32 (chunking "
              "on middle layers only)",
              "within ~0.5% of FP32 (CIFAR-10, ImageNet)", "fp8", "float32",
              -gaps["wang_fp8_gap"]),
  ]


if __name__ == "__main__":
  common.main(sys.modules[__name__])
