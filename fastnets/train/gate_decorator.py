"""Gate Decorator's training-loop pieces: gate L1 loss, Taylor scores over batches, tick-tock.

You et al. (NeurIPS 2019) prune filters of a trained network by alternating

* a **tick**: with the weights frozen, run batches through the network, accumulate every gate's
  Taylor score |phi dL/dphi| (`fastnets.ops.taylor_scores`), rank all gates of all layers together
  and remove a few percent of the remaining filters (`fastnets.ops.prune_to_flops` with a per-tick
  budget), each layer keeping at least `min_keep` of its channels;
* a **tock**: train for a while with an L1 penalty on the gates (`gate_l1_loss`), so that
  unimportant gates shrink before the next tick;

until the model's FLOPs reach the target, then fine-tune. Here both run inside
`fastnets.train.fit`: `TickTock` is a `fit` callback that ticks every `tock_steps` steps from
`start_step` (it replaces the "channel_mask" collection of the train state), and
`TickTock.choose_variant` switches `fit`'s `step_variants` between the plain loss and the L1 loss
while ticking. `OneShotPrune` is the callback of the baselines: at one step it removes channels by
any score (random, |gamma|) to the same FLOPs target.

The models are those with `fastnets.nn.GatedBatchNorm` gates (e.g.
`fastnets.models.PrunableConvNet`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnets import ops
from fastnets.nn.gated import GATE_COLLECTION, gate_masks, gate_values, with_gate_masks
from fastnets.train.steps import LossFn, TrainState

__all__ = ["OneShotPrune", "TickTock", "gate_l1_loss", "taylor_channel_scores"]

ScoreFn = Callable[[TrainState], Mapping[str, Any]]


def gate_l1_loss(model: nn.Module, l1: float, label_smoothing: float = 0.0) -> LossFn:
  """Cross-entropy + `l1` * sum over gates of |phi * mask| (the tock's sparsity penalty).

  Returns a `fastnets.train` loss function (metrics: accuracy and "gate_l1", the unweighted sum).
  """
  if not l1 >= 0.0:
    raise ValueError(f"l1 must be a non-negative number; got {l1!r}.")

  def loss_fn(params, model_state, batch, rng):
    del rng
    logits, new_state = model.apply({"params": params, **model_state}, batch["image"], train=True,
                                    mutable=list(model_state))
    ce = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    masks = jax.tree_util.tree_flatten_with_path(model_state[GATE_COLLECTION])[0]
    mask_of = {"/".join(str(getattr(k, "key", k)) for k in p[:-1]): m for p, m in masks}
    penalty = sum(jnp.sum(jnp.abs(g * mask_of[name]))
                  for name, g in gate_values(params).items())
    return ce + l1 * penalty, (dict(new_state), {"accuracy": ops.accuracy(logits, batch["label"]),
                                                 "gate_l1": penalty})

  return loss_fn


def taylor_channel_scores(model: nn.Module, variables: Mapping, batches: Iterable[Mapping],
                          train: bool = False) -> dict:
  """Gate Decorator's Taylor scores summed over batches: sum_b |phi_c dL_b/dphi_c|.

  Weights are not updated (the tick's frozen pass). Pruned channels (mask 0) score 0.

  Args:
    model: a model with GatedBatchNorm gates.
    variables: its variables (params, batch_stats, channel_mask).
    batches: {"image", "label"} batches; L_b is the mean cross-entropy of batch b.
    train: batch norm in training mode (batch statistics) instead of its running averages.

  Returns:
    {gate name: (C,) numpy float32 scores}.
  """
  variables = dict(variables)
  params = variables.pop("params")
  total = None
  for batch in batches:
    s = _batch_taylor_scores(model, train, params, variables, jnp.asarray(batch["image"]),
                             jnp.asarray(batch["label"]))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  if total is None:
    raise ValueError("batches must hold at least one batch.")
  return {k: np.asarray(v) for k, v in total.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))  # Compiled once per model, not per tick.
def _batch_taylor_scores(model, train, params, rest, image, label):
  def loss(p):
    out = model.apply({"params": p, **rest}, image, train=train,
                      mutable=["batch_stats"] if train else False)
    logits = out[0] if train else out
    return ops.cross_entropy_loss(logits, label)
  grads = jax.grad(loss)(params)
  return ops.taylor_scores(gate_values(params), gate_values(grads))


def _replace_masks(state: TrainState, alive: Mapping[str, np.ndarray]) -> TrainState:
  """`state` with new channel masks, placed like the old ones (replicated over the mesh)."""
  new_state = with_gate_masks(state.model_state, alive)
  placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                        new_state[GATE_COLLECTION], state.model_state[GATE_COLLECTION])
  return state.replace(model_state={**new_state, GATE_COLLECTION: placed})


def _variables(state: TrainState) -> dict:
  return {"params": state.params, **state.model_state}


class TickTock:
  """`fit` callback: Gate Decorator's tick-tock pruning to a FLOPs target.

  From `start_step`, every `tock_steps` steps (a tock in between): a tick scores every gate over
  `score_batches(tick)` with the weights frozen and removes `ceil(tick_fraction * alive)` channels
  by global ranking (fewer when fewer reach `target_flops`), each layer keeping `min_keep` of its
  channels. After the tick that reaches the target, `done` is True and training goes on as
  fine-tuning. With `channel_multiple` m > 1 every layer keeps a multiple of m channels
  (`fastnets.ops.global_channel_ranking`), and a tick removes whole chunks (at least one). Use
  `choose_variant` with `fit(step_variants={"plain": ..., "tock": ...})` to train the tocks with
  `gate_l1_loss`.

  Attributes:
    history: one record per tick: {"step", "removed", "alive", "flops"}.
    done: the FLOPs target is reached.
  """

  def __init__(self, *, start_step: int, tock_steps: int, tick_fraction: float,
               target_flops: float, flops_fn: Callable[[dict], float],
               score_batches: Callable[[int], Iterable[Mapping]], model: nn.Module,
               min_keep: float = 0.1, channel_multiple: int = 1):
    if start_step < 1 or tock_steps < 1:
      raise ValueError(f"start_step and tock_steps must be positive ints; got {start_step} and "
                       f"{tock_steps}.")
    if not 0.0 < tick_fraction <= 1.0:
      raise ValueError(f"tick_fraction must be in (0, 1]; got {tick_fraction!r}.")
    ops.layer_minimum(1, min_keep, channel_multiple)  # Checks min_keep and channel_multiple.
    self.start_step, self.tock_steps = int(start_step), int(tock_steps)
    self.tick_fraction, self.target_flops = float(tick_fraction), float(target_flops)
    self.flops_fn, self.score_batches, self.model = flops_fn, score_batches, model
    self.min_keep = float(min_keep)
    self.channel_multiple = int(channel_multiple)
    self.history: list = []
    self.done = False

  def choose_variant(self, step: int) -> str:
    """"tock" (the L1 loss) between the first tick and the target, "plain" otherwise."""
    return "tock" if step >= self.start_step and not self.done else "plain"

  def __call__(self, step: int, state: TrainState) -> Optional[TrainState]:
    if self.done or step < self.start_step or (step - self.start_step) % self.tock_steps:
      return None
    variables = _variables(state)
    alive = gate_masks(variables)
    scores = taylor_channel_scores(self.model, variables, self.score_batches(len(self.history)))
    budget = max(1, math.ceil(self.tick_fraction * sum(int(a.sum()) for a in alive.values())))
    new_alive, removed = ops.prune_to_flops(scores, alive, self.flops_fn, self.target_flops,
                                            self.min_keep, max_prune=budget,
                                            channel_multiple=self.channel_multiple)
    flops = self.flops_fn(new_alive)
    self.done = flops <= self.target_flops
    if removed == 0 and not self.done:
      raise ValueError(f"tick at step {step} cannot remove a channel: every layer is at its "
                       f"minimum (min_keep={self.min_keep}) above the target FLOPs.")
    self.history.append({"step": step, "removed": removed, "flops": flops,
                         "alive": {k: int(v.sum()) for k, v in new_alive.items()}})
    return _replace_masks(state, new_alive)


class OneShotPrune:
  """`fit` callback: at `step`, removes channels by `score_fn(state)` (global ranking, per-layer
  minimum) until `flops_fn` reaches `target_flops`; the baselines of Gate Decorator's comparison
  (random scores: random-filter pruning; |phi gamma|: magnitude pruning). `channel_multiple`: as
  in `TickTock`."""

  def __init__(self, *, step: int, score_fn: ScoreFn, target_flops: float,
               flops_fn: Callable[[dict], float], min_keep: float = 0.1,
               channel_multiple: int = 1):
    self.step, self.score_fn, self.target_flops = int(step), score_fn, float(target_flops)
    self.flops_fn, self.min_keep = flops_fn, float(min_keep)
    ops.layer_minimum(1, min_keep, channel_multiple)  # Checks min_keep and channel_multiple.
    self.channel_multiple = int(channel_multiple)
    self.history: list = []

  def __call__(self, step: int, state: TrainState) -> Optional[TrainState]:
    if step != self.step:
      return None
    alive = gate_masks(_variables(state))
    scores = {k: np.asarray(v) for k, v in self.score_fn(state).items()}
    new_alive, removed = ops.prune_to_flops(scores, alive, self.flops_fn, self.target_flops,
                                            self.min_keep, channel_multiple=self.channel_multiple)
    self.history.append({"step": step, "removed": removed, "flops": self.flops_fn(new_alive),
                         "alive": {k: int(v.sum()) for k, v in new_alive.items()}})
    return _replace_masks(state, new_alive)
