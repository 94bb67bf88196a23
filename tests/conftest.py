"""Shared fixtures: the bundled dataset (loaded once) and a tiny CNN for fast training tests."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
