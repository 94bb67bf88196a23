"""A compact GAN training loop: one jit-compiled step, `lax.scan` chunks, replicas under `vmap`.

The classification `fit` does not fit a GAN (two networks, two optimizers, no labels), so this is
its own small loop, in the setting of PacGAN's code (Lin et al. 2018; fjxmlzn/PacGAN, which
trains with ALI's `ali_algorithm`):
  * non-saturating losses (`fastnets.ops.gan`), Adam for both players;
  * *simultaneous* updates: the discriminator's and the generator's gradients are taken at the
    same parameters and the same samples, then both are applied (one forward pass, two backward
    passes of one `jax.vjp`), as in the paper's synthetic experiments;
  * the fake pack is m independent generator batches (m calls of G, each with its own BatchNorm
    batch statistics); the running statistics move by the average of the m batch statistics
    (the paper's code averages the m updates the same way);
  * the real batch is `batch_size * m` points drawn uniformly with replacement from the training
    set each step, grouped into packs of m consecutive points (the paper's code draws the m
    members of every pack with replacement once and then shuffles the fixed packs each epoch: the
    same distribution per step).

Speed on a CPU: `make_train_chunk` runs `chunk_size` steps inside one `lax.scan` (one dispatch per
chunk), and `train_gan` can `vmap` the chunk over replicas (seeds, datasets of equal shape), so
several runs share each matmul. Randomness: every step's key is `fold_in(replica_key, step)`.
"""

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from fastnets import data as data_lib
from fastnets.models.pacgan import digit_classifier
from fastnets.ops import gan as gan_ops
from fastnets.ops import packing as packing_ops
from fastnets.train.checkpoint import Checkpointer, WorkdirMismatchError
from fastnets.train.config import TrainConfig
from fastnets.train.loop import NonFiniteLossError, fit

RealSampler = Callable[[jax.Array, Any, int], jax.Array]


class GANState(struct.PyTreeNode):
  """Everything that changes while a GAN trains.

  Attributes:
    step: int32 scalar, updates applied.
    g_params, d_params: the generator's and the discriminator's "params".
    g_state, d_state: their other collections (e.g. "batch_stats"; {} when none).
    g_opt, d_opt: their optimizer states.
  """
  step: jax.Array
  g_params: Any
  g_state: Any
  d_params: Any
  d_state: Any
  g_opt: Any
  d_opt: Any


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """The GAN step's settings (the defaults are PacGAN's 2-D experiments).

  Attributes:
    batch_size: packs per step (the paper: 100 packs: 100 m real points, m batches of 100 fakes).
    z_dim: noise dimension (2).
    noise: "normal" (N(0, I), the 2-D experiments) or "uniform" (U(-1, 1), DCGAN).
    learning_rate: Adam learning rate of both players (1e-4).
    beta1, beta2, eps: Adam's (0.8, 0.999, 1e-8; Blocks' Adam defaults besides beta1).
    schedule: "constant" (the paper) or "cosine": cosine decay of the learning rate from
      `learning_rate` to `final_lr_fraction * learning_rate` over `decay_steps` steps (a
      deviation that sharpens the samples of short runs).
    decay_steps: length of the cosine decay (required > 0 for "cosine").
    final_lr_fraction: the cosine schedule's final fraction of the learning rate.
  """
  batch_size: int = 100
  z_dim: int = 2
  noise: str = "normal"
  learning_rate: float = 1e-4
  beta1: float = 0.8
  beta2: float = 0.999
  eps: float = 1e-8
  schedule: str = "constant"
  decay_steps: int = 0
  final_lr_fraction: float = 0.05

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1 (packs per step), got {self.batch_size}.")
    if self.z_dim < 1:
      raise ValueError(f"z_dim must be >= 1, got {self.z_dim}.")
    if self.noise not in ("normal", "uniform"):
      raise ValueError(f"noise must be 'normal' or 'uniform', got {self.noise!r}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}.")
    if self.schedule == "cosine" and self.decay_steps < 1:
      raise ValueError("schedule='cosine' needs decay_steps >= 1 (usually the number of steps).")

  def optimizer(self) -> optax.GradientTransformation:
    """Adam(learning rate (schedule), beta1, beta2, eps), used for both players."""
    lr = self.learning_rate
    if self.schedule == "cosine":
      lr = optax.cosine_decay_schedule(self.learning_rate, self.decay_steps,
                                       alpha=self.final_lr_fraction)
    return optax.adam(lr, b1=self.beta1, b2=self.beta2, eps=self.eps)


def pack_degree(discriminator: nn.Module) -> int:
  """m of a `fastnets.nn.Packed` discriminator, 1 for any other module."""
  return int(getattr(discriminator, "degree", 1))


def sample_noise(key: jax.Array, shape: Sequence[int], noise: str = "normal") -> jax.Array:
  """N(0, I) ("normal") or U(-1, 1) ("uniform") float32 noise of `shape`."""
  if noise == "normal":
    return jax.random.normal(key, tuple(shape), jnp.float32)
  if noise == "uniform":
    return jax.random.uniform(key, tuple(shape), jnp.float32, -1.0, 1.0)
  raise ValueError(f"noise must be 'normal' or 'uniform', got {noise!r}.")


def uniform_real_sampler(key: jax.Array, data: jax.Array, n: int) -> jax.Array:
  """`n` rows of `data` (N, ...) drawn uniformly with replacement (the default real sampler)."""
  return data[jax.random.randint(key, (n,), 0, data.shape[0])]


def apply_module(module: nn.Module, params, state, x, train: bool):
  """`module(x, train)` and its non-param collections (`state`, e.g. "batch_stats"), updated
  when training (if it has any): returns (output, new state)."""
  variables = {"params": params, **state}
  if train and state:
    out, new_state = module.apply(variables, x, train=True, mutable=list(state))
    return out, dict(new_state)
  return module.apply(variables, x, train=train), state


def _judge(discriminator: nn.Module, params, state, packs):
  """The discriminator on already-packed inputs (Packed's inner module, or D itself if m = 1)."""
  variables = {"params": params, **state}
  kwargs = {"method": "judge"} if hasattr(discriminator, "judge") else {}
  if state:
    out, new_state = discriminator.apply(variables, packs, train=True, mutable=list(state),
                                         **kwargs)
    return out, dict(new_state)
  return discriminator.apply(variables, packs, train=True, **kwargs), state


def init_gan_state(generator: nn.Module, discriminator: nn.Module, config: GANConfig,
                   key: jax.Array, sample_shape: Sequence[int]) -> GANState:
  """Initialises both networks and their Adam states.

  Args:
    generator: maps (batch, z_dim) noise to (batch, *sample_shape) samples.
    discriminator: a `fastnets.nn.Packed` (or plain, m = 1) module on samples.
    config: the GAN settings.
    key: PRNG key (split into one per network).
    sample_shape: shape of one real sample, e.g. (2,) or (28, 28, 3).
  """
  m = pack_degree(discriminator)
  sample_shape = tuple(sample_shape)

  def init(key):
    kg, kd = jax.random.split(key)
    g_vars = dict(generator.init(kg, jnp.zeros((2, config.z_dim), jnp.float32), train=False))
    d_vars = dict(discriminator.init(kd, jnp.zeros((m,) + sample_shape, jnp.float32),
                                     train=False))
    g_params, d_params = g_vars.pop("params"), d_vars.pop("params")
    tx = config.optimizer()
    return GANState(step=jnp.zeros((), jnp.int32), g_params=g_params, g_state=g_vars,
                    d_params=d_params, d_state=d_vars, g_opt=tx.init(g_params),
                    d_opt=tx.init(d_params))

  # One compiled program instead of op-by-op initialisation (much faster on a CPU); works under
  # an outer jit/vmap too.
  return jax.jit(init)(key)


def generate(generator: nn.Module, state: GANState, key: jax.Array, num: int,
             config: GANConfig) -> jax.Array:
  """`num` samples of the generator in inference mode (BatchNorm running statistics), as the
  paper's code samples for its metrics and plots. Returns (num, *sample_shape)."""
  z = sample_noise(key, (num, config.z_dim), config.noise)
  return generator.apply({"params": state.g_params, **state.g_state}, z, train=False)


def make_gan_step(generator: nn.Module, discriminator: nn.Module, config: GANConfig,
                  real_sampler: RealSampler = uniform_real_sampler):
  """Builds `gan_step(state, data, key) -> (state, metrics)`: one simultaneous D and G update.

  Args:
    generator: maps (batch, z_dim) to samples; BatchNorm allowed (batch statistics per call).
    discriminator: `fastnets.nn.Packed(D, degree=m)` (or a plain D for m = 1); returns one logit
      per pack.
    config: batch size (packs), noise, Adam settings.
    real_sampler: `(key, data, n) -> (n, *sample_shape)` real samples; default: uniform rows of
      the array `data`.

  Returns:
    The (un-jitted, pure) step. `metrics`: "d_loss", "g_loss" (float32 scalars), "d_real" and
    "d_fake" (mean D probability of "real" on real and fake packs).
  """
  m = pack_degree(discriminator)
  b = config.batch_size
  tx = config.optimizer()

  def gan_step(state: GANState, data, key: jax.Array):
    k_real, k_z = jax.random.split(key)
    real = real_sampler(k_real, data, b * m)
    zs = sample_noise(k_z, (m, b, config.z_dim), config.noise)

    def losses(g_params, d_params):
      # m independent generator batches, each with its own BatchNorm batch statistics: G is
      # vmapped over the m noise batches (the weights are shared, so XLA runs one (m*b)-row
      # matmul per layer); the m running-statistics updates are averaged.
      fakes, g_states = jax.vmap(
          lambda z: apply_module(generator, g_params, state.g_state, z, True))(zs)
      new_g_state = jax.tree.map(lambda x: jnp.mean(x, axis=0), g_states)
      real_packs = packing_ops.pack(real, m)
      fake_packs = packing_ops.concat_packs([fakes[i] for i in range(m)])
      if state.d_state:  # D keeps batch statistics: judge real and fake packs separately.
        d_real, d_state = _judge(discriminator, d_params, state.d_state, real_packs)
        d_fake, d_state = _judge(discriminator, d_params, d_state, fake_packs)
      else:  # One D pass over real and fake packs together (as the paper's code).
        logits, d_state = _judge(discriminator, d_params, state.d_state,
                                 jnp.concatenate([real_packs, fake_packs], axis=0))
        d_real, d_fake = logits[:b], logits[b:]
      loss_d = gan_ops.discriminator_loss(d_real, d_fake)
      loss_g = gan_ops.generator_loss(d_fake)
      return (loss_d, loss_g), (new_g_state, d_state, d_real, d_fake)

    (loss_d, loss_g), vjp_fn, aux = jax.vjp(losses, state.g_params, state.d_params, has_aux=True)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    _, d_grads = vjp_fn((one, zero))  # dL_D / d theta_D
    g_grads, _ = vjp_fn((zero, one))  # dL_G / d theta_G (through D, D held fixed)
    new_g_state, new_d_state, d_real, d_fake = aux
    g_updates, g_opt = tx.update(g_grads, state.g_opt, state.g_params)
    d_updates, d_opt = tx.update(d_grads, state.d_opt, state.d_params)
    new_state = state.replace(
        step=state.step + 1, g_params=optax.apply_updates(state.g_params, g_updates),
        g_state=new_g_state, d_params=optax.apply_updates(state.d_params, d_updates),
        d_state=new_d_state, g_opt=g_opt, d_opt=d_opt)
    metrics = {"d_loss": loss_d, "g_loss": loss_g,
               "d_real": jnp.mean(jax.nn.sigmoid(d_real)),
               "d_fake": jnp.mean(jax.nn.sigmoid(d_fake))}
    return new_state, metrics

  return gan_step


def make_train_chunk(gan_step, num_steps: int, unroll: int = 1):
  """`chunk(state, data, key) -> (state, mean metrics, finite)`: `num_steps` steps in a `lax.scan`.

  `gan_step` may be any pure `(state, data, key) -> (state, metrics)` whose state has a `step`
  counter (the LCW steps of `fastnets.train.lcw` run through this loop too).

  `unroll` is `lax.scan`'s (steps per loop iteration in the compiled program).

  Step t uses `fold_in(key, state.step)`, so the run does not depend on the chunk size. `finite`
  is False when any step's metric (the losses) was NaN/Inf.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")

  def chunk(state, data, key):
    def body(s, _):
      s, metrics = gan_step(s, data, jax.random.fold_in(key, s.step))
      return s, metrics

    state, metrics = jax.lax.scan(body, state, None, length=num_steps, unroll=unroll)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    return state, jax.tree.map(jnp.mean, metrics), finite

  return chunk


def _format_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_gan(gan_step, state: GANState, data, key: jax.Array, num_steps: int, *,
              chunk_size: int = 500, replicas: Optional[int] = None, label: str = "gan",
              verbose: bool = True, log: Callable[[str], None] = None,
              workdir: Optional[str] = None,
              checkpoint_every: int = 0) -> tuple[GANState, list]:
  """Runs `num_steps` GAN steps in jit-compiled `lax.scan` chunks; returns (state, history).

  With `workdir`, the state and history are checkpointed (orbax, `workdir/checkpoints`) every
  `checkpoint_every` steps (rounded up to whole chunks; 0: only at the end), and a rerun with the
  same workdir resumes from the latest checkpoint. Step t's key is `fold_in(key, t)` and chunks
  end at multiples of `chunk_size`, so a resumed run equals an uninterrupted one.

  Args:
    gan_step: from `make_gan_step` (or any step of that form, e.g. `fastnets.train.lcw`'s).
    state: a `GANState` (the step's state), or with `replicas=R` one whose leaves have a
      leading axis R (e.g. `jax.vmap(init)` over keys), trained as R independent runs in one
      program.
    data: what the real sampler reads (with `replicas`, a leading axis R too).
    key: PRNG key (with `replicas`, R keys: `jax.random.split(key, R)`).
    num_steps: total steps (from `state.step` = 0; a remainder chunk compiles once more).
    chunk_size: steps per compiled chunk (one host sync per chunk).
    replicas: None for one run, R for R vmapped runs.
    label: prefix of the progress lines.
    verbose: print one progress line per chunk: step, steps/s, ETA, losses.
    log: where progress lines go (default print with flush).
    workdir: directory for checkpoints (None: none).
    checkpoint_every: steps between checkpoints (0: at the end only); needs `workdir`.

  Returns:
    (final state, history: one dict per chunk with "step", "steps_per_sec" and the mean metrics
    (per replica lists when vmapped)).

  Raises:
    FloatingPointError (`fastnets.train.NonFiniteLossError`): a loss became NaN/Inf.
    fastnets.train.WorkdirMismatchError: `workdir` holds a run with another label, chunk size or
      replica count.
  """
  if num_steps < 0 or chunk_size < 1:
    raise ValueError(f"num_steps must be >= 0 and chunk_size >= 1, got {num_steps}, {chunk_size}.")
  if checkpoint_every < 0 or (checkpoint_every and not workdir):
    raise ValueError(f"checkpoint_every must be >= 0 and needs a workdir, got {checkpoint_every} "
                     f"with workdir={workdir!r}.")
  log = log or (lambda msg: print(msg, flush=True))
  compiled = {}
  run_meta = {"label": label, "chunk_size": chunk_size, "replicas": replicas or 0}

  def get_chunk(n):
    if n not in compiled:
      fn = make_train_chunk(gan_step, n)
      compiled[n] = jax.jit(jax.vmap(fn) if replicas else fn)
    return compiled[n]

  history, done = [], 0
  ckpt = Checkpointer(workdir) if workdir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(ckpt.latest_step(), state)
    recorded = {k: meta.get(k) for k in run_meta}
    if recorded != run_meta:
      raise WorkdirMismatchError(
          f"workdir {workdir!r} holds a GAN run with {recorded}, this run has {run_meta}. Use a "
          "new workdir, or delete this one to start over.")
    done, history = int(meta["step"]), list(meta["history"])
    if verbose:
      log(f"[{label}] resumed from step {done} in {ckpt.directory}")
  last_saved = done
  t_start = time.time()
  t_window, start = t_start, done
  while done < num_steps:
    n = min(chunk_size, num_steps - done)
    state, metrics, finite = get_chunk(n)(state, data, key)
    metrics, finite = jax.device_get((metrics, finite))
    done += n
    now = time.time()
    if not np.all(finite):
      raise NonFiniteLossError(f"{label}: a loss became NaN/Inf within steps "
                               f"{done - n + 1}..{done}; lower the learning rate.")
    rate = n / max(now - t_window, 1e-9)
    t_window = now
    record = {"step": done, "steps_per_sec": rate,
              **{k: np.asarray(v).tolist() for k, v in metrics.items()}}
    history.append(record)
    if ckpt is not None and (done == num_steps or (
        checkpoint_every and done - last_saved >= checkpoint_every)):
      ckpt.save(done, state, {**run_meta, "step": done, "history": history})
      last_saved = done
    if verbose:
      eta = (num_steps - done) / max((done - start) / max(now - t_start, 1e-9), 1e-9)
      losses = "  ".join(f"{k} {np.mean(v):.3f}" for k, v in metrics.items())
      extra = f" x{replicas} runs" if replicas else ""
      log(f"[{label}] step {done}/{num_steps}  {rate:.0f} steps/s{extra}  "
          f"ETA {_format_time(eta)}  {losses}")
  if ckpt is not None:
    ckpt.close()
  return state, history


def train_digit_classifier(steps: int = 400, seed: int = 0, workdir: Optional[str] = None,
                           verbose: bool = False, dataset: str = data_lib.BUNDLED_MNIST,
                           data_dir: Optional[str] = None):
  """Trains the stacked-MNIST mode labeller: `SmallCNN` on a digit dataset (default the bundled
  MNIST; any name `fastnets.data.load_dataset` takes) with `fit`.

  Returns:
    (model, variables, dataset, val_accuracy): `variables` = {"params": ..., **model_state}
    for `model.apply(variables, x, train=False)`; `dataset` gives the normalisation.
  """
  dataset = data_lib.load_dataset(dataset, data_dir=data_dir)
  model = digit_classifier()
  config = TrainConfig(steps=steps, batch_size=128, learning_rate=1e-3, seed=seed,
                       log_every=max(steps // 4, 1),
                       checkpoint_every=0 if workdir is None else steps)
  result = fit(model, dataset, config, workdir, verbose=verbose,
               run_info={"model_name": "pacgan_digit_classifier"})
  state = jax.device_get(result.state)
  variables = {"params": state.params, **state.model_state}
  return model, variables, dataset, float(result.metrics["val_accuracy"])


def classify_channels(model: nn.Module, variables, dataset, images: jax.Array,
                      batch_size: int = 1000) -> np.ndarray:
  """Labels every channel of [-1, 1] images with a digit classifier.

  Args:
    model, variables, dataset: from `train_digit_classifier` (dataset: for normalisation).
    images: (N, 28, 28, C) float images in [-1, 1] (a tanh generator's output).
    batch_size: classification batch size.

  Returns:
    (N, C) int32 predicted digits.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got {images.shape}.")
  apply = jax.jit(lambda x: jnp.argmax(model.apply(variables, x, train=False), -1))
  unit = (images + 1.0) * 0.5
  out = np.zeros(images.shape[0:1] + images.shape[-1:], np.int32)
  for c in range(images.shape[-1]):
    channel = dataset.normalize(unit[..., c:c + 1])
    for start in range(0, images.shape[0], batch_size):
      out[start:start + batch_size, c] = np.asarray(apply(channel[start:start + batch_size]))
  return out


__all__ = ["GANConfig", "GANState", "apply_module", "classify_channels", "generate",
           "init_gan_state",
           "make_gan_step", "make_train_chunk", "pack_degree", "sample_noise", "train_gan",
           "train_digit_classifier", "uniform_real_sampler"]
