"""Datasets as numpy batches: bundled MNIST (offline default), IDX directories, tfds, synthetic.

Library code here never reads flags; experiments pass names and directories in.
"""

from fastnets.data.datasets import (BUNDLED_MNIST, SPLITS, ArraySource, Dataset, DatasetError,
                                    HiddenSplitError, InMemorySource, bundled_mnist_dir,
                                    bundled_split_indices, carve_validation, load_bundled_mnist,
                                    load_dataset, load_idx_directory, load_tfds,
                                    verify_bundled_mnist)
from fastnets.data.idx import IdxFormatError, find_idx_files, parse_idx, read_idx, write_idx
from fastnets.data.pipeline import (eval_batches, random_crop_flip, steps_per_epoch,
                                    train_batches, train_indices)

__all__ = [
    "BUNDLED_MNIST", "SPLITS", "ArraySource", "Dataset", "DatasetError", "HiddenSplitError",
    "IdxFormatError", "InMemorySource", "bundled_mnist_dir", "bundled_split_indices",
    "carve_validation", "eval_batches", "find_idx_files", "load_bundled_mnist", "load_dataset",
    "load_idx_directory", "load_tfds", "parse_idx", "random_crop_flip", "read_idx",
    "steps_per_epoch", "train_batches", "train_indices", "verify_bundled_mnist", "write_idx",
]
from fastnets.data.synthetic import (SYNTHETIC_SETS, GaussianMixtureData, StackedMNIST,
                                     grid_means, load_synthetic, make_grid, make_ring,
                                     make_stacked_mnist, ring_means)
__all__ += ["SYNTHETIC_SETS", "GaussianMixtureData", "StackedMNIST", "grid_means",
            "load_synthetic", "make_grid", "make_ring", "make_stacked_mnist", "ring_means"]
from fastnets.data.sequences import (SEQUENCE_TASKS, load_video_dataset, make_digit_sequences,
                                     video_frames)
__all__ += ["SEQUENCE_TASKS", "load_video_dataset", "make_digit_sequences", "video_frames"]
