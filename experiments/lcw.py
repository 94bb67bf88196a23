"""LCW generator (Knop, Mazur, Spurek, Tabor, Podolak 2020): a generator trained with the
Cramer-Wold distance instead of a discriminator, against the GAN and PacGAN2.

    python -m experiments.lcw --workdir=runs/lcw --quick      # the report's setting
    python -m experiments.lcw --workdir=runs/lcw              # the full setting (long)

The LCW generator maps Gaussian noise to data like a GAN generator, but trains with a closed-form
kernel distance, no adversary: (1) a Cramer-Wold autoencoder (`models.MLPAutoencoder`, cost
`train.lcw.autoencoder_loss`: reconstruction + log d_cw^2(codes, N(0, I))), then (2) the latent
trick: a generator from noise to the code space trained with d_cw^2(G(noise), codes of the
training data) (`train.lcw.make_latent_generator_step`); samples are decoded. Both phases run in
the GAN loop (`train.gan.train_gan`), all seeds of an arm `vmap`ped in one program.

Tasks (the issue's; metrics as `experiments/pacgan.py`):

- **2-D ring (8 modes) and grid (25 modes)**: GAN and PacGAN2 are `experiments.pacgan.run` with
  the same steps, widths and data (seed s draws the same points for every arm); LCW is the same
  `MLPGenerator` trained with d_cw^2 against the data batch. In two dimensions the data space is
  its own latent space, so phase 1 is the identity and LCW is the paper's data-space Cramer-Wold
  generator. Modes, high-quality fraction and reverse KL on 2,500 samples (`ops.gan_metrics`).
- **bundled MNIST**: LCW, the CWAE itself (decoder of N(0, I) codes) and a GAN whose generator is
  the LCW decoder (`models.MLPDecoder`) with a maxout discriminator, each trained for the config's
  steps. Each arm's `eval_samples` samples are compared with the 2,000 test digits by the Frechet
  distance (`ops.frechet_distance`) in the pooled-feature space of a `PoolingCNN` trained on the
  training split (seed `classifier_seed`, not an evaluation seed). FID proper needs the
  Inception-v3 network, which cannot be downloaded here: these values are not comparable with
  published FIDs, only with each other. `real_frechet_distance`: 2,000 training digits against
  the test digits (the floor a perfect generator reaches at this sample size). The classifier's
  digit predictions also give the number of digit classes generated and the KL of that histogram
  to uniform.
- **stacked MNIST** (`stacked_mnist=True`, the full setting; too slow for the report on a CPU):
  LCW with a 24-d code (the authors' setting) against `experiments.pacgan`'s DCGAN and PacDCGAN2
  (its stacked-MNIST task), modes out of 1,000 and KL to uniform on `sm_eval_samples` samples.

QUICK (the report's): the synthetic arms at `steps` = 500 (1,000, and MNIST phases of 300-800
steps, until the main job had to fit 30 minutes; PacGAN's quick widths: G 64 x 4, D 64 x 5 maxout;
the GANs keep `experiments/pacgan.py`'s quick learning rate), MNIST phase steps of a few hundred, 3
seeds. Nothing was tuned (see `TUNING`): the LCW settings are the authors' (code
gmum/lcw-generator: Adam, learning rates 1e-3 for the autoencoder, 5e-4 for the generators, batch
128 / 256, code dimension 8, latent generator 5 x 512, closed-form Cramer-Wold kernel), with
narrower networks and far fewer steps.

The numbers are in results.json and docs/RESULTS.md. All three tasks are short-run proxies: the
GANs are far from the paper's 400,000 steps.

Writes --workdir/results.json, samples_<ring|grid>.png and samples_mnist.png.
"""

import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastnets import data, evidence, models, ops
from fastnets.data import synthetic
from fastnets.nn.packing import Packed
from fastnets.train import gan as gan_train
from fastnets.train import init_train_state
from fastnets.train import lcw as lcw_train

from . import common, pacgan

NAME = "lcw"

# The synthetic GAN settings are experiments/pacgan.py's (same keys, passed through to its run).
_PACGAN_KEYS = ("datasets", "steps", "batch_size", "gen_hidden", "gen_depth", "disc_hidden",
                "disc_pieces", "disc_depth", "learning_rate", "lr_schedule", "beta1",
                "num_points", "eval_samples", "chunk_size")
DEFAULTS = {
    "workdir": "runs/lcw",
    "seeds": 5,                     # runs per arm and task (seeds seed, seed + 1, ...)
    "seed": 0,                      # first seed; runs use seed, seed + 1, ...
    "verbose": True,                # print progress
    # The 2-D settings (_PACGAN_KEYS): experiments/pacgan.py's defaults, passed through to its run.
    "datasets": pacgan.DEFAULTS["datasets"],        # 2-D: "ring" (8 modes) and/or "grid" (25)
    "steps": pacgan.DEFAULTS["steps"],              # 2-D: training steps of every arm
    "batch_size": pacgan.DEFAULTS["batch_size"],    # 2-D: GAN packs / LCW points per step
    "gen_hidden": pacgan.DEFAULTS["gen_hidden"],    # 2-D generator (all arms): hidden width
    "gen_depth": pacgan.DEFAULTS["gen_depth"],      # 2-D generator (all arms): hidden layers
    "disc_hidden": pacgan.DEFAULTS["disc_hidden"],  # 2-D discriminator: maxout units per layer
    "disc_pieces": pacgan.DEFAULTS["disc_pieces"],  # discriminators: linear pieces per maxout unit
    "disc_depth": pacgan.DEFAULTS["disc_depth"],    # discriminators: maxout layers before the logit
    "learning_rate": pacgan.DEFAULTS["learning_rate"],  # 2-D GAN arms: Adam learning rate
    "lr_schedule": pacgan.DEFAULTS["lr_schedule"],  # 2-D, all arms: "constant" or "cosine" (to 5%)
    "beta1": pacgan.DEFAULTS["beta1"],              # 2-D GAN arms: Adam beta1 (both nets)
    "num_points": pacgan.DEFAULTS["num_points"],    # 2-D: training points drawn per run
    "eval_samples": pacgan.DEFAULTS["eval_samples"],  # 2-D: samples per run for the mode metrics
    "chunk_size": pacgan.DEFAULTS["chunk_size"],    # 2-D: training steps per lax.scan chunk
    "gan_degrees": [1, 2],          # the GAN arms on ring and grid: GAN, PacGAN2
    # LCW on the 2-D sets: the same generator as the GANs, trained with d_cw^2.
    "lcw_learning_rate": 5e-4,      # the authors' cwg / latent generator rate
    "cw_approximate": True,         # the authors' code: closed-form kernel in every dimension
    # MNIST.
    "mnist": True,                  # run the MNIST task (LCW, CWAE and GAN; Frechet distance)
    "dataset": "mnist_bundled",
    "latent_dim": 8,                # MNIST: code dimension of the autoencoder and latent generator
    "ae_hidden": 256,               # autoencoder (= the MNIST GAN's generator): hidden width
    "ae_depth": 3,                  # autoencoder: hidden layers of the encoder and of the decoder
    "ae_steps": 20_000,             # MNIST: autoencoder (phase 1) training steps
    "ae_batch_size": 128,           # autoencoder: batch size
    "ae_learning_rate": 1e-3,       # autoencoder: Adam learning rate
    "reconstruction": "mse",        # "mse" (CWAE) or "cw" (the paper's CW2)
    "normality_weight": 1.0,        # autoencoder: weight of the log d_cw^2(codes, N(0, I)) term
    "lg_hidden": 512,               # latent generator: hidden width
    "lg_depth": 5,                  # latent generator: hidden layers
    "lg_steps": 20_000,             # MNIST: latent generator (phase 2) training steps
    "lg_batch_size": 256,           # latent generator: batch size
    "lg_learning_rate": 5e-4,       # latent generator: Adam learning rate
    "gan_steps": 20_000,            # MNIST GAN: training steps
    "gan_batch_size": 128,          # MNIST GAN: batch size
    "gan_learning_rate": 2e-4,      # MNIST GAN: Adam learning rate (both nets)
    "gan_beta1": 0.5,               # MNIST GAN: Adam beta1 (both nets)
    "gan_disc_hidden": 128,         # MNIST GAN: discriminator maxout units per layer
    "mnist_eval_samples": 2000,     # MNIST: samples per arm and seed for the Frechet distance
    "mnist_chunk_size": 500,        # MNIST and stacked MNIST: training steps per lax.scan chunk
    "classifier_steps": 600,        # steps of the MNIST feature and stacked-MNIST digit classifiers
    "classifier_channels": [16, 32],  # MNIST feature classifier (PoolingCNN): conv channels
    "classifier_seed": 100,         # MNIST feature classifier's seed (not an evaluation seed)
    # Stacked MNIST (GAN arms: experiments.pacgan's stacked task).
    "stacked_mnist": True,          # run the stacked-MNIST task (LCW vs DCGAN, PacDCGAN2; slow)
    "sm_latent_dim": 24,            # stacked MNIST: LCW code dimension
    "sm_steps": 100_000,            # stacked MNIST: steps of each LCW phase and of each GAN
    "sm_num_examples": 128_000,     # stacked MNIST: fixed stacks of 3 digits to train on
    "sm_eval_samples": 26_000,      # stacked MNIST: generated stacks classified per run
    "sm_features": 32,              # stacked MNIST: the GAN arms' DCGAN base width f
}
QUICK = {"seeds": 3, "steps": 500, "gen_hidden": pacgan.QUICK["gen_hidden"],
         "disc_hidden": pacgan.QUICK["disc_hidden"],
         "learning_rate": pacgan.QUICK["learning_rate"],
         "lr_schedule": pacgan.QUICK["lr_schedule"],
         "ae_hidden": 128, "ae_depth": 2, "ae_steps": 250, "lg_hidden": 128, "lg_depth": 3,
         "lg_steps": 250, "gan_steps": 400, "gan_disc_hidden": 64,
         "classifier_steps": 200, "stacked_mnist": False}
SMOKE = {"seeds": 1, "steps": 4, "datasets": ["ring"], "gan_degrees": [1], "chunk_size": 2,
         "gen_hidden": 8, "gen_depth": 2,
         "disc_hidden": 8, "disc_pieces": 2, "disc_depth": 2, "num_points": 1000,
         "eval_samples": 200, "verbose": False, "ae_hidden": 8, "ae_depth": 1, "ae_steps": 2,
         "ae_batch_size": 16, "lg_hidden": 8, "lg_depth": 1, "lg_steps": 2, "lg_batch_size": 16,
         "gan_steps": 2, "gan_batch_size": 16, "gan_disc_hidden": 8, "mnist_eval_samples": 64,
         "mnist_chunk_size": 2, "classifier_steps": 2, "classifier_channels": [4, 8],
         "stacked_mnist": False}

PAPER = {
    "claim": "the LCW generator (a Cramer-Wold autoencoder, then a latent generator trained with "
             "the Cramer-Wold distance, no discriminator) gives very competitive FID and does not "
             "collapse modes",
    "value": "FID: 'very competitive' (abstract; the paper's FID tables are not in our digest). "
             "Baselines beside ours: PacGAN Table 1 (GAN, PacGAN2 on ring and grid, 10 runs)",
    "source": "Knop, Mazur, Spurek, Tabor, Podolak, Generative models with kernel distance in "
              "data space, arXiv:2009.07327 (code gmum/lcw-generator); Lin et al. 2018, Table 1",
    "target": "fastnets: LCW covers at least as many modes as the GAN on ring and grid with fewer "
              "runs that collapse; on MNIST a lower Frechet distance (classifier features) than "
              "the GAN",
}
TUNING = {"note": "not tuned: the LCW optimizer settings, code dimension, batch sizes and the "
                  "closed-form kernel are the authors' (gmum/lcw-generator reproduce scripts), "
                  "fixed before any run; the GAN arms reuse experiments/pacgan.py's settings (its "
                  "quick learning rate has its own note there) and, on MNIST, DCGAN's Adam "
                  "(2e-4, beta1 0.5); the QUICK step counts and widths were set by the time "
                  "budget alone (a first quick run at 2,000 synthetic steps, 600 + 600 LCW and "
                  "1,200 GAN steps on MNIST took 7 min 51 s on 2 CPU cores at load average 11, "
                  "one at 1,500 / 500 + 500 / 1,000 steps 6 min 7 s at load 9; the step counts "
                  "were cut for the time budget each time, every arm alike). On ring and grid "
                  "LCW follows the GAN arms' learning-rate schedule (cosine in QUICK). No "
                  "validation or test number chose anything.",
          "pacgan_quick": pacgan.QUICK_TUNING}
MNIST_ARMS = ("GAN", "CWAE", "LCW")


def _say(config, msg):
  if config["verbose"]:
    print(f"[{NAME}] {msg}", flush=True)


def _replicated(fn, keys):
  return jax.jit(jax.vmap(fn))(keys)


# ---- 2-D ring and grid

def _lcw_synthetic(config, datasets):
  """LCW (data-space Cramer-Wold generator) on every (dataset, seed) run in one vmapped program;
  the same generator, noise, batch, data and keys per seed as experiments.pacgan."""
  generator = models.MLPGenerator(hidden=config["gen_hidden"], depth=config["gen_depth"])
  tx = optax.adam(optax.cosine_decay_schedule(config["lcw_learning_rate"], config["steps"],
                                              alpha=0.05)
                  if config["lr_schedule"] == "cosine" else config["lcw_learning_rate"])
  runs, (init_keys, train_keys, eval_keys), points = pacgan.replica_runs(config, datasets)
  states = _replicated(lambda k: init_train_state(generator, tx, k, jnp.zeros((2, 2))),
                       init_keys)
  step = lcw_train.make_latent_generator_step(generator, tx, config["batch_size"], 2,
                                              approximate=config["cw_approximate"])
  timer = common.Timer()
  states, _ = gan_train.train_gan(step, states, jnp.asarray(points), train_keys,
                                  config["steps"], chunk_size=config["chunk_size"],
                                  replicas=len(runs), label="LCW", verbose=config["verbose"])
  train_time = timer()
  samples = np.asarray(jax.jit(jax.vmap(lambda st, k: lcw_train.generate_latents(
      generator, st, k, config["eval_samples"], 2)))(states, eval_keys))
  out = []
  for (d, s), x in zip(runs, samples):
    ds = datasets[d]
    m = jax.device_get(ops.mode_collapse_metrics(x, ds.means, ds.std))
    out.append({"variant": "LCW", "dataset": ds.name, "seed": s, "modes": int(m["modes"]),
                "high_quality": float(m["high_quality"]), "reverse_kl": float(m["reverse_kl"])})
  return out, samples, runs, train_time


def _summaries(runs, dataset, variant, num_modes):
  mine = sorted((r for r in runs if r["dataset"] == dataset and r["variant"] == variant),
                key=lambda r: r["seed"])
  entry = {}
  for key in ("modes", "high_quality", "reverse_kl"):
    values = [r[key] for r in mine]
    finite = [v for v in values if np.isfinite(v)]
    entry[key] = statistics.fmean(finite) if finite else float("nan")
    entry[f"{key}_per_seed"] = values
    entry[f"{key}_summary"] = evidence.summarize(finite)
  entry["collapsed_runs"] = sum(r["modes"] < num_modes for r in mine)
  entry["runs"] = len(mine)
  return entry


def _run_synthetic(config):
  datasets = [synthetic.load_synthetic(name, seed=config["seed"], num_points=10)
              for name in config["datasets"]]
  _say(config, "2-D: GAN and PacGAN2 (experiments.pacgan) ...")
  gan_cfg = {k: config[k] for k in _PACGAN_KEYS}
  gan_cfg.update(degrees=list(config["gan_degrees"]), seeds=config["seeds"],
                 seed=config["seed"], checkpoint_every=0, verbose=config["verbose"],
                 workdir=os.path.join(config["workdir"], "pacgan") if config["workdir"] else "")
  gan_results = pacgan.run(gan_cfg)
  runs = [{k: r[k] for k in ("variant", "dataset", "seed", "modes", "high_quality",
                             "reverse_kl")} for r in gan_results["runs"]]
  _say(config, "2-D: LCW ...")
  lcw_runs, samples, run_ids, lcw_time = _lcw_synthetic(config, datasets)
  runs += lcw_runs
  arms = [pacgan.variant_name(m) for m in config["gan_degrees"]] + ["LCW"]
  metrics = {}
  for ds in datasets:
    metrics[ds.name] = {v: _summaries(runs, ds.name, v, ds.num_modes) for v in arms}
  timing = {**gan_results["metrics"]["timing"], "LCW": {"train_time_s": lcw_time}}
  plots = {}
  if config["workdir"]:
    for d, ds in enumerate(datasets):
      first = run_ids.index((d, config["seed"]))
      stats = next(r for r in lcw_runs if r["dataset"] == ds.name and r["seed"] == config["seed"])
      path = os.path.join(config["workdir"], f"samples_{ds.name}.png")
      plots[f"samples_{ds.name}"] = pacgan.plot_samples(path, ds, {"LCW": (samples[first],
                                                                          stats)})
  return metrics, runs, timing, plots


# ---- MNIST

def _train_images(dataset):
  images, _ = dataset.train.get(np.arange(len(dataset.train)))
  return synthetic.to_tanh_range(images).reshape((len(images), -1))


def _feature_classifier(config, dataset):
  """PoolingCNN trained on the training split: (apply(images in [-1, 1], flat) -> (features,
  predicted digits), its test accuracy)."""
  model = models.PoolingCNN(num_classes=dataset.num_classes, head="gap",
                            channels=tuple(config["classifier_channels"]))
  tcfg = common.train_config({**common.TRAIN_DEFAULTS, "steps": config["classifier_steps"],
                              "batch_size": 128, "learning_rate": 2e-3, "checkpoint_every": 0,
                              "log_every": max(config["classifier_steps"], 1)})
  out = common.train_seeds(model, dataset, tcfg, [config["classifier_seed"]])
  st = out["state"]
  variables = {"params": st.params, **st.model_state}
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  shape = dataset.image_shape

  @jax.jit
  def apply(flat):
    unit = (flat.reshape((-1,) + tuple(shape)) + 1.0) * 0.5
    logits, feats = model.apply(variables, (unit - mean) / std, return_features=True)
    return feats, jnp.argmax(logits, -1)

  return apply, out["test_accuracy"][0]


def _features(apply, flat, chunk=1000):
  parts = [apply(jnp.asarray(flat[i:i + chunk])) for i in range(0, flat.shape[0], chunk)]
  return (np.concatenate([np.asarray(p[0]) for p in parts]),
          np.concatenate([np.asarray(p[1]) for p in parts]))


def _train_lcw(config, data, examples, num_examples, sample_shape, seeds, latent_dim, steps_ae,
               steps_lg, label, real_sampler=gan_train.uniform_real_sampler):
  """Both LCW phases for every seed (vmapped replicas).

  `data` is what `real_sampler` draws training batches from (shared by the seeds); `examples(a,
  b)` returns training examples a..b-1 in order, which phase 2 encodes (all `num_examples`).
  Returns (autoencoder, latent generator, their states with a leading seed axis, wall time).
  """
  ae = models.MLPAutoencoder(sample_shape=sample_shape, latent_dim=latent_dim,
                             hidden=config["ae_hidden"], depth=config["ae_depth"])
  gen = models.latent_generator(latent_dim, config["lg_hidden"], config["lg_depth"])
  ae_tx = optax.adam(config["ae_learning_rate"])
  lg_tx = optax.adam(config["lg_learning_rate"])
  keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 7) for s in seeds])
  k_ae, k_lg, k_train_ae, k_train_lg = (jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
                                        for i in range(4))
  n = len(seeds)
  timer = common.Timer()
  ae_states = _replicated(lambda k: init_train_state(
      ae, ae_tx, k, jnp.zeros((2,) + tuple(sample_shape))), k_ae)
  step = lcw_train.make_autoencoder_step(ae, ae_tx, config["ae_batch_size"],
                                         config["reconstruction"], config["normality_weight"],
                                         approximate=config["cw_approximate"],
                                         real_sampler=real_sampler)
  data_r = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (n,) + a.shape), data)
  ae_states, _ = gan_train.train_gan(step, ae_states, data_r, k_train_ae, steps_ae,
                                     chunk_size=config["mnist_chunk_size"], replicas=n,
                                     label=f"{label} autoencoder", verbose=config["verbose"])
  encode = jax.jit(jax.vmap(lambda st, x: lcw_train.encode(ae, st, x), in_axes=(0, None)))
  chunk = 2000
  codes = jnp.concatenate([encode(ae_states, jnp.asarray(examples(a, min(a + chunk,
                                                                          num_examples))))
                           for a in range(0, num_examples, chunk)], axis=1)
  lg_states = _replicated(lambda k: init_train_state(gen, lg_tx, k, jnp.zeros((2, latent_dim))),
                          k_lg)
  step = lcw_train.make_latent_generator_step(gen, lg_tx, config["lg_batch_size"], latent_dim,
                                              approximate=config["cw_approximate"])
  lg_states, _ = gan_train.train_gan(step, lg_states, codes, k_train_lg, steps_lg,
                                     chunk_size=config["mnist_chunk_size"], replicas=n,
                                     label=f"{label} latent generator",
                                     verbose=config["verbose"])
  return ae, gen, ae_states, lg_states, timer()


def _mnist_samples(config, images, seeds):
  """(arm -> (seeds, eval_samples, 784) samples in [-1, 1], timings)."""
  n_eval, latent = config["mnist_eval_samples"], config["latent_dim"]
  ae, gen, ae_states, lg_states, lcw_time = _train_lcw(
      config, images, lambda a, b: images[a:b], images.shape[0], (images.shape[1],), seeds,
      latent, config["ae_steps"], config["lg_steps"], "LCW")
  eval_keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 99) for s in seeds])
  lcw = jax.jit(jax.vmap(lambda a, g, k: lcw_train.lcw_sample(ae, a, gen, g, k, n_eval, latent)))
  cwae = jax.jit(jax.vmap(lambda a, k: lcw_train.decode(
      ae, a, gan_train.sample_noise(k, (n_eval, latent)))))
  samples = {"LCW": np.asarray(lcw(ae_states, lg_states, eval_keys)),
             "CWAE": np.asarray(cwae(ae_states, eval_keys))}
  # The GAN: the LCW decoder as generator, a maxout discriminator, DCGAN's Adam.
  gan_cfg = gan_train.GANConfig(batch_size=config["gan_batch_size"], z_dim=latent,
                                learning_rate=config["gan_learning_rate"],
                                beta1=config["gan_beta1"])
  generator = models.MLPDecoder(sample_shape=(images.shape[1],), hidden=config["ae_hidden"],
                                depth=config["ae_depth"])
  disc = Packed(models.MaxoutDiscriminator(hidden=config["gan_disc_hidden"],
                                           pieces=config["disc_pieces"],
                                           depth=config["disc_depth"]), degree=1)
  keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 11) for s in seeds])
  timer = common.Timer()
  states = _replicated(lambda k: gan_train.init_gan_state(generator, disc, gan_cfg, k,
                                                          (images.shape[1],)), keys)
  data_r = jnp.broadcast_to(jnp.asarray(images), (len(seeds),) + images.shape)
  states, _ = gan_train.train_gan(gan_train.make_gan_step(generator, disc, gan_cfg), states,
                                  data_r, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
                                  config["gan_steps"], chunk_size=config["mnist_chunk_size"],
                                  replicas=len(seeds), label="MNIST GAN",
                                  verbose=config["verbose"])
  gan_time = timer()
  samples["GAN"] = np.asarray(jax.jit(jax.vmap(lambda st, k: gan_train.generate(
      generator, st, k, n_eval, gan_cfg)))(states, eval_keys))
  return samples, {"LCW": lcw_time, "GAN": gan_time}


def _plot_digits(path, samples):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.4), squeeze=False)
  for ax, (name, x) in zip(axes[0], samples.items()):
    grid = (x[:64].reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(8 * 28, 8 * 28) + 1) / 2
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set(title=name, xticks=[], yticks=[])
  fig.suptitle("MNIST samples of the first seed")
  return common.save_figure(fig, path)


def _run_mnist(config, seeds):
  dataset = data.load_dataset(config["dataset"])
  images = _train_images(dataset)
  apply, clf_acc = _feature_classifier(config, dataset)
  _say(config, f"MNIST feature classifier: test accuracy {100 * clf_acc:.2f}%")
  test_images, _ = dataset.test.get(np.arange(len(dataset.test)))
  test_feats, _ = _features(apply, synthetic.to_tanh_range(test_images).reshape(
      (len(test_images), -1)))
  real_feats, _ = _features(apply, images[:len(test_images)])
  samples, timing = _mnist_samples(config, images, seeds)
  metrics = {"classifier_test_accuracy": clf_acc,
             "real_frechet_distance": float(ops.frechet_distance(real_feats, test_feats))}
  for arm in MNIST_ARMS:
    fds, kls, classes = [], [], []
    for x in samples[arm]:
      feats, digits = _features(apply, x)
      fds.append(float(ops.frechet_distance(feats, test_feats)))
      counts = np.bincount(digits, minlength=10)
      kls.append(float(ops.reverse_kl_to_uniform(counts)))
      classes.append(int(np.sum(counts > 0)))
    metrics[arm] = {"frechet_distance": statistics.fmean(fds), "frechet_distance_per_seed": fds,
                    "frechet_distance_summary": evidence.summarize(fds),
                    "digit_kl": statistics.fmean(kls), "digit_kl_per_seed": kls,
                    "digit_classes_per_seed": classes}
    _say(config, f"MNIST {arm}: Frechet distance "
                 f"{evidence.format_summary(evidence.summarize(fds))}, digit KL "
                 f"{statistics.fmean(kls):.3f}")
  plots = {}
  if config["workdir"]:
    plots["samples_mnist"] = _plot_digits(os.path.join(config["workdir"], "samples_mnist.png"),
                                          {a: samples[a][0] for a in MNIST_ARMS})
  return metrics, timing, plots


# ---- stacked MNIST

_SM_NAMES = {"DCGAN": "GAN", "PacDCGAN2": "PacGAN2"}


def _run_stacked_mnist(config, seeds):
  """LCW on stacked MNIST against experiments.pacgan's DCGAN and PacDCGAN2 (same stacks)."""
  gan_cfg = {"task": "stacked_mnist", "seed": config["seed"], "sm_seeds": len(seeds),
             "sm_degrees": [1, 2], "sm_steps": config["sm_steps"],
             "sm_num_examples": config["sm_num_examples"],
             "sm_eval_samples": config["sm_eval_samples"], "sm_features": config["sm_features"],
             "classifier_steps": config["classifier_steps"], "checkpoint_every": 0,
             "chunk_size": config["mnist_chunk_size"], "verbose": config["verbose"],
             "workdir": os.path.join(config["workdir"], "pacgan_smnist")
             if config["workdir"] else ""}
  gan_results = pacgan.run(gan_cfg)
  classifier, variables, mnist, _ = gan_train.train_digit_classifier(
      steps=config["classifier_steps"], seed=config["seed"])
  stacks = synthetic.make_stacked_mnist(seed=config["seed"],
                                        num_examples=config["sm_num_examples"], dataset=mnist)
  data_sm = {"digits": synthetic.to_tanh_range(stacks.digits), "index": stacks.index}

  def examples(a, b):  # stacks a..b-1: (b - a, 28, 28, 3) in [-1, 1]
    return np.moveaxis(data_sm["digits"][stacks.index[a:b]][..., 0], 1, -1)

  ae, gen, ae_states, lg_states, _ = _train_lcw(
      config, data_sm, examples, stacks.index.shape[0], (28, 28, 3), seeds,
      config["sm_latent_dim"], config["sm_steps"], config["sm_steps"], "stacked LCW",
      real_sampler=pacgan.stacked_sampler)
  # Named as the results schema asks: GAN / PacGAN2 (experiments.pacgan: DCGAN / PacDCGAN2).
  runs = [{"variant": _SM_NAMES[r["variant"]], "seed": r["seed"], "modes": r["modes"],
           "reverse_kl": r["reverse_kl"]} for r in gan_results["runs"]]
  sample = jax.jit(lambda a, g, k: lcw_train.lcw_sample(ae, a, gen, g, k, 1000,
                                                        config["sm_latent_dim"]))
  for i, s in enumerate(seeds):
    a, g = jax.tree.map(lambda v: v[i], ae_states), jax.tree.map(lambda v: v[i], lg_states)
    n = config["sm_eval_samples"]
    x = np.concatenate([np.asarray(sample(a, g, jax.random.fold_in(jax.random.key(s), 100 + j)))
                        for j in range(-(-n // 1000))])[:n]
    m = jax.device_get(ops.stacked_mnist_metrics(
        gan_train.classify_channels(classifier, variables, mnist, x)))
    runs.append({"variant": "LCW", "seed": s, "modes": int(m["modes"]),
                 "reverse_kl": float(m["reverse_kl"])})
  metrics = {}
  for variant in ("GAN", "PacGAN2", "LCW"):
    mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
    metrics[variant] = {k: statistics.fmean(r[k] for r in mine) for k in ("modes", "reverse_kl")}
    metrics[variant].update({f"{k}_per_seed": [r[k] for r in mine]
                             for k in ("modes", "reverse_kl")})
  return metrics, runs


def run(config: dict) -> dict:
  config = common.merge_config(DEFAULTS, config)
  if config["seeds"] < 1:
    raise ValueError(f"seeds must be >= 1, got {config['seeds']}.")
  timer = common.Timer()
  seeds = [config["seed"] + s for s in range(config["seeds"])]
  metrics, plots = {}, {}
  synth_metrics, runs, timing, synth_plots = _run_synthetic(config)
  metrics.update(synth_metrics)
  plots.update(synth_plots)
  if config["mnist"]:
    metrics["mnist"], timing["mnist"], mnist_plots = _run_mnist(config, seeds)
    plots.update(mnist_plots)
  if config["stacked_mnist"]:
    metrics["stacked_mnist"], sm_runs = _run_stacked_mnist(config, seeds)
    runs += [dict(r, dataset="stacked_mnist") for r in sm_runs]
  metrics["seeds"] = seeds
  metrics["timing"] = timing
  metrics["load_average"] = common.load_average()
  return common.write_results(config["workdir"] or None, NAME, config, metrics, PAPER, timer(),
                              runs=runs, plots=plots, tuning=TUNING)


# ---- report

def _paper_2d(dataset, variant, col):
  row = pacgan.PAPER_TABLE1.get(dataset, {}).get(variant)
  return f"{row[col]}±{row[col + 1]}" if row else "-"


def report_rows(results: dict) -> list[dict]:
  """Rows: LCW against the GAN (and PacGAN2) on ring and grid, paired by seed; collapsed runs;
  the MNIST Frechet distances; stacked MNIST modes when run."""
  m, cfg = results["metrics"], results["config"]
  runs = results.get("runs", [])
  # The LCW code's experiments are image sets (MNIST, F-MNIST, KMNIST, SVHN, CelebA, stacked
  # MNIST): these rows test its no-collapse claim on PacGAN's 2-D benchmark, a proxy at any size.
  scale = "proxy"
  seeds = ", ".join(str(s) for s in m["seeds"])
  setting = (f"2-D {'/'.join(cfg['datasets'])}, G {cfg['gen_hidden']}x{cfg['gen_depth']} for "
             f"every arm, D {cfg['disc_hidden']}x{cfg['disc_pieces']} maxout, {cfg['steps']} "
             f"steps of {cfg['batch_size']}; GAN lr {cfg['learning_rate']} "
             f"{cfg['lr_schedule']}, LCW Adam {cfg['lcw_learning_rate']} {cfg['lr_schedule']}, "
             f"d_cw^2 closed form={cfg['cw_approximate']}; seeds {seeds} (paired)")
  rows = []
  fmt = lambda vals, unit=1, digits=2: evidence.format_summary(evidence.summarize(vals), unit,
                                                               digits)
  for dataset in cfg["datasets"]:
    num = pacgan.NUM_MODES[dataset]
    arms = [v for v in m[dataset] if v != "LCW"]
    for base in arms:
      for key, direction, threshold, digits, col, claim in (
          ("modes", "greater", -0.5, 1, 0,
           f"LCW covers at least as many modes as {base} (paired difference above -0.5)"),
          ("reverse_kl", "less", 0.0, 2, 4,
           f"LCW's mode histogram is closer to uniform than {base}'s (lower reverse KL)"),
          ("high_quality", "greater", -0.05, 1, 2,
           f"LCW's samples are as sharp as {base}'s (high-quality fraction at most 5 points "
           "lower)")):
        if base == "PacGAN2" and key == "high_quality":
          continue
        pair = pacgan.paired_runs(runs, dataset, "LCW", base, key)
        unit = 100 if key == "high_quality" else 1
        diff, verdict = evidence.judge_paired(pair["variant"], pair["base"], threshold,
                                              direction, scale=scale)
        undefined = pair["undefined"]
        missing = (f"; runs without a high-quality sample: LCW {undefined['variant']}, {base} "
                   f"{undefined['base']}" if undefined["variant"] or undefined["base"] else "")
        rows.append(evidence.row(
            f"LCW generator (2-D {dataset}): LCW vs {base}, {key.replace('_', ' ')}", claim,
            f"LCW: no number (abstract: no mode collapse); {base} {_paper_2d(dataset, base, col)}"
            " (PacGAN Table 1, 10 runs)",
            f"LCW {fmt(pair['variant'], unit, digits)} vs {base} "
            f"{fmt(pair['base'], unit, digits)}; paired difference "
            f"{evidence.format_summary(diff, unit, digits)}{missing}",
            scale=scale, setting=setting, verdict=verdict))
    collapsed = {v: [int(r["modes"] < num) for r in sorted(
        (r for r in runs if r.get("dataset") == dataset and r["variant"] == v),
        key=lambda r: r["seed"])] for v in arms + ["LCW"]}
    diff, verdict = evidence.judge_paired(collapsed["LCW"], collapsed["GAN"], 0.0, "less",
                                          scale=scale)
    rows.append(evidence.row(
        f"LCW generator (2-D {dataset}): runs that miss a mode",
        "fewer LCW runs than GAN runs miss a mode (paired per-seed indicator difference below 0)",
        "LCW: no mode collapse (abstract)",
        "; ".join(f"{v} {sum(c)}/{len(c)}" for v, c in collapsed.items())
        + f"; paired difference {evidence.format_summary(diff)}",
        scale=scale, setting=setting + f"; a run misses a mode when it covers fewer than {num}",
        verdict=verdict))
  if "mnist" in m:
    mm = m["mnist"]
    mset = (f"{cfg['dataset']} (7,000 training digits), code {cfg['latent_dim']}, autoencoder "
            f"{cfg['ae_hidden']}x{cfg['ae_depth']} {cfg['ae_steps']} steps "
            f"({cfg['reconstruction']} + {cfg['normality_weight']} log CW normality), latent "
            f"generator {cfg['lg_hidden']}x{cfg['lg_depth']} {cfg['lg_steps']} steps; GAN: the "
            f"same decoder as generator, maxout D {cfg['gan_disc_hidden']}, {cfg['gan_steps']} "
            f"steps; Frechet distance of {cfg['mnist_eval_samples']} samples to the 2,000 test "
            f"digits in a PoolingCNN's features (test accuracy "
            f"{100 * mm['classifier_test_accuracy']:.1f}%; real training digits: "
            f"{mm['real_frechet_distance']:.3f}); not FID (no Inception network here); seeds "
            f"{seeds}")
    for base, claim in (("GAN", "LCW samples are closer to the test digits than the GAN's "
                                "(lower Frechet distance, paired)"),
                        ("CWAE", "the latent trick improves on decoding N(0, I) codes (lower "
                                 "Frechet distance than the CWAE's own samples, paired)")):
      a, b = mm["LCW"]["frechet_distance_per_seed"], mm[base]["frechet_distance_per_seed"]
      diff, verdict = evidence.judge_paired(a, b, 0.0, "less", scale="proxy")
      rows.append(evidence.row(
          f"LCW generator (MNIST): LCW vs {base}, Frechet distance", claim,
          "very competitive FID (abstract; the paper's table is not in our digest)",
          f"LCW {fmt(a, 1, 3)} vs {base} {fmt(b, 1, 3)}; paired difference "
          f"{evidence.format_summary(diff, 1, 3)}",
          scale="proxy", setting=mset, verdict=verdict))
    rows.append(evidence.row(
        "LCW generator (MNIST): digit histograms",
        "which digits each generator produces (KL of the predicted-digit histogram to uniform)",
        "-", "; ".join(f"{arm} KL {fmt(mm[arm]['digit_kl_per_seed'], 1, 3)}, classes "
                       f"{mm[arm]['digit_classes_per_seed']}" for arm in MNIST_ARMS),
        scale="proxy", setting=mset, verdict=None))
  if "stacked_mnist" in m:
    sm = m["stacked_mnist"]
    paper_name = {v: k for k, v in _SM_NAMES.items()}
    for base in ("GAN", "PacGAN2"):
      diff, verdict = evidence.judge_paired(sm["LCW"]["modes_per_seed"],
                                            sm[base]["modes_per_seed"], -0.5, "greater",
                                            scale="proxy")
      rows.append(evidence.row(
          f"LCW generator (stacked MNIST): LCW vs {base}, modes",
          f"LCW covers at least as many of the 1,000 modes as {base}",
          f"LCW: no mode collapse (abstract); {paper_name[base]} "
          f"{pacgan.PAPER_TABLE2[paper_name[base]][0]} (PacGAN Table 2)",
          f"LCW {fmt(sm['LCW']['modes_per_seed'], 1, 1)} vs {base} "
          f"{fmt(sm[base]['modes_per_seed'], 1, 1)}; paired difference "
          f"{evidence.format_summary(diff, 1, 1)}",
          scale="proxy", setting=f"stacked MNIST, {cfg['sm_steps']} steps per phase, code "
                                 f"{cfg['sm_latent_dim']}, seeds {seeds}", verdict=verdict))
  return rows


if __name__ == "__main__":
  common.main(sys.modules[__name__])
