"""The LCW generator's networks (Knop, Mazur, Spurek, Tabor, Podolak 2020, "Generative models with
kernel distance in data space", arXiv:2009.07327; code gmum/lcw-generator).

The LCW (latent Cramer-Wold) generator is trained in two phases, neither adversarial:

1. an autoencoder (`MLPAutoencoder`) whose codes are pushed towards N(0, I) with the Cramer-Wold
   distance (the Cramer-Wold autoencoder, CWAE; or the paper's CW2 variant, which also compares
   reconstructions and inputs with the Cramer-Wold distance);
2. the "latent trick": a generator from Gaussian noise to the latent space (`latent_generator`,
   the authors' 5 x 512 MLP) trained with the Cramer-Wold distance against the encoded training
   data; samples are `decoder(latent_generator(noise))`.

Every hidden layer is the authors' block (Linear, BatchNorm, ReLU), which is PacGAN's
`MLPGenerator` layer (`fastnets.models.pacgan`), reused here. The training steps are in
`fastnets.train.lcw`.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.models.pacgan import MLPGenerator

OUTPUTS = ("tanh", "sigmoid", "linear")


def _output(x: jax.Array, kind: str) -> jax.Array:
  if kind == "tanh":
    return jnp.tanh(x)
  if kind == "sigmoid":
    return jax.nn.sigmoid(x)
  return x


class MLPDecoder(nn.Module):
  """Code (batch, code_dim) -> samples (batch, *sample_shape): an `MLPGenerator` (depth x
  (Linear, BatchNorm, ReLU), then Linear) with an output activation.

  The same module is the LCW decoder and, fed with noise, a GAN generator of the same shape (the
  fair baseline of `experiments/lcw.py`).

  Attributes:
    sample_shape: shape of one sample, e.g. (784,) for flat MNIST digits or (2,).
    hidden: width of the hidden layers (the authors' MNIST decoder: 256).
    depth: number of hidden layers (3).
    output: "tanh" (samples in [-1, 1]), "sigmoid" ([0, 1]) or "linear".
  """
  sample_shape: Sequence[int]
  hidden: int = 256
  depth: int = 3
  output: str = "tanh"

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Args: z: (batch, code_dim) float. Returns: (batch, *sample_shape) float32."""
    if self.output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}.")
    shape = tuple(self.sample_shape)
    x = MLPGenerator(hidden=self.hidden, depth=self.depth, out_dim=math.prod(shape),
                     name="mlp")(z, train=train)
    return _output(x, self.output).reshape((z.shape[0],) + shape)


class MLPAutoencoder(nn.Module):
  """The LCW / CWAE autoencoder: MLP encoder to a `latent_dim` code, `MLPDecoder` back.

  The authors' MNIST networks: encoder 784 -> 256 -> 256 -> 256 -> 8, decoder mirrored (each
  hidden layer Linear, BatchNorm, ReLU).

  Attributes:
    sample_shape: shape of one sample (the input is flattened for the encoder).
    latent_dim: code dimension (the authors' MNIST: 8).
    hidden, depth: width and number of hidden layers of both halves.
    output: the decoder's output activation (see `MLPDecoder`).

  `__call__(x, train)` returns (reconstruction (batch, *sample_shape), code (batch, latent_dim));
  `encode` and `decode` (through `apply(..., method=...)`) run one half.
  """
  sample_shape: Sequence[int]
  latent_dim: int = 8
  hidden: int = 256
  depth: int = 3
  output: str = "tanh"

  def setup(self):
    if self.latent_dim < 2:
      raise ValueError(f"latent_dim must be >= 2, got {self.latent_dim}.")
    self.encoder = MLPGenerator(hidden=self.hidden, depth=self.depth, out_dim=self.latent_dim)
    self.decoder = MLPDecoder(sample_shape=tuple(self.sample_shape), hidden=self.hidden,
                              depth=self.depth, output=self.output)

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    """(batch, *sample_shape) -> (batch, latent_dim) float32 codes."""
    shape = tuple(self.sample_shape)
    if tuple(x.shape[1:]) != shape:
      raise ValueError(f"x must be (batch, *sample_shape) = (batch, *{shape}), got {x.shape}.")
    return self.encoder(x.reshape((x.shape[0], -1)), train=train)

  def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
    """(batch, latent_dim) -> (batch, *sample_shape) float32 samples."""
    return self.decoder(z, train=train)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    z = self.encode(x, train=train)
    return self.decode(z, train=train), z


def latent_generator(latent_dim: int, hidden: int = 512, depth: int = 5) -> MLPGenerator:
  """The LCW latent generator: noise -> `depth` x (Linear, BatchNorm, ReLU) of `hidden` units ->
  Linear to `latent_dim` (the authors' `LatentGenerator`: 5 layers of 512)."""
  if latent_dim < 1 or hidden < 1 or depth < 1:
    raise ValueError(f"latent_dim, hidden and depth must be >= 1, got {latent_dim}, {hidden}, "
                     f"{depth}.")
  return MLPGenerator(hidden=hidden, depth=depth, out_dim=latent_dim)


__all__ = ["MLPAutoencoder", "MLPDecoder", "OUTPUTS", "latent_generator"]
