"""Native CPU kernels behind `jax.ffi`, compiled from C++ on first use and cached.

The fast Walsh-Hadamard transform (`fastnets.ops.fwht(impl="native")`, used by Fastfood, Le et al.
2013, and Deep Fried Convnets, Yang et al. 2015) is memory-bound on a CPU; XLA:CPU has no FWHT and
its best composition (Kronecker-factored matmuls, the XLA path of `fastnets.ops.fwht`) makes several
passes over memory through generic matmul code. `csrc/fwht_cpu.cc` is a SIMD radix-8 kernel,
registered as an XLA FFI custom call so that it runs inside jitted programs with no Python callback.
Independent rows are spread over XLA's intra-op thread pool (`parallel=True`, the default).

The direct sparse convolution (`csrc/sparse_conv_cpu.cc`, SkimCaffe's algorithm, Park et al. 2017)
is in the same library; `sparse_conv_ffi` is its raw call and
`fastnets.kernels.sparse_conv.sparse_conv2d_native` its checked, differentiable entry point.

Building. The C++ source ships with the package and is compiled on first use, once per machine, with
`$CXX` (default `g++`, else `c++`/`clang++`) and `-O3 -march=native` against the XLA FFI headers
that come with jaxlib (`jax.ffi.include_dir()`), into
`$FASTNETS_CACHE_DIR` (default `~/.cache/fastnets`)`/native/<hash>/`. The hash covers the source,
the flags, the compiler, jaxlib's version and the CPU's feature flags, so a changed source, a new
jaxlib or a different CPU sharing the home directory builds a fresh library. A build takes about
10 s of CPU time (both sources). Set `FASTNETS_NATIVE=0` to disable the native kernels (then
`impl="auto"` uses the XLA path).
If no compiler is found or the build fails, `available()` is False, `impl="auto"` falls back to XLA
with a one-time warning, and `impl="native"` raises with the compiler's message.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["NativeBuildError", "available", "build_error", "fwht_native", "has_compiler",
           "library_path", "sparse_conv_ffi", "sparse_conv_supported"]

_CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
_SOURCES = (_CSRC / "fwht_cpu.cc", _CSRC / "sparse_conv_cpu.cc")
_HEADERS = (_CSRC / "parallel_for.h",)
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w")
_TARGETS = {jnp.dtype(jnp.float32): ("fastnets_fwht_f32", "FastnetsFwhtF32"),
            jnp.dtype(jnp.float64): ("fastnets_fwht_f64", "FastnetsFwhtF64")}
DTYPES = tuple(_TARGETS)
# The direct sparse convolution (csrc/sparse_conv_cpu.cc): (input dtype, output dtype) -> target.
_SPARSE_CONV_TARGETS = {
  (jnp.dtype(jnp.float32), jnp.dtype(jnp.float32)): ("fastnets_sparse_conv_f32_f32",
                                                     "FastnetsSparseConvF32F32"),
  (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.bfloat16)): ("fastnets_sparse_conv_bf16_bf16",
                                                       "FastnetsSparseConvBf16Bf16"),
  (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)): ("fastnets_sparse_conv_bf16_f32",
                                                      "FastnetsSparseConvBf16F32"),
}


class NativeBuildError(RuntimeError):
  """The native kernels could not be built or loaded (no compiler, a compile error, disabled)."""


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return line
  except OSError:
    pass
  return platform.processor()


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("FASTNETS_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastnets")
  return pathlib.Path(root) / "native"


def _build(compiler: str) -> pathlib.Path:
  import jaxlib  # pylint: disable=g-import-not-at-top

  source = b"\0".join(p.read_bytes() for p in (*_SOURCES, *_HEADERS))
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
  key = hashlib.sha256(b"\0".join([
      source, " ".join(_FLAGS).encode(), version.encode(), jaxlib.__version__.encode(),
      platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
  out_dir = _cache_dir() / key
  lib = out_dir / "libfastnets_native.so"
  if lib.exists():
    return lib
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError:  # A read-only home directory: build into the temporary directory instead.
    out_dir = pathlib.Path(tempfile.gettempdir()) / f"fastnets-native-{os.getuid()}" / key
    lib = out_dir / "libfastnets_native.so"
    if lib.exists():
      return lib
    out_dir.mkdir(parents=True, exist_ok=True)
  # Build into a temporary name and rename: concurrent first uses (pytest-xdist workers) race
  # harmlessly, each rename installing a complete library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{_CSRC}", *map(str, _SOURCES), "-o",
         tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise NativeBuildError(
        f"building the native CPU kernels failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
  os.replace(tmp, lib)
  return lib


@functools.lru_cache(maxsize=None)
def _load() -> tuple[pathlib.Path | None, str | None]:
  """Builds (if needed), loads and registers the FFI targets once; (library path, error)."""
  if os.environ.get("FASTNETS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
    return None, "disabled by FASTNETS_NATIVE=0"
  compiler = _compiler()
  if compiler is None:
    return None, "no C++ compiler found (set CXX, or install g++)"
  try:
    path = _build(compiler)
    lib = ctypes.cdll.LoadLibrary(str(path))
    for target, symbol in (*_TARGETS.values(), *_SPARSE_CONV_TARGETS.values()):
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (NativeBuildError, OSError, AttributeError, subprocess.SubprocessError) as e:
    return None, str(e)
  return path, None


def has_compiler() -> bool:
  """Whether a C++ compiler for the native kernels is on this machine ($CXX, g++, c++, clang++)."""
  return _compiler() is not None


def available() -> bool:
  """True when the native CPU kernels are built, loaded and registered (builds them if needed)."""
  return _load()[0] is not None


def build_error() -> str | None:
  """Why the native kernels are unavailable (None when they are available)."""
  return _load()[1]


def library_path() -> pathlib.Path:
  """Path of the built shared library.

  Raises:
    NativeBuildError: if the kernels are unavailable (the message says why).
  """
  path, error = _load()
  if path is None:
    raise NativeBuildError(f"fastnets native CPU kernels are unavailable: {error}")
  return path


@functools.lru_cache(maxsize=None)
def warn_fallback_once(what: str) -> None:
  """Warns once per `what` that the native kernel is unavailable and XLA is used instead."""
  warnings.warn(f"{what}: native CPU kernel unavailable ({build_error()}); using the XLA path",
                RuntimeWarning, stacklevel=3)


def fwht_native(x: jax.Array, scale: float = 1.0, parallel: bool = True) -> jax.Array:
  """Unnormalised Walsh-Hadamard transform along axis -2 of `x`, times `scale`, on the CPU.

  `y[..., k, p] = scale * sum_i H_n[k, i] x[..., i, p]`, Sylvester order (`scipy.linalg.hadamard`).
  The public, differentiable op is `fastnets.ops.fwht(x, axis, impl="native")`, which reshapes any
  axis to this layout.

  Args:
    x: array of rank >= 2 and shape `(..., n, post)`, float32 or float64 (a CPU array); `n` a power
      of two.
    scale: a Python float multiplied into the result (1 / sqrt(n) for the orthonormal transform).
    parallel: spread the rows (the leading dimensions) over XLA's intra-op CPU thread pool, in
      chunks of at least 2^18 elements; False runs on one thread.

  Returns:
    Array of the shape and dtype of `x`.

  Raises:
    NativeBuildError: if the native kernels are unavailable.
    ValueError: if `x` has rank < 2, a dtype other than float32/float64, or n not a power of two.
  """
  library_path()
  if jnp.ndim(x) < 2:
    raise ValueError(f"fwht_native: x must have shape (..., n, post), got shape {jnp.shape(x)}")
  dtype = jnp.dtype(x.dtype)
  if dtype not in _TARGETS:
    raise ValueError(f"fwht_native: x must be float32 or float64, got {dtype}")
  n = x.shape[-2]
  if n < 1 or n & (n - 1):
    raise ValueError(f"fwht_native: x.shape[-2] must be a power of two, got {n}")
  shape = x.shape
  y = _fwht_batched(x.reshape((math.prod(shape[:-2]), n, shape[-1])), float(scale), bool(parallel))
  return y.reshape(shape)


def _ffi_call(x, scale: float, parallel: bool):
  call = jax.ffi.ffi_call(_TARGETS[jnp.dtype(x.dtype)][0], jax.ShapeDtypeStruct(x.shape, x.dtype))
  return call(x, scale=np.float64(scale), parallel=parallel)


# Sharding. XLA's SPMD partitioner knows nothing of a custom call and would all-gather its operand
# and replicate the result, silently turning a data-parallel program into a replicated one.
# `custom_partitioning` says what the kernel allows: any sharding of the rows (axis 0) and of the
# trailing axis; the transformed axis n must be whole on every device.
@functools.partial(custom_partitioning, static_argnums=(1, 2))
def _fwht_partitioned(x, scale, parallel):
  return _ffi_call(x, scale, parallel)


def _row_sharding(mesh, arg_shapes):
  spec = tuple(arg_shapes[0].sharding.spec)
  spec += (None,) * (3 - len(spec))
  return NamedSharding(mesh, PartitionSpec(spec[0], None, spec[2]))


def _infer_sharding(scale, parallel, mesh, arg_shapes, result_shape):
  del scale, parallel, result_shape
  return _row_sharding(mesh, arg_shapes)


def _partition(scale, parallel, mesh, arg_shapes, result_shape):
  del result_shape
  sharding = _row_sharding(mesh, arg_shapes)
  return mesh, lambda x: _ffi_call(x, scale, parallel), sharding, (sharding,)


_fwht_partitioned.def_partition(
    infer_sharding_from_operands=_infer_sharding, partition=_partition,
    sharding_rule="rows n post -> rows n post", need_replication_factors=("n",))


def _fwht_batched(x, scale: float, parallel: bool):
  """`_fwht_partitioned` with a vmap rule (custom_partitioning has none): batch axes join rows."""

  @jax.custom_batching.custom_vmap
  def call(x):
    return _fwht_partitioned(x, scale, parallel)

  @call.def_vmap
  def _rule(axis_size, in_batched, x):  # pylint: disable=unused-variable
    del axis_size, in_batched  # x is batched along axis 0: (batch, rows, n, post).
    return call(x.reshape((-1,) + x.shape[2:])).reshape(x.shape), True

  return call(x)


def sparse_conv_supported(x_dtype, out_dtype) -> bool:
  """Whether the native sparse convolution takes this (input, output) dtype pair: float32 ->
  float32, bfloat16 -> bfloat16, bfloat16 -> float32 (float32 accumulation in all three)."""
  return (jnp.dtype(x_dtype), jnp.dtype(out_dtype)) in _SPARSE_CONV_TARGETS


def sparse_conv_ffi(xt, off, val, nnz, bias, out_shape, out_dtype, *, rows: int, nv: int,
                    chunks: int, relu: bool, parallel: bool):
  """The raw FFI call of csrc/sparse_conv_cpu.cc (operands as its header comment describes).

  The checked, differentiable entry point is
  `fastnets.kernels.sparse_conv.sparse_conv2d_native`, which prepares these operands.
  """
  target = _SPARSE_CONV_TARGETS[(jnp.dtype(xt.dtype), jnp.dtype(out_dtype))][0]
  # Under vmap the kernel runs once per batch element (its operands have fixed ranks).
  call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(out_shape), out_dtype),
                          vmap_method="sequential")
  return call(xt, off, val, nnz, bias, rows=np.int64(rows), nv=np.int64(nv),
              chunks=np.int64(chunks), relu=bool(relu), parallel=bool(parallel))
