"""Deterministic numpy batches: the batch of step s depends only on (seed, s).

That is what makes resumption exact: a run restarted at step s gets the same batches an
uninterrupted run would have seen, without saving any iterator state.
"""

from typing import Iterator, Optional

import numpy as np

from fastnets.data.datasets import ArraySource, Dataset


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder of each epoch's permutation is dropped)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if num_examples < batch_size:
    raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training "
                     "examples; use a smaller --batch_size.")
  return num_examples // batch_size


def train_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Indices of the examples in training batch `step`: epoch-wise seeded permutations."""
  epoch, offset = divmod(step, steps_per_epoch(num_examples, batch_size))
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[offset * batch_size:(offset + 1) * batch_size]


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """CIFAR augmentation (He et al. 2016): zero-pad by `pad`, random crop back, random h-flip."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy = rng.integers(0, 2 * pad + 1, size=n)
  dx = rng.integers(0, 2 * pad + 1, size=n)
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out


def train_batches(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0,
                  num_steps: Optional[int] = None, augment: str = "none") -> Iterator[dict]:
  """Yields normalised training batches {"image": (B, H, W, C) float32, "label": (B,) int32}.

  Args:
    dataset: the dataset (its train split is used).
    batch_size: global batch size (every batch has exactly this many examples).
    seed: shuffling seed.
    start_step: first step to produce (resumption).
    num_steps: how many batches; None for an endless stream.
    augment: "none" or "crop_flip" (seeded by (seed, step), so also exactly resumable).
  """
  if augment not in ("none", "crop_flip"):
    raise ValueError(f"augment must be 'none' or 'crop_flip', got {augment!r}.")
  n = len(dataset.train)
  per_epoch = steps_per_epoch(n, batch_size)
  step, order, order_epoch = start_step, None, -1
  while num_steps is None or step < start_step + num_steps:
    epoch, offset = divmod(step, per_epoch)
    if epoch != order_epoch:
      order, order_epoch = np.random.default_rng([seed, epoch]).permutation(n), epoch
    indices = np.sort(order[offset * batch_size:(offset + 1) * batch_size])
    images, labels = dataset.train.get(indices)
    if augment == "crop_flip":
      images = random_crop_flip(images, np.random.default_rng([seed, step, 1]))
    yield {"image": dataset.normalize(images), "label": labels.astype(np.int32)}
    step += 1


def eval_batches(dataset: Dataset, source: ArraySource, batch_size: int) -> Iterator[dict]:
  """Yields every example of `source` once in fixed-shape batches.

  The last batch is padded by repeating example 0; its "mask" (float32, 1 for real examples, 0 for
  padding) lets metrics ignore the padding, so every batch has the same shape (no recompilation).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  n = len(source)
  for start in range(0, n, batch_size):
    indices = np.arange(start, min(start + batch_size, n))
    mask = np.ones(batch_size, np.float32)
    if len(indices) < batch_size:
      mask[len(indices):] = 0.0
      indices = np.concatenate([indices, np.zeros(batch_size - len(indices), indices.dtype)])
    images, labels = source.get(indices)
    yield {"image": dataset.normalize(images), "label": labels.astype(np.int32), "mask": mask}
