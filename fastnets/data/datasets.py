"""Image classification datasets as numpy arrays: bundled MNIST, IDX directories, tfds by name.

`load_dataset("mnist_bundled" | "idx:/path" | tfds name)` returns a `Dataset` with three
`ArraySource` splits, `train`, `validation` ("val") and `test`, the number of classes, the image
shape and per-channel normalisation statistics measured on the training split.

The splits have fixed roles: training fits parameters, `validation` is the only split tuning may
score on, and `test` is read once per evaluation seed for the numbers that are reported.
`Dataset.without_test()` is the view that tuning code receives: it has no test arrays, so a tuning
path cannot read them by accident.
"""

import dataclasses
import difflib
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
# The 10,000 bundled digits: 7,000 train / 1,000 validation / 2,000 test, by one fixed permutation.
BUNDLED_TRAIN_SIZE = 7000
BUNDLED_VAL_SIZE = 1000
BUNDLED_TEST_SIZE = 2000
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation"}
_SPLIT_SEED = 20150612  # Fixed: the bundled split must never change between versions.


class DatasetError(ValueError):
  """A dataset name, file or directory that cannot be used, with the fix in the message."""


class HiddenSplitError(DatasetError):
  """The test split was read through a tuning view (`Dataset.without_test()`)."""


class _HiddenTestSplit:
  """Stands in for the test split of a tuning view: every access raises `HiddenSplitError`."""

  def _refuse(self, *args, **kwargs):
    raise HiddenSplitError("the test split is hidden from tuning code: score on 'validation' and "
                           "evaluate on 'test' only outside the tuning loop.")

  __len__ = get = _refuse

  def __bool__(self) -> bool:
    return False


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
    validation: held-out examples used for `val_accuracy` and for every tuning decision.
    test: the examples reported numbers come from; never used for tuning. None when a dataset has
      no test split (a dataset built by hand), hidden in `without_test()` views.
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
  test: Optional[ArraySource] = None

  @property
  def has_test(self) -> bool:
    """Whether the test split can be read (False for a tuning view or a dataset without one)."""
    return self.test is not None and not isinstance(self.test, _HiddenTestSplit)

  def split(self, name: str) -> ArraySource:
    """The split called `name` ("train", "validation" or "val", "test").

    Raises:
      DatasetError: unknown name (the message lists the splits); HiddenSplitError for "test" in
        a tuning view; DatasetError for "test" when the dataset has none.
    """
    key = _SPLIT_ALIASES.get(name, name)
    if key not in SPLITS:
      raise DatasetError(f"unknown split {name!r}; splits: {list(SPLITS)} ('val' = "
                         "'validation').")
    source = getattr(self, key)
    if source is None:
      raise DatasetError(f"dataset {self.name!r} has no {key} split.")
    if isinstance(source, _HiddenTestSplit):
      source.get()
    return source

  def without_test(self) -> "Dataset":
    """The same dataset with its test split hidden: what tuning code receives."""
    return dataclasses.replace(self, test=_HiddenTestSplit())

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
                 test_images, test_labels, num_classes: Optional[int] = None) -> Dataset:
  splits = {}
  for split, images, labels in (("train", train_images, train_labels),
                                ("validation", val_images, val_labels),
                                ("test", test_images, test_labels)):
    images = _as_nhwc(images, name)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    splits[split] = (images, labels)
  shapes = {split: images.shape[1:] for split, (images, _) in splits.items()}
  if len(set(shapes.values())) != 1:
    raise DatasetError(f"{name}: the splits' images differ in shape: {shapes}.")
  if num_classes is None:
    num_classes = int(max(labels.max() for _, labels in splits.values() if labels.size)) + 1
  mean, std = _channel_stats(splits["train"][0])
  sources = {split: InMemorySource(*arrays) for split, arrays in splits.items()}
  return Dataset(name=name, train=sources["train"], validation=sources["validation"],
                 test=sources["test"], num_classes=num_classes,
                 image_shape=tuple(splits["train"][0].shape[1:]), mean=mean, std=std)


def carve_validation(num_examples: int, validation_fraction: float, seed: int,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
  """Train and validation indices: a seeded `validation_fraction` of `num_examples` held out.

  Raises:
    DatasetError: too few examples to leave at least one in each part (names the sizes).
  """
  if not 0 < validation_fraction < 1:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
  n_val = int(round(validation_fraction * num_examples))
  if n_val < 1 or num_examples - n_val < 1:
    raise DatasetError(f"{what}: {num_examples} training examples are too few to carve a "
                       f"validation split of fraction {validation_fraction} ({n_val} validation, "
                       f"{num_examples - n_val} train); need at least one in each.")
  order = np.random.default_rng(seed).permutation(num_examples)
  return order[n_val:], order[:n_val]


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


def bundled_split_indices(num_examples: int = 10000) -> dict[str, np.ndarray]:
  """The fixed rule that splits the bundled digits: one permutation of 0..9999 by the constant
  seed of this module; its first 2,000 are test, the next 1,000 validation, the last 7,000 train.

  The test digits never change between versions (a test pins them). They are digits no earlier
  version ever scored on: fastnets <= 0.1 split the same permutation 8,000 train (first) /
  2,000 validation (last), and those 2,000 once-tuned-on digits are now training digits.
  """
  if num_examples != BUNDLED_TRAIN_SIZE + BUNDLED_VAL_SIZE + BUNDLED_TEST_SIZE:
    raise DatasetError(f"the bundled MNIST must hold 10,000 digits, found {num_examples}.")
  order = np.random.default_rng(_SPLIT_SEED).permutation(num_examples)
  a, b = BUNDLED_TEST_SIZE, BUNDLED_TEST_SIZE + BUNDLED_VAL_SIZE
  return {"test": order[:a], "validation": order[a:b], "train": order[b:]}


def load_bundled_mnist(directory: Optional[str] = None) -> Dataset:
  """The 10,000 real MNIST test digits shipped with fastnets, split 7,000 train / 1,000 val /
  2,000 test by `bundled_split_indices` (identical on every machine, never changing)."""
  paths = verify_bundled_mnist(directory)
  images = idx.read_idx(paths["t10k-images-idx3-ubyte.gz"])
  labels = idx.read_idx(paths["t10k-labels-idx1-ubyte.gz"])
  parts = bundled_split_indices(images.shape[0])
  return _from_arrays(BUNDLED_MNIST, *(a for s in SPLITS for a in (images[parts[s]],
                                                                     labels[parts[s]])),
                      num_classes=10)


def load_idx_directory(directory: str, validation_fraction: float = 0.1, seed: int = 0) -> Dataset:
  """A dataset from a directory of MNIST-format IDX files (any image size, gzipped or not).

  Train files (`*train-images-idx3-ubyte[.gz]`, `*train-labels-idx1-ubyte[.gz]`) are required.
  The test files (`t10k-*` or `*test-*`) are the test split; the validation split is a seeded
  `validation_fraction` carved from the training files. Without test files, a test split of the
  same fraction is carved from the training files first (by the same seed).
  """
  files = idx.find_idx_files(directory)
  if files["train"] is None or files["train_labels"] is None:
    raise DatasetError(f"IDX directory {directory!r} needs train-images-idx3-ubyte[.gz] and "
                       f"train-labels-idx1-ubyte[.gz] (found: {sorted(os.listdir(directory))}).")
  name = f"idx:{directory}"
  images, labels = idx.read_idx(files["train"]), idx.read_idx(files["train_labels"])
  idx.check_idx_pair(images, labels, files["train"], files["train_labels"])
  if files["test"] and files["test_labels"]:
    test_images, test_labels = idx.read_idx(files["test"]), idx.read_idx(files["test_labels"])
    idx.check_idx_pair(test_images, test_labels, files["test"], files["test_labels"])
    if test_images.shape[1:] != images.shape[1:]:
      raise DatasetError(f"{files['test']}: test images have shape {test_images.shape[1:]}, the "
                         f"training images {images.shape[1:]}.")
  else:
    rest, test = carve_validation(images.shape[0], validation_fraction, seed + 1,
                                  f"{name} (test split, no t10k/test files)")
    test_images, test_labels = images[test], labels[test]
    images, labels = images[rest], labels[rest]
  train, val = carve_validation(images.shape[0], validation_fraction, seed, name)
  return _from_arrays(name, images[train], labels[train], images[val], labels[val],
                      test_images, test_labels)


def _tfds_how_to(name: str, data_dir: Optional[str]) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (f"On a machine with internet access, prepare it with\n"
          f"  tfds build {name} --data_dir={where} --file_format=array_record\n"
          f"(ImageNet and other manual datasets need their archives in {where}/downloads/manual, "
          f"see the tfds catalog page of {name!r}), copy the directory here, and pass "
          f"--data_dir={where}. Offline, the bundled MNIST (--dataset={BUNDLED_MNIST}) and "
          f"--dataset=idx:/path/to/idx_dir always work.")


def load_tfds(name: str, data_dir: Optional[str] = None, train_split: str = "train",
              validation_split: Optional[str] = None, test_split: str = "test",
              image_key: str = "image", label_key: str = "label",
              validation_fraction: float = 0.1) -> Dataset:
  """A tensorflow-datasets dataset, read without downloading.

  Uses tfds' random-access `data_source` (array_record files; no TensorFlow needed) and loads the
  splits into memory. `test` is the builder's official test split. The validation split is the
  builder's "validation" split when it has one, else the last `validation_fraction` of the train
  split (a contiguous tail, so it is the same whatever the seed).

  Raises:
    DatasetError: tfds does not know `name`, or the dataset is not prepared in `data_dir`; the
      message says how to prepare it.
  """
  import tensorflow_datasets as tfds  # Imported here: tfds is slow to import.

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = [BUNDLED_MNIST, *tfds.list_builders(with_community_datasets=False)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    raise DatasetError(f"unknown dataset {name!r}: tfds does not know it (use the bundled "
                       f"{BUNDLED_MNIST!r}, 'idx:/path/to/dir' or a tfds catalog name).{hint}"
                       ) from e
  if validation_split is None and "validation" in builder.info.splits:
    validation_split = "validation"
  arrays = {}
  for split in dict.fromkeys(s for s in (train_split, validation_split, test_split) if s):
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
  train_images, train_labels = arrays[train_split]
  if validation_split is None:
    n = train_images.shape[0]
    n_val = int(round(validation_fraction * n))
    if not 0 < validation_fraction < 1 or n_val < 1 or n - n_val < 1:
      raise DatasetError(f"tfds dataset {name!r}: {n} training examples are too few to carve a "
                         f"validation split of fraction {validation_fraction} ({n_val} "
                         f"validation, {n - n_val} train).")
    val_arrays = (train_images[n - n_val:], train_labels[n - n_val:])
    train_images, train_labels = train_images[:n - n_val], train_labels[:n - n_val]
  else:
    val_arrays = arrays[validation_split]
  label_feature = builder.info.features[label_key]
  num_classes = getattr(label_feature, "num_classes", None)
  return _from_arrays(name, train_images, train_labels, *val_arrays, *arrays[test_split],
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
