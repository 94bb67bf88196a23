"""Training steps of the LCW generator (Knop et al. 2020, arXiv:2009.07327): a Cramer-Wold
autoencoder, then the latent trick. No discriminator, no adversarial game.

Both steps have the form `step(state, data, key) -> (state, metrics)` of the GAN loop, so
`fastnets.train.gan.train_gan` runs them (jit-compiled `lax.scan` chunks, seeds `vmap`ped as
replicas, checkpoints); the state is a `fastnets.train.TrainState`.

- `make_autoencoder_step`: phase 1. The batch is drawn with replacement from `data` (as the GAN
  loop draws real samples). Cost (the authors' `cost_function_factory`):
    * "mse" (CWAE, Knop et al. JMLR 2020, Eq. (8)): mean over images of the summed squared error
      + `normality_weight` * log d_cw^2(codes, N(0, I))  (`ops.cramer_wold_normality`);
    * "cw" (the LCW paper's CW2): log d_cw^2(reconstructions, inputs) (`ops.cramer_wold_distance`
      between the two flattened batches, Silverman's smoothing) + `normality_weight` * the same
      normality term.
- `make_latent_generator_step`: phase 2, the latent trick. d_cw^2(G(noise), encoded batch) with
  Silverman's smoothing of the pooled batch (the authors' `cw_sampling_silverman`); the targets are
  the training set's codes, encoded once (`encode`). Applied to raw 2-D data instead of codes it
  is the paper's data-space Cramer-Wold generator.

`approximate` picks the Cramer-Wold kernel profile: the authors' code always uses the closed form
(1 + 4 s / (2 D - 3))^{-1/2}, which the JMLR paper derives for D >= 20 (`approximate=True`); None
uses the exact 1F1 profile below D = 20 (`ops.cramer_wold_phi`).
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fastnets import ops
from fastnets.train.gan import apply_module, sample_noise, uniform_real_sampler
from fastnets.train.steps import TrainState

RECONSTRUCTIONS = ("mse", "cw")
# log() of a distance estimate that rounds to zero or below stays finite.
_LOG_FLOOR = 1e-12

RealSampler = Callable[[jax.Array, Any, int], jax.Array]


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0], -1))


def _check_batch(batch_size: int) -> None:
  if batch_size < 2:
    raise ValueError(f"batch_size must be >= 2 (the Cramer-Wold distance needs two samples), "
                     f"got {batch_size}.")


def autoencoder_loss(reconstruction: jax.Array, inputs: jax.Array, codes: jax.Array,
                     reconstruction_cost: str = "mse", normality_weight: float = 1.0,
                     approximate: Optional[bool] = None) -> tuple[jax.Array, dict]:
  """The CWAE / CW2 cost of one batch (see the module docstring).

  Args:
    reconstruction, inputs: (batch, ...) float, the same shape.
    codes: (batch, latent_dim) float.
    reconstruction_cost: "mse" (CWAE) or "cw" (CW2).
    normality_weight: lambda of the log-normality term.
    approximate: the Cramer-Wold profile of the "cw" term (see the module docstring).

  Returns: (float32 scalar loss, {"reconstruction", "normality"} float32 scalars).
  """
  if reconstruction_cost not in RECONSTRUCTIONS:
    raise ValueError(f"reconstruction_cost must be one of {RECONSTRUCTIONS}, got "
                     f"{reconstruction_cost!r}.")
  if reconstruction.shape != inputs.shape:
    raise ValueError(f"reconstruction and inputs must have the same shape, got "
                     f"{reconstruction.shape} and {inputs.shape}.")
  r, x = _flat(reconstruction), _flat(inputs)
  if reconstruction_cost == "mse":
    rec = jnp.mean(jnp.sum(jnp.square(r - x), axis=-1))
    rec_term = rec
  else:
    rec = ops.cramer_wold_distance(r, x, approximate=approximate)
    rec_term = jnp.log(jnp.maximum(rec, _LOG_FLOOR))
  normality = ops.cramer_wold_normality(codes)
  loss = rec_term + normality_weight * jnp.log(jnp.maximum(normality, _LOG_FLOOR))
  return loss, {"reconstruction": rec, "normality": normality}


def make_autoencoder_step(model: nn.Module, tx: optax.GradientTransformation, batch_size: int,
                          reconstruction_cost: str = "mse", normality_weight: float = 1.0,
                          approximate: Optional[bool] = None,
                          real_sampler: RealSampler = uniform_real_sampler):
  """Builds phase 1's `step(state, data, key) -> (state, metrics)` (pure, un-jitted).

  Args:
    model: an autoencoder whose `apply(v, x, train=True)` returns (reconstruction, codes), e.g.
      `fastnets.models.lcw.MLPAutoencoder`.
    tx: its optimizer.
    batch_size: samples per step (>= 2).
    reconstruction_cost, normality_weight, approximate: see `autoencoder_loss`.
    real_sampler: `(key, data, n) -> (n, ...)` training samples (default: uniform rows).

  Returns: the step; metrics "loss", "reconstruction", "normality" (float32 scalars).
  """
  _check_batch(batch_size)
  if reconstruction_cost not in RECONSTRUCTIONS:
    raise ValueError(f"reconstruction_cost must be one of {RECONSTRUCTIONS}, got "
                     f"{reconstruction_cost!r}.")

  def step(state: TrainState, data, key: jax.Array):
    x = real_sampler(key, data, batch_size)

    def loss_fn(params):
      (recon, codes), new_model_state = apply_module(model, params, state.model_state, x, True)
      loss, parts = autoencoder_loss(recon, x, codes, reconstruction_cost, normality_weight,
                                     approximate)
      return loss, (new_model_state, parts)

    (loss, (new_model_state, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              model_state=new_model_state, opt_state=opt_state)
    return new_state, {"loss": loss, **parts}

  return step


def make_latent_generator_step(generator: nn.Module, tx: optax.GradientTransformation,
                               batch_size: int, noise_dim: int,
                               approximate: Optional[bool] = None,
                               real_sampler: RealSampler = uniform_real_sampler):
  """Builds phase 2's `step(state, targets, key) -> (state, metrics)`: the latent trick.

  Each step draws `batch_size` targets (codes of the training set, or raw samples for a
  data-space generator) and as many N(0, I) noise vectors, and descends
  d_cw^2(generator(noise), targets) (Silverman's smoothing, `ops.cramer_wold_distance`).

  Args:
    generator: noise (batch, noise_dim) -> (batch, D), e.g. `fastnets.models.lcw.latent_generator`.
    tx: its optimizer.
    batch_size: samples per step (>= 2).
    noise_dim: dimension of the Gaussian noise.
    approximate: the Cramer-Wold profile (see the module docstring).
    real_sampler: `(key, targets, n) -> (n, D)` (default: uniform rows).

  Returns: the step; metric "loss" (float32 scalar d_cw^2).
  """
  _check_batch(batch_size)
  if noise_dim < 1:
    raise ValueError(f"noise_dim must be >= 1, got {noise_dim}.")

  def step(state: TrainState, targets, key: jax.Array):
    k_real, k_noise = jax.random.split(key)
    target = real_sampler(k_real, targets, batch_size)
    noise = sample_noise(k_noise, (batch_size, noise_dim), "normal")

    def loss_fn(params):
      out, new_model_state = apply_module(generator, params, state.model_state, noise, True)
      loss = ops.cramer_wold_distance(_flat(out), _flat(target), approximate=approximate)
      return loss, new_model_state

    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              model_state=new_model_state, opt_state=opt_state)
    return new_state, {"loss": loss}

  return step


def _variables(state: TrainState) -> dict:
  return {"params": state.params, **state.model_state}


def encode(model: nn.Module, state: TrainState, x: jax.Array) -> jax.Array:
  """Codes of `x` (batch, *sample_shape) under the trained autoencoder, in inference mode
  (BatchNorm running statistics): (batch, latent_dim)."""
  return model.apply(_variables(state), x, train=False, method="encode")


def decode(model: nn.Module, state: TrainState, codes: jax.Array) -> jax.Array:
  """Samples (batch, *sample_shape) decoded from codes (batch, latent_dim), inference mode."""
  return model.apply(_variables(state), codes, train=False, method="decode")


def generate_latents(generator: nn.Module, state: TrainState, key: jax.Array, num: int,
                     noise_dim: int) -> jax.Array:
  """`num` outputs of the latent generator on N(0, I) noise, inference mode: (num, D)."""
  noise = sample_noise(key, (num, noise_dim), "normal")
  return generator.apply(_variables(state), noise, train=False)


def lcw_sample(autoencoder: nn.Module, ae_state: TrainState, generator: nn.Module,
               g_state: TrainState, key: jax.Array, num: int, noise_dim: int) -> jax.Array:
  """LCW samples: decoder(latent_generator(noise)), (num, *sample_shape)."""
  return decode(autoencoder, ae_state,
                generate_latents(generator, g_state, key, num, noise_dim))


__all__ = ["RECONSTRUCTIONS", "autoencoder_loss", "decode", "encode", "generate_latents",
           "lcw_sample", "make_autoencoder_step", "make_latent_generator_step"]
