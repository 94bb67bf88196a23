"""Sequence classification tasks: sequences of digit frames, and videos as frame sequences.

The Block-Term RNN paper (Ye et al. 2018, CVPR) classifies videos read as sequences of flattened
frames. `make_digit_sequences` builds a small task of the same shape from a digit dataset, so the
recurrent models can be compared offline: each example is T digit images (one flattened frame per
step) and its label needs the whole sequence.

* task "mode": one digit appears `mode_count` times and the other T - mode_count frames are
  pairwise different other digits, in random order; the label is the repeated digit (10 balanced
  classes, the mode unique by construction). Any single frame is the answer with probability
  mode_count / T, so every frame must be recognised and counted; an LSTM can learn it by keeping
  a count per digit class in its cell state.
* task "sum_mod10": uniform digits, the label is their sum mod 10 (needs modular arithmetic over
  all the recognitions, a much harder task).

Each split's sequences are built only from the same split's digits (training sequences from the
training digits, and so on), deterministically from a seed. The result is an ordinary
`Dataset` of images (N, T, F, 1) uint8, one row per frame, with the base dataset's pixel mean
and std, so `fastnets.train.fit` trains it unchanged.

`load_video_dataset` reads a prepared tensorflow-datasets video set (e.g. "ucf101") as the same
kind of frame sequences (`video_frames` subsamples and resizes each video).
"""

from __future__ import annotations

import numpy as np

from fastnets.data.datasets import Dataset, DatasetError, InMemorySource

__all__ = ["SEQUENCE_TASKS", "load_video_dataset", "make_digit_sequences", "video_frames"]

SEQUENCE_TASKS = ("mode", "sum_mod10")


def _sequence_digits(rng: np.random.Generator, n: int, seq_len: int, task: str,
                     mode_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Digit classes (n, seq_len) and labels (n,) of `n` sequences of the task."""
  if task == "sum_mod10":
    digits = rng.integers(0, 10, size=(n, seq_len))
    return digits, (digits.sum(axis=1) % 10).astype(np.int32)
  labels = rng.integers(0, 10, size=n).astype(np.int32)
  digits = np.empty((n, seq_len), np.int64)
  for k in range(n):
    others = rng.permutation(np.delete(np.arange(10), labels[k]))[:seq_len - mode_count]
    digits[k] = rng.permutation(np.concatenate([np.full(mode_count, labels[k]), others]))
  return digits, labels


def _sequence_images(rng: np.random.Generator, source, digits: np.ndarray) -> np.ndarray:
  """For each digit class in `digits` (n, T) a random image of that class of `source`:
  (n, T, H * W * C, 1) uint8."""
  images, labels = source.get(np.arange(len(source)))
  index = np.empty(digits.shape, np.int64)
  for c in range(10):
    where = digits == c
    pool = np.flatnonzero(labels == c)
    if where.any() and pool.size == 0:
      raise ValueError(f"the digit split has no example of class {c}.")
    index[where] = rng.choice(pool, size=int(where.sum()))
  n, t = digits.shape
  return images[index].reshape(n, t, -1, 1)


def make_digit_sequences(base: Dataset, task: str = "mode", seq_len: int = 8,
                         mode_count: int = 3, train_sequences: int = 8000,
                         val_sequences: int = 1000, seed: int = 0,
                         test_sequences: int = 2000) -> Dataset:
  """Sequences of digit frames built deterministically from a digit dataset.

  Args:
    base: a digit classification dataset with labels 0..9 (the bundled MNIST).
    task: "mode": one digit appears `mode_count` times, the other `seq_len - mode_count` frames
      are pairwise different other digits, label = the repeated digit; "sum_mod10": uniform
      digits, label = their sum mod 10.
    seq_len: frames per sequence T.
    mode_count: copies of the label digit ("mode" task; >= 2 and seq_len - mode_count <= 9).
    train_sequences: sequences made of the train split's digits.
    val_sequences: sequences made of the validation split's digits.
    seed: the construction seed (same seed, same sequences).
    test_sequences: sequences made of the test split's digits (none when `base` has no test
      split); each split's sequences use only that split's digits.

  Returns:
    A `fastnets.Dataset` named "digit_seq_<task>_<T>" with images (N, T, F, 1) uint8
    (F = H * W * C of `base`, one row per frame), 10 classes, and the base's pixel mean/std.

  Raises:
    ValueError: unknown task, or sizes that cannot be built.
  """
  if task not in SEQUENCE_TASKS:
    raise ValueError(f"task must be one of {SEQUENCE_TASKS}, got {task!r}.")
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}.")
  if task == "mode" and not (2 <= mode_count <= seq_len and seq_len - mode_count <= 9):
    raise ValueError(f"mode_count must be in [max(2, seq_len - 9), seq_len] = "
                     f"[{max(2, seq_len - 9)}, {seq_len}] for the 'mode' task, got {mode_count}.")
  if train_sequences < 1 or val_sequences < 1:
    raise ValueError(f"train_sequences and val_sequences must be positive, got "
                     f"{train_sequences} and {val_sequences}.")
  if base.num_classes != 10:
    raise ValueError(f"base must be a 10-class digit dataset, got {base.num_classes} classes.")
  parts = [(base.train, train_sequences), (base.validation, val_sequences)]
  if base.has_test:
    if test_sequences < 1:
      raise ValueError(f"test_sequences must be positive, got {test_sequences}.")
    parts.append((base.test, test_sequences))
  splits = {}
  for k, (split, n) in enumerate(parts):
    rng = np.random.default_rng([seed, k])
    digits, labels = _sequence_digits(rng, n, seq_len, task, mode_count)
    splits[k] = InMemorySource(_sequence_images(rng, split, digits), labels)
  return Dataset(name=f"digit_seq_{task}_{seq_len}", train=splits[0], validation=splits[1],
                      test=splits.get(2), num_classes=10,
                      image_shape=tuple(splits[0].images.shape[1:]), mean=base.mean,
                      std=base.std)


def video_frames(video: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
  """`num_frames` evenly spaced frames of a video, resized (nearest pixel) and flattened.

  Args:
    video: uint8 (T, H, W, C).
    num_frames: frames to keep (repeats frames of videos shorter than that).
    height, width: output frame size.

  Returns:
    uint8 (num_frames, height * width * C), each frame flattened row-major (h, w, c).
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[0] < 1:
    raise ValueError(f"video must have shape (T, H, W, C) with T >= 1, got {video.shape}.")
  t = np.linspace(0, video.shape[0] - 1, num_frames).round().astype(int)
  rows = (np.arange(height) * video.shape[1] / height).astype(int)
  cols = (np.arange(width) * video.shape[2] / width).astype(int)
  frames = video[t][:, rows][:, :, cols]
  return frames.reshape(num_frames, -1)


def load_video_dataset(name: str, data_dir, num_frames: int, height: int,
                       width: int) -> Dataset:
  """A prepared tfds video dataset (e.g. "ucf101") as frame sequences (N, T, H*W*C, 1) uint8.

  The "test" split is the test split; the last tenth of "train" is the validation split. Nothing
  is downloaded.

  Raises:
    fastnets.DatasetError: tfds cannot load it (unknown here, not prepared, no TensorFlow
      to decode videos); the message says how to prepare it.
  """
  import tensorflow_datasets as tfds

  how = (f"Prepare it once with TensorFlow installed and network access: `python -c \"import "
         f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')."
         f"download_and_prepare(file_format='array_record')\"`, then pass --data_dir=DIR.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = {s: builder.as_data_source(split=s) for s in ("train", "test")}
  except Exception as e:  # tfds raises many types here (not found, not prepared, no TF).
    raise DatasetError(f"video dataset {name!r} cannot be loaded from "
                            f"{data_dir or 'the default data_dir'}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}\n{how}") from e
  arrays = []
  for split in ("train", "test"):
    source = splits[split]
    frames = np.stack([video_frames(source[i]["video"], num_frames, height, width)
                       for i in range(len(source))])
    labels = np.asarray([source[i]["label"] for i in range(len(source))], np.int32)
    arrays.append(InMemorySource(frames[..., None], labels))
  train_all, test = arrays
  n_val = max(1, len(train_all) // 10)
  keep = np.arange(len(train_all) - n_val)
  held = np.arange(len(train_all) - n_val, len(train_all))
  arrays = [InMemorySource(*train_all.get(keep)), InMemorySource(*train_all.get(held))]
  sample = arrays[0].images[:256].astype(np.float32) / 255.0
  num_classes = builder.info.features["label"].num_classes
  # One "channel": the per-pixel-and-colour mean/std over everything (frames are flattened).
  return Dataset(name=name, train=arrays[0], validation=arrays[1], test=test,
                      num_classes=num_classes,
                      image_shape=tuple(arrays[0].images.shape[1:]),
                      mean=np.asarray([sample.mean()], np.float32),
                      std=np.asarray([max(sample.std(), 1e-3)], np.float32))
