"""fastnets.data.sequences: digit-frame sequence tasks and video frame sampling."""

import numpy as np
import pytest

from fastnets import data


@pytest.fixture(scope="module")
def seqs(mnist):
  return data.make_digit_sequences(mnist, "mode", seq_len=8, mode_count=3, train_sequences=200,
                                     val_sequences=100, seed=0)


def _frame_classes(images_by_key, labels, frames):
  """Class of each frame, looked up by its bytes among a split's images."""
  return np.array([[labels[images_by_key[f.tobytes()]] for f in seq] for seq in frames])


def _index(source):
  images, labels = source.get(np.arange(len(source)))
  flat = images.reshape(len(images), -1)
  return {f.tobytes(): k for k, f in enumerate(flat)}, labels


def test_digit_sequences_shapes_and_determinism(mnist, seqs):
  assert seqs.image_shape == (8, 784, 1) and seqs.num_classes == 10
  assert seqs.train.images.dtype == np.uint8 and len(seqs.train) == 200
  assert len(seqs.validation) == 100
  again = data.make_digit_sequences(mnist, "mode", 8, 3, 200, 100, seed=0)
  np.testing.assert_array_equal(again.train.images, seqs.train.images)
  np.testing.assert_array_equal(again.validation.labels, seqs.validation.labels)
  other = data.make_digit_sequences(mnist, "mode", 8, 3, 200, 100, seed=1)
  assert not np.array_equal(other.train.labels, seqs.train.labels)
  np.testing.assert_allclose(seqs.mean, mnist.mean)


def test_mode_label_is_the_unique_most_frequent_frame_digit(mnist, seqs):
  for split, base in ((seqs.train, mnist.train), (seqs.validation, mnist.validation)):
    index, labels = _index(base)  # Every frame is an image of the same split of the base.
    frames = split.images[..., 0]
    classes = _frame_classes(index, labels, frames)
    for seq_classes, label in zip(classes, split.labels):
      counts = np.bincount(seq_classes, minlength=10)
      assert counts[label] == 3 and np.sort(counts)[-2] == 1


def test_validation_sequences_use_validation_digits_only(mnist, seqs):
  train_index, _ = _index(mnist.train)
  frames = seqs.validation.images[..., 0].reshape(-1, 784)
  assert not any(f.tobytes() in train_index for f in frames)


def test_sum_mod10_labels(mnist):
  ds = data.make_digit_sequences(mnist, "sum_mod10", 4, 3, 50, 20, seed=3)
  index, labels = _index(mnist.train)
  classes = _frame_classes(index, labels, ds.train.images[..., 0])
  np.testing.assert_array_equal(classes.sum(axis=1) % 10, ds.train.labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="parity"), "task must be one of"),
    (dict(mode_count=1), "mode_count must be in"),
    (dict(seq_len=14, mode_count=3), "mode_count must be in"),
    (dict(train_sequences=0), "must be positive"),
])
def test_bad_sequence_arguments(mnist, kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.make_digit_sequences(mnist, **kwargs)


def test_video_frames_picks_even_frames_and_resizes():
  video = np.zeros((10, 4, 6, 3), np.uint8)
  video += np.arange(10, dtype=np.uint8)[:, None, None, None]  # Frame t has value t.
  out = data.video_frames(video, 4, 2, 3)
  assert out.shape == (4, 2 * 3 * 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 0], [0, 3, 6, 9])
  short = data.video_frames(video[:2], 4, 4, 6)  # Frames repeat; same size keeps pixels.
  np.testing.assert_array_equal(short[:, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(short[0].reshape(4, 6, 3), video[0])
  with pytest.raises(ValueError, match="video must have shape"):
    data.video_frames(video[0], 4, 2, 3)
