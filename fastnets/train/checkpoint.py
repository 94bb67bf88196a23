"""Orbax checkpoints of the train state plus a JSON record of the run, and the workdir guard.

A workdir remembers the configuration it was started with (`run_config.json`). Resuming with a
different configuration is refused, so that a checkpoint is never continued (or overwritten) by a
run it does not belong to.
"""

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

RUN_CONFIG = "run_config.json"


class WorkdirMismatchError(ValueError):
  """The workdir holds checkpoints of a run with a different configuration."""


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x, default=str))


def check_or_record_run_config(workdir: str, run_config: dict, ignore: tuple = (),
                               has_checkpoint: bool = True) -> None:
  """Records `run_config` in a workdir without checkpoints, or checks it against the recorded one.

  Args:
    workdir: the run directory.
    run_config: JSON-able description of the run (train config, model, dataset, ...).
    ignore: flattened keys ("train.log_every") allowed to differ.
    has_checkpoint: whether the workdir holds a checkpoint; without one there is nothing to
      protect and the new configuration replaces the recorded one.

  Raises:
    WorkdirMismatchError: the recorded configuration differs in other keys; names them and the fix.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, RUN_CONFIG)
  run_config = _jsonable(run_config)
  if not has_checkpoint or not os.path.exists(path):
    with open(path, "w") as f:
      json.dump(run_config, f, indent=2, sort_keys=True)
    return
  with open(path) as f:
    recorded = json.load(f)
  old, new = _flatten(recorded), _flatten(run_config)
  diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
           for k in sorted(set(old) | set(new))
           if old.get(k) != new.get(k) and not any(k.endswith(i) for i in ignore)]
  if diffs:
    raise WorkdirMismatchError(
        f"workdir {workdir!r} holds a run with a different configuration ({'; '.join(diffs)}). "
        "Nothing was overwritten. Use a new --workdir, or delete this one to start over.")


class Checkpointer:
  """Saves and restores {"state": pytree, "meta": JSON dict} under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(meta))), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores the checkpoint of `step` into the structure, shapes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self._manager.close()
