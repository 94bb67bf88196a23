"""Image classification datasets as numpy arrays: bundled MNIST, IDX directories, tfds by name.

`load_dataset("mnist_bundled" | "idx:/path" | tfds name)` returns a `Dataset` with a train and a
validation `ArraySource`, the number of classes, the image shape and per-channel normalisation
statistics measured on the training split.
"""

import dataclasses
import hashlib
import importlib.resources
import os
from typing import Optional, Protocol

import numpy as np

from fastnets.data import idx

BUNDLED_MNIST = "mnist_bundled"
# sha256 of the bundled files (the original t10k files, see fastnets/data/files/README.md).
BUNDLED_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
    "t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
}
BUNDLED_TRAIN_SIZE = 8000  # The remaining 2,000 are the validation split.
_SPLIT_SEED = 20150612  # Fixed: the bundled split must never change between versions.


class DatasetError(ValueError):
  """A dataset name, file or directory that cannot be used, with the fix in the message."""


class ArraySource(Protocol):
  """Random access to (image, label) examples. Images are (H, W, C) uint8 or float32."""

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns images (len(indices), H, W, C) and int32 labels (len(indices),)."""
    ...


@dataclasses.dataclass(frozen=True)
class InMemorySource:
  """An `ArraySource` over numpy arrays held in memory."""
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4:
      raise ValueError(f"images must be (N, H, W, C), got shape {self.images.shape}.")
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"labels must be (N,) = {self.images.shape[:1]}, got {self.labels.shape}.")

  def __len__(self) -> int:
    return self.images.shape[0]

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset ready for batching.

  Attributes:
    name: the name it was loaded by.
    train: training examples.
    validation: held-out examples used for `val_accuracy`.
    num_classes: number of label values (labels are 0 .. num_classes - 1).
    image_shape: (H, W, C) of every example.
    mean, std: per-channel statistics of the training images on the [0, 1] scale (float32, (C,)),
      used by `normalize`.
  """
  name: str
  train: ArraySource
  validation: ArraySource
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: np.ndarray
  std: np.ndarray

  def normalize(self, images: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 1] float) images -> float32 with zero mean, unit variance per channel."""
    scale = np.float32(1.0 / 255.0) if images.dtype == np.uint8 else np.float32(1.0)
    return (images.astype(np.float32) * scale - self.mean) / self.std


def _channel_stats(images: np.ndarray, max_examples: int = 10000) -> tuple[np.ndarray, np.ndarray]:
  sample = images[:max_examples].astype(np.float32)
  if images.dtype == np.uint8:
    sample /= 255.0
  mean = sample.mean(axis=(0, 1, 2))
  std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3)
  return mean.astype(np.float32), std.astype(np.float32)


def _as_nhwc(images: np.ndarray, what: str) -> np.ndarray:
  if images.ndim == 3:
    return images[..., None]
  if images.ndim == 4:
    return images
  raise DatasetError(f"{what}: images must have 3 (N, H, W) or 4 (N, H, W, C) dimensions, got "
                     f"shape {images.shape}.")


def _from_arrays(name: str, train_images, train_labels, val_images, val_labels,
                 num_classes: Optional[int] = None) -> Dataset:
  train_images = _as_nhwc(train_images, name)
  val_images = _as_nhwc(val_images, name)
  if train_images.shape[1:] != val_images.shape[1:]:
    raise DatasetError(f"{name}: train images {train_images.shape[1:]} and validation images "
                       f"{val_images.shape[1:]} differ in shape.")
  train_labels = np.asarray(train_labels).astype(np.int32).reshape(-1)
  val_labels = np.asarray(val_labels).astype(np.int32).reshape(-1)
  if num_classes is None:
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
  mean, std = _channel_stats(train_images)
  return Dataset(name=name, train=InMemorySource(train_images, train_labels),
                 validation=InMemorySource(val_images, val_labels), num_classes=num_classes,
                 image_shape=tuple(train_images.shape[1:]), mean=mean, std=std)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def bundled_mnist_dir() -> str:
  """The directory of the bundled MNIST test-set files inside the installed package."""
  return str(importlib.resources.files("fastnets.data") / "files")


def verify_bundled_mnist(directory: Optional[str] = None) -> dict[str, str]:
  """Checks the sha256 of the bundled MNIST files; returns {filename: path}.

  Raises:
    DatasetError: a file is missing or its checksum differs (corrupt or replaced).
  """
  directory = directory or bundled_mnist_dir()
  paths = {}
  for filename, expected in BUNDLED_SHA256.items():
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
      raise DatasetError(f"bundled MNIST file {path} is missing; reinstall fastnets "
                         "(pip install -e .) or restore it from the repository.")
    actual = _sha256(path)
    if actual != expected:
      raise DatasetError(f"bundled MNIST file {path} is corrupt: sha256 {actual}, expected "
                         f"{expected}. Restore it from the repository (git checkout -- {path}).")
    paths[filename] = path
  return paths


def load_bundled_mnist(directory: Optional[str] = None) -> Dataset:
  """The 10,000 real MNIST test digits shipped with fastnets, split 8,000 train / 2,000 val.

  The split is a fixed permutation (seed constant in this module), identical on every machine.
  """
  paths = verify_bundled_mnist(directory)
  images = idx.read_idx(paths["t10k-images-idx3-ubyte.gz"])
  labels = idx.read_idx(paths["t10k-labels-idx1-ubyte.gz"])
  order = np.random.default_rng(_SPLIT_SEED).permutation(images.shape[0])
  train, val = order[:BUNDLED_TRAIN_SIZE], order[BUNDLED_TRAIN_SIZE:]
  return _from_arrays(BUNDLED_MNIST, images[train], labels[train], images[val], labels[val],
                      num_classes=10)


def load_idx_directory(directory: str, validation_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """A dataset from a directory of MNIST-format IDX files (any image size, gzipped or not).

  Train files (`*train-images-idx3-ubyte[.gz]`, `*train-labels-idx1-ubyte[.gz]`) are required;
  the test files (`t10k-*` or `*test-*`) become the validation split. Without test files, a seeded
  `validation_fraction` of the training files is held out.
  """
  files = idx.find_idx_files(directory)
  if files["train"] is None or files["train_labels"] is None:
    raise DatasetError(f"IDX directory {directory!r} needs train-images-idx3-ubyte[.gz] and "
                       f"train-labels-idx1-ubyte[.gz] (found: {sorted(os.listdir(directory))}).")
  name = f"idx:{directory}"
  images, labels = idx.read_idx(files["train"]), idx.read_idx(files["train_labels"])
  if images.shape[0] != labels.shape[0]:
    raise DatasetError(f"{files['train']} has {images.shape[0]} images but "
                       f"{files['train_labels']} has {labels.shape[0]} labels.")
  if files["test"] and files["test_labels"]:
    val_images, val_labels = idx.read_idx(files["test"]), idx.read_idx(files["test_labels"])
    return _from_arrays(name, images, labels, val_images, val_labels)
  if not 0 < validation_fraction < 1:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
  order = np.random.default_rng(seed).permutation(images.shape[0])
  n_val = max(1, int(round(validation_fraction * images.shape[0])))
  val, train = order[:n_val], order[n_val:]
  return _from_arrays(name, images[train], labels[train], images[val], labels[val])


def _tfds_how_to(name: str, data_dir: Optional[str]) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (f"On a machine with internet access, prepare it with\n"
          f"  tfds build {name} --data_dir={where} --file_format=array_record\n"
          f"(ImageNet and other manual datasets need their archives in {where}/downloads/manual, "
          f"see the tfds catalog page of {name!r}), copy the directory here, and pass "
          f"--data_dir={where}. Offline, the bundled MNIST (--dataset={BUNDLED_MNIST}) and "
          f"--dataset=idx:/path/to/idx_dir always work.")


def load_tfds(name: str, data_dir: Optional[str] = None, train_split: str = "train",
              validation_split: Optional[str] = None, image_key: str = "image",
              label_key: str = "label") -> Dataset:
  """A tensorflow-datasets dataset, read without downloading.

  Uses tfds' random-access `data_source` (array_record files; no TensorFlow needed) and loads the
  splits into memory. The validation split defaults to "validation" when the dataset has one, else
  "test".

  Raises:
    DatasetError: tfds does not know `name`, or the dataset is not prepared in `data_dir`; the
      message says how to prepare it.
  """
  import tensorflow_datasets as tfds  # Imported here: tfds is slow to import.

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(f"unknown dataset {name!r}: tfds does not know it (use the bundled "
                       f"{BUNDLED_MNIST!r}, 'idx:/path/to/dir' or a tfds catalog name).") from e
  if validation_split is None:
    validation_split = "validation" if "validation" in builder.info.splits else "test"
  arrays = {}
  for split in (train_split, validation_split):
    try:
      source = builder.as_data_source(split=split)
    except NotImplementedError as e:  # tfds' answer both when unprepared and for TFRecord data.
      if not builder.is_prepared():
        raise DatasetError(f"tfds dataset {name!r} is not prepared in "
                           f"{data_dir or 'the default data_dir'} and this run does not "
                           "download.\n" + _tfds_how_to(name, data_dir)) from e
      raise DatasetError(f"tfds dataset {name!r} is prepared in a format without random "
                         "access (TFRecord). " + _tfds_how_to(name, data_dir)) from e
    except (KeyError, ValueError) as e:
      raise DatasetError(f"tfds dataset {name!r} has no split {split!r}: {e}") from e
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex[image_key]) for ex in examples])
    labels = np.asarray([ex[label_key] for ex in examples])
    arrays[split] = (images, labels)
  label_feature = builder.info.features[label_key]
  num_classes = getattr(label_feature, "num_classes", None)
  return _from_arrays(name, *arrays[train_split], *arrays[validation_split],
                      num_classes=num_classes)


def load_dataset(name: str = BUNDLED_MNIST, data_dir: Optional[str] = None) -> Dataset:
  """Loads a dataset by name.

  Args:
    name: "mnist_bundled" (the offline default), "idx:/path/to/dir" (MNIST-format IDX files), or
      a tensorflow-datasets name such as "mnist", "cifar10", "imagenet2012".
    data_dir: tfds data directory (ignored otherwise).

  Raises:
    DatasetError: unknown name, corrupt bundled files, or a dataset unavailable offline (with the
      command that makes it available).
  """
  if not isinstance(name, str) or not name:
    raise DatasetError(f"dataset must be a non-empty name, got {name!r}.")
  if name == BUNDLED_MNIST:
    return load_bundled_mnist()
  if name.startswith("idx:"):
    return load_idx_directory(os.path.expanduser(name[len("idx:"):]))
  return load_tfds(name, data_dir=data_dir)
