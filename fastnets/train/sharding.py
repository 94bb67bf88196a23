"""Data parallelism with `jax.sharding`: a 1-D mesh over all devices with axis "data".

Batches are split along their leading axis over "data"; parameters and optimizer state are
replicated. Under `jit`, XLA inserts the gradient all-reduce; batch-norm statistics are computed
over the global batch, so results do not depend on the device count (up to summation order).
"""

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool, **kwargs: Any) -> None:
  """Calls `jax.distributed.initialize(**kwargs)` for multi-host runs when `enabled`.

  On Cloud TPU / SLURM / Open MPI, the coordinator and process ids are detected automatically;
  elsewhere pass coordinator_address, num_processes and process_id.
  """
  if enabled:
    jax.distributed.initialize(**kwargs)


def make_mesh(devices: Optional[list] = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split along `axis` over "data" (axis 1 for seed-stacked (seeds, batch, ...) arrays)."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Raises ValueError unless `batch_size` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if batch_size % n:
    lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
    fix = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(f"{what}={batch_size} does not divide over the {n} devices; use a multiple "
                     f"of {n} (e.g. {fix}).")


def shard_batch(batch: dict, mesh: Mesh, axis: int = 0) -> dict:
  """Places a global numpy batch on the mesh, split along its batch axis `axis` over "data".

  `axis` is 0 for (batch, ...) arrays, 1 for seed-stacked (seeds, batch, ...) ones (`fit_seeds`).
  With several processes, each process contributes its own contiguous slice of the global batch
  (all processes produce the same global batch, so no data is duplicated or lost).
  """
  sharding = batch_sharded(mesh, axis)
  count, index = jax.process_count(), jax.process_index()

  def put(x):
    x = np.asarray(x)
    local = x.shape[axis] // count
    piece = x[(slice(None),) * axis + (slice(index * local, (index + 1) * local),)]
    return jax.make_array_from_process_local_data(sharding, piece, x.shape)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of the mesh."""
  return jax.device_put(tree, replicated(mesh))
