"""Small networks for the training-dynamics studies: noise regularisers and normalisation.

- `NoiseCNN`: a ReLU CNN with a noise layer after every hidden layer: none, dropout, Gaussian
  noise, or the adversarial noise layer (ANL / CANL; You et al. 2018).
- `EluMLP`, `EluCNN`: ELU networks without normalisation, with batch norm, or with
  variance-constancy taps (VCL; Littwin & Wolf 2018, who train ELU networks without
  normalisation).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn.adversarial_noise import AdversarialNoise
from fastnets.nn.variance_constancy import VarianceConstancy

NOISES = ("none", "dropout", "gaussian", "anl", "canl")
NORMS = ("none", "batchnorm", "vcl")


def _check(name, value, choices, owner):
  if value not in choices:
    raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}.")


class NoiseCNN(nn.Module):
  """conv-ReLU-noise-maxpool stages, a dense ReLU-noise layer and a linear classifier.

  Attributes:
    num_classes: logits.
    channels: conv stage widths (3x3 kernels).
    hidden: dense hidden width.
    noise: one of `NOISES`. "dropout": rate `noise_level`; "gaussian": x + noise_level * std(x) *
      N(0, 1) (the batch's std; the "dropout" rng); "anl" / "canl": `AdversarialNoise(eps=
      noise_level)`, with class tables for "canl" (train with `fastnets.train.anl_loss_fn` /
      `canl_loss_fn`).
    noise_level: the rate, relative std or eps (> 0 unless noise is "none").
  """
  num_classes: int = 10
  channels: Sequence[int] = (16, 32)
  hidden: int = 64
  noise: str = "none"
  noise_level: float = 0.1

  def _noise(self, x, train, name):
    if self.noise == "dropout":
      return nn.Dropout(self.noise_level, deterministic=not train, name=name)(x)
    if self.noise == "gaussian":
      if not train:
        return x
      std = jnp.std(jax.lax.stop_gradient(x))
      return x + self.noise_level * std * jax.random.normal(self.make_rng("dropout"), x.shape,
                                                            x.dtype)
    if self.noise in ("anl", "canl"):
      classes = self.num_classes if self.noise == "canl" else 0
      return AdversarialNoise(eps=self.noise_level, num_classes=classes, name=name)(x, train)
    return x

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, h, w, c) -> (batch, num_classes) float32 logits."""
    _check("noise", self.noise, NOISES, "NoiseCNN")
    if self.noise != "none" and not self.noise_level > 0:
      raise ValueError(f"NoiseCNN: noise_level must be > 0 for noise={self.noise!r}, got "
                       f"{self.noise_level!r}.")
    for i, features in enumerate(self.channels):
      x = nn.relu(nn.Conv(features, (3, 3), padding="SAME", name=f"conv{i + 1}")(x))
      x = self._noise(x, train, f"noise{i + 1}")
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="dense")(x))
    x = self._noise(x, train, "noise_dense")
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def _normalize(norm, x, train, name):
  if norm == "batchnorm":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(x)
  return x


def _after(norm, x, train, name):
  if norm == "vcl":
    return VarianceConstancy(name=name)(x, train)
  return x


class EluMLP(nn.Module):
  """Dense-[BN]-ELU-[VCL tap] layers and a linear classifier.

  Attributes:
    num_classes: logits.
    hidden: widths of the hidden layers.
    norm: "none", "batchnorm" (before the ELU) or "vcl" (a `VarianceConstancy` tap after the
      ELU; train with `fastnets.train.variance_constancy_loss_fn`).
  """
  num_classes: int = 10
  hidden: Sequence[int] = (128, 128, 128)
  norm: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, ...) -> (batch, num_classes) float32 logits."""
    _check("norm", self.norm, NORMS, "EluMLP")
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=self.norm != "batchnorm", name=f"dense{i + 1}")(x)
      x = nn.elu(_normalize(self.norm, x, train, f"bn{i + 1}"))
      x = _after(self.norm, x, train, f"vcl{i + 1}")
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


class EluCNN(nn.Module):
  """conv-[BN]-ELU-[VCL tap]-maxpool stages, a dense ELU layer (same options), a classifier.

  Attributes: as `EluMLP`, with `channels` (3x3 conv widths) and `hidden` (dense width).
  """
  num_classes: int = 10
  channels: Sequence[int] = (16, 32)
  hidden: int = 64
  norm: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (batch, h, w, c) -> (batch, num_classes) float32 logits."""
    _check("norm", self.norm, NORMS, "EluCNN")
    bias = self.norm != "batchnorm"
    for i, features in enumerate(self.channels):
      x = nn.Conv(features, (3, 3), padding="SAME", use_bias=bias, name=f"conv{i + 1}")(x)
      x = nn.elu(_normalize(self.norm, x, train, f"bn{i + 1}"))
      x = _after(self.norm, x, train, f"vcl{i + 1}")
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, use_bias=bias, name="dense")(x)
    x = nn.elu(_normalize(self.norm, x, train, "bn_dense"))
    x = _after(self.norm, x, train, "vcl_dense")
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)
