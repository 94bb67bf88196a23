"""fastnets.data: bundled MNIST checksums and split, IDX files, tfds path, batching."""

import gzip
import os
import shutil

import numpy as np
import pytest

from fastnets import data


def test_bundled_checksums_verify():
  paths = data.verify_bundled_mnist()
  assert set(paths) == {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}


def test_corrupt_bundled_file_is_detected(tmp_path):
  for name in data.datasets.BUNDLED_SHA256:
    shutil.copy(os.path.join(data.bundled_mnist_dir(), name), tmp_path / name)
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(path.read_bytes())
  raw[-1] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DatasetError, match="corrupt.*sha256"):
    data.load_bundled_mnist(str(tmp_path))


def test_missing_bundled_file_is_detected(tmp_path):
  with pytest.raises(data.DatasetError, match="missing"):
    data.verify_bundled_mnist(str(tmp_path))


def test_bundled_split_is_deterministic_and_complete(mnist):
  again = data.load_bundled_mnist()
  assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (7000, 1000, 2000)
  np.testing.assert_array_equal(mnist.train.labels, again.train.labels)
  np.testing.assert_array_equal(mnist.validation.images, again.validation.images)
  np.testing.assert_array_equal(mnist.test.images, again.test.images)
  counts = np.bincount(np.concatenate([mnist.train.labels, mnist.validation.labels,
                                       mnist.test.labels]))
  np.testing.assert_array_equal(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert mnist.image_shape == (28, 28, 1) and mnist.num_classes == 10


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_round_trip(tmp_path, gzipped):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(7, 5, 9), dtype=np.uint8)
  path = str(tmp_path / ("x.idx" + (".gz" if gzipped else "")))
  data.write_idx(path, images)
  np.testing.assert_array_equal(data.read_idx(path), images)
  floats = rng.normal(size=(3, 4)).astype(np.float32)
  data.write_idx(str(tmp_path / "f.idx"), floats)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "f.idx")), floats)


def test_idx_header_bytes_are_standard(tmp_path):
  path = str(tmp_path / "labels.gz")
  data.write_idx(path, np.arange(3, dtype=np.uint8))
  with gzip.open(path, "rb") as f:
    raw = f.read()
  assert raw[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 3]) and raw[8:] == bytes([0, 1, 2])


def test_bad_idx_files_are_rejected():
  with pytest.raises(data.IdxFormatError, match="first two bytes"):
    data.parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x01\x00")
  with pytest.raises(data.IdxFormatError, match="type code"):
    data.parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
  with pytest.raises(data.IdxFormatError, match="holds"):
    data.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05\x00")


def _write_idx_dataset(directory, shape=(12, 10), n_train=60, n_test=20, prefix="", gz=True):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(1)
  ext = ".gz" if gz else ""
  for split, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 3, size=n).astype(np.uint8)
    images = (labels[:, None, None] * 80 + rng.integers(0, 40, size=(n,) + shape)).astype(np.uint8)
    data.write_idx(os.path.join(directory, f"{prefix}{split}-images-idx3-ubyte{ext}"), images)
    data.write_idx(os.path.join(directory, f"{prefix}{split}-labels-idx1-ubyte{ext}"), labels)


def test_idx_directory_of_another_size(tmp_path):
  _write_idx_dataset(tmp_path / "d", shape=(12, 10))
  ds = data.load_dataset(f"idx:{tmp_path / 'd'}")
  assert ds.image_shape == (12, 10, 1) and ds.num_classes == 3
  # t10k files are the test split; validation is a tenth carved from train.
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (54, 6, 20)


def test_idx_directory_with_prefixed_names_and_no_test_split(tmp_path):
  _write_idx_dataset(tmp_path / "d", prefix="emnist-letters-", gz=False)
  for name in os.listdir(tmp_path / "d"):
    if "t10k" in name:
      os.remove(tmp_path / "d" / name)
  ds = data.load_idx_directory(str(tmp_path / "d"), validation_fraction=0.25)
  # Test carved first (15 of 60), then validation (11 of the remaining 45).
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (34, 11, 15)


def test_idx_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_dataset(f"idx:{tmp_path / 'nope'}")
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DatasetError, match="train-images"):
    data.load_dataset(f"idx:{tmp_path / 'empty'}")


def test_unknown_dataset_name():
  with pytest.raises(data.DatasetError, match="unknown dataset 'no_such_dataset_xyz'"):
    data.load_dataset("no_such_dataset_xyz")


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
  with pytest.raises(data.DatasetError, match="tfds build cifar10"):
    data.load_dataset("cifar10", data_dir=str(tmp_path))


def test_tfds_path_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset("mnist")
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  # mnist has no validation split: the last tenth of train is carved; test is the official one.
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (22, 2, 24)
  batch = next(data.train_batches(ds, 8, seed=0))
  assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32


def test_train_batches_are_deterministic_and_resumable(mnist):
  first = list(data.train_batches(mnist, 100, seed=3, num_steps=90))  # crosses an epoch (80).
  resumed = list(data.train_batches(mnist, 100, seed=3, start_step=85, num_steps=5))
  for a, b in zip(first[85:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other = next(data.train_batches(mnist, 100, seed=4))
  assert not np.array_equal(other["label"], first[0]["label"])
  epoch = np.concatenate([data.train_indices(8000, 100, s, seed=3) for s in range(80)])
  assert len(np.unique(epoch)) == 8000


def test_normalisation_and_shapes(mnist):
  batch = next(data.train_batches(mnist, 500, seed=0))
  assert batch["image"].shape == (500, 28, 28, 1) and batch["label"].dtype == np.int32
  assert abs(batch["image"].mean()) < 0.15 and 0.8 < batch["image"].std() < 1.2


def test_eval_batches_cover_every_example_once(mnist):
  batches = list(data.eval_batches(mnist, mnist.test, 300))
  assert all(b["image"].shape == (300, 28, 28, 1) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask > 0]
  assert mask.sum() == 2000
  np.testing.assert_array_equal(labels, mnist.test.labels)


def test_crop_flip_augmentation_is_seeded(mnist):
  images = mnist.train.images[:16]
  a = data.random_crop_flip(images, np.random.default_rng(0))
  b = data.random_crop_flip(images, np.random.default_rng(0))
  assert a.shape == images.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, images)


def test_bad_batch_size(mnist):
  with pytest.raises(ValueError, match="larger than the 7000"):
    next(data.train_batches(mnist, 9000, seed=0))
