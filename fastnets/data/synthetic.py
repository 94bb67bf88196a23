"""Synthetic mode-collapse benchmarks of PacGAN (Lin et al. 2018, Section 4) and VEEGAN.

* 2-D ring: 8 Gaussians with means on the unit circle (angles 2 pi k / 8), std 0.01.
* 2-D grid: 25 Gaussians with means {-4, -2, 0, 2, 4}^2, std 0.05.
  Both: 100,000 training points drawn once from a seed, modes picked uniformly (equal priors).
* Stacked MNIST: three MNIST digits stacked as the three channels of one 28x28x3 image, so the
  mode (d0, d1, d2) takes 1,000 values. Built from the bundled MNIST (real digits, offline).

Everything here is numpy; nothing reads flags or files except through `fastnets.data.load_dataset`.
"""

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from fastnets.data.datasets import BUNDLED_MNIST, load_dataset

SYNTHETIC_SETS = ("ring", "grid")
RING_STD = 0.01
GRID_STD = 0.05
NUM_TRAINING_POINTS = 100_000


@dataclasses.dataclass(frozen=True)
class GaussianMixtureData:
  """Points of an isotropic Gaussian mixture, drawn once, with the mixture that drew them.

  Attributes:
    name: "ring" or "grid" (or your own).
    means: (K, D) float32 mode means.
    std: the modes' (shared, isotropic) standard deviation.
    points: (N, D) float32 training points.
    labels: (N,) int32 index of the mode each point was drawn from.
    seed: the numpy seed the points were drawn with.
  """
  name: str
  means: np.ndarray
  std: float
  points: np.ndarray
  labels: np.ndarray
  seed: int

  @property
  def num_modes(self) -> int:
    return int(self.means.shape[0])

  def __len__(self) -> int:
    return int(self.points.shape[0])


def ring_means(num_modes: int = 8, radius: float = 1.0) -> np.ndarray:
  """(num_modes, 2) float32 means at angles 2 pi k / num_modes on a circle of `radius`."""
  if num_modes < 1:
    raise ValueError(f"num_modes must be >= 1, got {num_modes}.")
  angles = 2.0 * np.pi * np.arange(num_modes) / num_modes
  return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)


def grid_means(values: Sequence[float] = (-4, -2, 0, 2, 4)) -> np.ndarray:
  """(len(values)^2, 2) float32 means at every pair of `values` (x-major order)."""
  return np.array(list(itertools.product(values, values)), dtype=np.float32)


def sample_mixture(means: np.ndarray, std: float, num_points: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws `num_points` from the equal-weight isotropic mixture N(means[k], std^2 I).

  Returns:
    ((num_points, D) float32 points, (num_points,) int32 mode labels).

  Raises:
    ValueError: non-positive std or num_points.
  """
  if std <= 0:
    raise ValueError(f"std must be positive, got {std}.")
  if num_points < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}.")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, means.shape[0], size=num_points).astype(np.int32)
  points = means[labels] + std * rng.standard_normal((num_points, means.shape[1]))
  return points.astype(np.float32), labels


def make_ring(seed: int = 0, num_points: int = NUM_TRAINING_POINTS, num_modes: int = 8,
              radius: float = 1.0, std: float = RING_STD) -> GaussianMixtureData:
  """PacGAN's 2-D ring: 8 Gaussians on the unit circle, std 0.01, 100,000 points."""
  means = ring_means(num_modes, radius)
  points, labels = sample_mixture(means, std, num_points, seed)
  return GaussianMixtureData("ring", means, float(std), points, labels, int(seed))


def make_grid(seed: int = 0, num_points: int = NUM_TRAINING_POINTS,
              values: Sequence[float] = (-4, -2, 0, 2, 4),
              std: float = GRID_STD) -> GaussianMixtureData:
  """PacGAN's 2-D grid: 25 Gaussians at {-4, -2, 0, 2, 4}^2, std 0.05, 100,000 points."""
  means = grid_means(values)
  points, labels = sample_mixture(means, std, num_points, seed)
  return GaussianMixtureData("grid", means, float(std), points, labels, int(seed))


def load_synthetic(name: str, seed: int = 0,
                   num_points: int = NUM_TRAINING_POINTS) -> GaussianMixtureData:
  """"ring" or "grid" by name (see `make_ring`, `make_grid`).

  Raises:
    ValueError: unknown name, listing the known ones.
  """
  if name == "ring":
    return make_ring(seed, num_points)
  if name == "grid":
    return make_grid(seed, num_points)
  raise ValueError(f"unknown synthetic set {name!r}; known: {', '.join(SYNTHETIC_SETS)}.")


@dataclasses.dataclass(frozen=True)
class StackedMNIST:
  """Stacked MNIST: example i is digits[index[i, c]] in channel c, mode = the digit triple.

  Stored as indices into the source digits (no 28x28x3 copy of every example), so 128,000 stacks
  cost 1.5 MB; `get` builds the images.

  Attributes:
    digits: (M, 28, 28, 1) uint8 source digits.
    digit_labels: (M,) int32 their labels 0..9.
    index: (N, 3) int32 indices into `digits`, one per channel.
    seed: the numpy seed the triples were drawn with.
  """
  digits: np.ndarray
  digit_labels: np.ndarray
  index: np.ndarray
  seed: int

  num_modes = 1000

  def __len__(self) -> int:
    return int(self.index.shape[0])

  @property
  def labels(self) -> np.ndarray:
    """(N, 3) int32 digit of each channel."""
    return self.digit_labels[self.index]

  @property
  def modes(self) -> np.ndarray:
    """(N,) int32 mode ids 100 * d0 + 10 * d1 + d2."""
    d = self.labels
    return (100 * d[:, 0] + 10 * d[:, 1] + d[:, 2]).astype(np.int32)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(len(indices), 28, 28, 3) uint8 images and their (len(indices),) int32 modes."""
    idx = self.index[np.asarray(indices)]
    images = np.concatenate([self.digits[idx[:, c]] for c in range(3)], axis=-1)
    d = self.digit_labels[idx]
    return images, (100 * d[:, 0] + 10 * d[:, 1] + d[:, 2]).astype(np.int32)


def make_stacked_mnist(seed: int = 0, num_examples: int = 128_000, dataset=None,
                       split: str = "train") -> StackedMNIST:
  """Stacked MNIST from the bundled MNIST digits (VEEGAN / PacGAN Table 2 setting).

  Each channel's digit is drawn uniformly with replacement from the split's digits, independently
  per channel (the paper's code draws indices the same way from the 70,000 MNIST digits; here the
  8,000 bundled training digits, or the dataset you pass).

  Args:
    seed: numpy seed of the triples.
    num_examples: number of stacks (the paper: 128,000 for VEEGAN's setting).
    dataset: a `fastnets.data.Dataset` of 28x28x1 digits; default
      `load_dataset("mnist_bundled")`.
    split: "train" or "validation".

  Raises:
    ValueError: a dataset that is not single-channel, or a bad split / size.
  """
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
  if split not in ("train", "validation"):
    raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
  if dataset is None:
    dataset = load_dataset(BUNDLED_MNIST)
  source = getattr(dataset, split)
  digits, labels = source.get(np.arange(len(source)))
  if digits.ndim != 4 or digits.shape[-1] != 1:
    raise ValueError(f"stacked MNIST needs single-channel digits (N, H, W, 1), got {digits.shape}.")
  rng = np.random.default_rng(seed)
  index = rng.integers(0, digits.shape[0], size=(num_examples, 3)).astype(np.int32)
  return StackedMNIST(np.asarray(digits, np.uint8), np.asarray(labels, np.int32), index, int(seed))


def to_tanh_range(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [-1, 1] (the range of a tanh generator's output)."""
  return images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def from_tanh_range(images: np.ndarray) -> np.ndarray:
  """[-1, 1] images -> float32 in [0, 1] (what `Dataset.normalize` accepts as floats)."""
  return (np.asarray(images, np.float32) + np.float32(1.0)) * np.float32(0.5)
