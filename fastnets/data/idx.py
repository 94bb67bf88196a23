"""Reading MNIST-format IDX files (LeCun et al.), gzipped or not, of any shape and dtype."""

import gzip
import os
import re
import zlib
from typing import Optional

import numpy as np

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
  """A file is not a well-formed IDX file."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """Parses the bytes of one IDX file (already decompressed).

  Format: two zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes,
  then the values in C order.

  Args:
    data: the file's bytes.
    name: used in error messages.

  Returns:
    An array of the file's shape; multi-byte types converted to native byte order.

  Raises:
    IdxFormatError: bad magic number, unknown type code, or a size that disagrees with the header.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise IdxFormatError(f"{name}: not an IDX file (the first two bytes must be zero).")
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise IdxFormatError(f"{name}: unknown IDX type code 0x{code:02x}; known: "
                         f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise IdxFormatError(f"{name}: truncated header ({len(data)} bytes for {ndim} dimensions).")
  shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise IdxFormatError(f"{name}: header says shape {shape} ({expected} bytes of data) but the "
                         f"file holds {len(data) - header} bytes after the header.")
  array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file; a name ending in `.gz` is gunzipped. See `parse_idx`."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise IdxFormatError(f"{path}: cannot be read ({type(e).__name__}: {e}); a truncated or "
                         "corrupted download? Fetch the file again.") from e
  return parse_idx(data, name=path)


def check_idx_pair(images: np.ndarray, labels: np.ndarray, images_path: str,
                   labels_path: str) -> None:
  """Raises IdxFormatError naming the file when an images/labels pair cannot be a dataset: labels
  not a 1-D array of non-negative integers, images of rank < 3 or with non-finite values, or
  counts that differ."""
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise IdxFormatError(f"{labels_path}: labels must be a 1-D integer array, got shape "
                         f"{labels.shape} of {labels.dtype}.")
  if labels.size and labels.min() < 0:
    raise IdxFormatError(f"{labels_path}: labels must be non-negative, got {labels.min()}.")
  if images.ndim < 3:
    raise IdxFormatError(f"{images_path}: images must have shape (count, height, width[, "
                         f"channels]), got {images.shape}.")
  if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
    raise IdxFormatError(f"{images_path}: images hold NaN or infinite values.")
  if images.shape[0] != labels.shape[0]:
    raise IdxFormatError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                         f"{labels.shape[0]} labels.")


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes `array` as an IDX file (gzipped when `path` ends in `.gz`); used by tests and tools."""
  array = np.asarray(array)
  code = next((c for c, d in _IDX_DTYPES.items() if d == array.dtype.newbyteorder(">")
               or d == array.dtype), None)
  if code is None:
    raise TypeError(f"array dtype {array.dtype} has no IDX type code.")
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
  body = array.astype(_IDX_DTYPES[code], copy=False).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + body)


# Standard MNIST names and the EMNIST / Fashion-MNIST / KMNIST variants with a prefix.
_SPLIT_PATTERNS = {
    "train": r"(?:.*[-_])?train[-_]images[-_.]idx3[-_.]ubyte(?:\.gz)?",
    "train_labels": r"(?:.*[-_])?train[-_]labels[-_.]idx1[-_.]ubyte(?:\.gz)?",
    "test": r"(?:.*[-_])?(?:t10k|test)[-_]images[-_.]idx3[-_.]ubyte(?:\.gz)?",
    "test_labels": r"(?:.*[-_])?(?:t10k|test)[-_]labels[-_.]idx1[-_.]ubyte(?:\.gz)?",
}


def find_idx_files(directory: str) -> dict[str, Optional[str]]:
  """Finds the train and test image/label files of an IDX directory by their standard names.

  Returns:
    A dict with keys "train", "train_labels", "test", "test_labels" mapping to paths or None.

  Raises:
    FileNotFoundError: the directory does not exist, or a kind of file matches several names.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"IDX directory {directory!r} does not exist.")
  names = sorted(os.listdir(directory))
  found: dict[str, Optional[str]] = {}
  for key, pattern in _SPLIT_PATTERNS.items():
    hits = [n for n in names if re.fullmatch(pattern, n)]
    if len(hits) > 1:
      raise FileNotFoundError(f"IDX directory {directory!r} has several {key} files: {hits}; "
                              "keep one per split.")
    found[key] = os.path.join(directory, hits[0]) if hits else None
  return found
