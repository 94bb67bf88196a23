"""Channel re-allocation of selective convolutional units as a `fit` callback (Jeong & Shin,
ICML 2019): every few steps, each unit's slots of lowest expected channel damage are pointed at
copies of its highest-scoring channels, with fresh random spatial shifts that training then
learns."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import ops
from fastnets.nn.selective import SELECTION_COLLECTION, selection_scores
from fastnets.train.steps import TrainState

__all__ = ["SelectionReallocation"]


class SelectionReallocation:
  """`fit` callback: at steps start, start + every, ... < end, re-allocates `fraction` of every
  unit's slots (`ops.reallocate` by `nn.selection_scores`) and gives the moved slots shifts drawn
  uniformly from [-shift_scale, shift_scale] (key `fold_in(key(seed), step)`).

  Attributes:
    history: one record per re-allocation: {"step", "moved": {unit: count}}.
  """

  def __init__(self, *, units, start: int, every: int, end: int, fraction: float = 0.1,
               shift_scale: float = 1.0, seed: int = 0):
    if every < 1 or start < 1:
      raise ValueError(f"start and every must be positive ints; got {start} and {every}.")
    if not 0.0 < fraction <= 0.5:
      raise ValueError(f"fraction must be in (0, 0.5]; got {fraction!r}.")
    self.units, self.start, self.every, self.end = list(units), start, every, end
    self.fraction, self.shift_scale, self.seed = fraction, shift_scale, seed
    self.history: list = []

  def __call__(self, step: int, state: TrainState) -> Optional[TrainState]:
    if step < self.start or step >= self.end or (step - self.start) % self.every:
      return None
    params = jax.device_get(state.params)
    selection = jax.device_get(state.model_state[SELECTION_COLLECTION])
    new_params, new_sel, moved = dict(params), dict(selection), {}
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    for i, name in enumerate(self.units):
      sel = selection[name]
      scores = np.asarray(selection_scores(params[name], sel))
      num = int(self.fraction * int(np.sum(sel["mask"] > 0)))
      index, _, slots = ops.reallocate(np.asarray(sel["index"]), np.asarray(sel["mask"]) > 0,
                                       scores, num)
      shifts = np.asarray(params[name]["shifts"]).copy()
      shifts[slots] = np.asarray(jax.random.uniform(
          jax.random.fold_in(key, i), (len(slots), 2), minval=-self.shift_scale,
          maxval=self.shift_scale))
      new_sel[name] = {**sel, "index": jnp.asarray(index, jnp.int32)}
      new_params[name] = {**params[name], "shifts": jnp.asarray(shifts, jnp.float32)}
      moved[name] = len(slots)
    self.history.append({"step": step, "moved": moved})
    place = lambda new, old: jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, old)
    return state.replace(
        params=place(new_params, state.params),
        model_state={**state.model_state,
                     SELECTION_COLLECTION: place(new_sel, state.model_state[SELECTION_COLLECTION])})
