"""Shared fixtures: the bundled dataset (loaded once) and a tiny CNN for fast training tests."""

import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  """One persistent XLA compilation cache per test run, shared through the environment by the
  xdist workers and every subprocess they start (CLI runs, notebook kernels): the tests compile
  the same small programs many times. A run never reads another run's cache (so a test run's
  time does not depend on earlier runs); set JAX_COMPILATION_CACHE_DIR to choose one yourself."""
  del config
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), f"fastnets_test_xla_cache_{run}")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


@pytest.fixture(scope="session")
def mnist():
  from fastnets import data
  return data.load_dataset()


@pytest.fixture
def tiny_cnn():
  from fastnets import models
  return models.SmallCNN(num_classes=10, channels=(4, 8), hidden=16, dropout_rate=0.1)


def run_python(code: str, devices: int = 1, timeout: int = 300, env=None) -> str:
  """Runs `code` in a fresh Python with `devices` forced CPU devices; returns stdout.

  Raises AssertionError with the child's stderr when it fails.
  """
  full_env = dict(os.environ, **(env or {}))
  full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  full_env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO, env=full_env)
  assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc.stdout


def cuda_lowering_context():
  """A context for lowering Pallas Triton kernels for CUDA on a machine without a GPU.

  jax >= 0.11 asks the GPU's compute capability while lowering a Triton kernel; with no GPU it
  must come from an abstract device (an H100 here) set through an abstract mesh. jax 0.10 reads
  no device and needs nothing.
  """
  import contextlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  abstract_device = getattr(jax.sharding, "AbstractDevice", None)
  if abstract_device is None or not hasattr(jax.sharding, "use_abstract_mesh"):
    return contextlib.nullcontext()
  mesh = jax.sharding.AbstractMesh(
      (1,), ("x",), abstract_device=abstract_device("NVIDIA H100", None, "gpu"))
  return jax.sharding.use_abstract_mesh(mesh)
