"""Dynamic input and kernel downsampling as a training-loop option (Poulos et al. 2019).

Some mini-batches run a *downsampled* step: the same parameters, the input average-pooled by a
factor (2) and every convolution kernel pooled (3x3 -> 2x2, `fastnets.nn.pooled_kernels`); the
gradient reaches the full-size kernels through the pooling. The other batches run normally and
refine the full-resolution network. Which batches are downsampled is a schedule: every k-th
batch, each batch with probability p (a host RNG seeded by (seed, step), so deterministic in the
step and exactly resumable), or the first fraction of training; any of them can be followed by a
final phase of full-size steps only (`Until`).

Use with `fastnets.train.fit` (two compiled train steps, each compiled once and reused):
`dynamic_downsampling(model, every_k(4))` returns fit's `step_variants` and `choose_variant`
keyword arguments, so `fit(model, dataset, config, **dynamic_downsampling(model, every_k(4)))`
trains with every 4th batch downsampled.

The paper: "up to 23% less training time on residual networks with minimal accuracy loss"
(abstract); dataset, factors and schedules of its tables are not in what we have (unverified).
"""

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from fastnets import ops
from fastnets.nn.downsample import Target, downsampled_apply
from fastnets.train.steps import LossFn, classification_loss

FULL = "full"
DOWNSAMPLED = "downsampled"


class Schedule:
  """Which steps are downsampled: `schedule(step) -> bool`, deterministic in `step` (0-based)."""

  def __call__(self, step: int) -> bool:
    raise NotImplementedError

  def downsampled_fraction(self, steps: int) -> float:
    """The fraction of steps 0 .. steps - 1 that are downsampled."""
    return float(np.mean([bool(self(s)) for s in range(steps)])) if steps > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Never(Schedule):
  """No downsampled step (the baseline)."""

  def __call__(self, step: int) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class EveryK(Schedule):
  """Every k-th batch is downsampled (steps k-1, 2k-1, ...); with `full_every=True` every k-th
  batch is the full one and the others are downsampled (mostly-downsampled training)."""
  k: int
  full_every: bool = False

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 1 or (self.full_every and self.k < 2):
      raise ValueError(f"k must be an int >= 1 (>= 2 with full_every), got {self.k!r}.")

  def __call__(self, step: int) -> bool:
    hit = (step + 1) % self.k == 0
    return not hit if self.full_every else hit


@dataclasses.dataclass(frozen=True)
class Probability(Schedule):
  """Each batch is downsampled with probability p, drawn on the host from
  `np.random.default_rng([seed, step])`: the same steps on every run and after a resume."""
  p: float
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.p <= 1.0:
      raise ValueError(f"p must be a probability in [0, 1], got {self.p!r}.")

  def __call__(self, step: int) -> bool:
    return bool(np.random.default_rng([self.seed, 7919, int(step)]).random() < self.p)


@dataclasses.dataclass(frozen=True)
class Phase(Schedule):
  """The first `fraction` of `total_steps` steps are downsampled, the rest run at full size
  (coarse-to-fine, like progressive resizing but with pooled kernels)."""
  fraction: float
  total_steps: int

  def __post_init__(self):
    if not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f"fraction must be in [0, 1], got {self.fraction!r}.")
    if self.total_steps <= 0:
      raise ValueError(f"total_steps must be positive, got {self.total_steps!r}.")

  def __call__(self, step: int) -> bool:
    return step < int(round(self.fraction * self.total_steps))


@dataclasses.dataclass(frozen=True)
class Until(Schedule):
  """`base` for the first `fraction` of `total_steps` steps, then only full-size steps.

  A final full-resolution phase: the interleaved schedules (every k, probability p) otherwise
  keep downsampling up to the last, small-learning-rate steps, which then move the weights
  towards what suits the pooled network instead of the full one that is evaluated.
  """
  base: Schedule
  fraction: float
  total_steps: int

  def __post_init__(self):
    if not isinstance(self.base, Schedule):
      raise ValueError(f"base must be a Schedule, got {self.base!r}.")
    if not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f"until fraction must be in [0, 1], got {self.fraction!r}.")
    if self.total_steps <= 0:
      raise ValueError(f"total_steps must be positive, got {self.total_steps!r}.")

  def __call__(self, step: int) -> bool:
    return step < int(round(self.fraction * self.total_steps)) and bool(self.base(step))


def every_k(k: int, full_every: bool = False) -> EveryK:
  """Every k-th batch downsampled (or, with full_every, every k-th batch full)."""
  return EveryK(k, full_every)


def with_probability(p: float, seed: int = 0) -> Probability:
  """Each batch downsampled with probability p (seeded host RNG, deterministic in the step)."""
  return Probability(p, seed)


def first_fraction(fraction: float, total_steps: int) -> Phase:
  """The first `fraction` of training downsampled."""
  return Phase(fraction, total_steps)


def parse_schedule(spec: str, total_steps: int, seed: int = 0) -> Schedule:
  """A schedule from a flag string.

  Args:
    spec: "none"; "every:K" (every K-th batch downsampled); "full_every:K" (every K-th batch
      full, the others downsampled); "prob:P"; "phase:F" (the first fraction F of training);
      any of these followed by ",until:U" (the schedule for the first fraction U of training,
      then only full steps; `Until`), e.g. "every:2,until:0.6".
    total_steps: the run's number of steps (for "phase" and "until").
    seed: the host RNG seed (for "prob").

  Raises:
    ValueError: an unknown or malformed spec, naming the accepted forms.
  """
  forms = "'none', 'every:K', 'full_every:K', 'prob:P' or 'phase:F', optionally + ',until:U'"
  spec, comma, suffix = spec.partition(",")
  if comma:
    word, _, arg = suffix.partition(":")
    if word != "until" or not arg:
      raise ValueError(f"bad schedule suffix {suffix!r}; expected {forms}.")
    try:
      fraction = float(arg)
    except ValueError:
      raise ValueError(f"bad schedule suffix {suffix!r}; expected {forms}.") from None
    return Until(parse_schedule(spec, total_steps, seed), fraction, total_steps)
  kind, _, arg = spec.partition(":")
  try:
    if kind == "none" and not arg:
      return Never()
    if kind == "every":
      return EveryK(int(arg))
    if kind == "full_every":
      return EveryK(int(arg), full_every=True)
    if kind == "prob":
      return Probability(float(arg), seed)
    if kind == "phase":
      return Phase(float(arg), total_steps)
  except ValueError as e:
    raise ValueError(f"bad schedule {spec!r} ({e}); expected {forms}.") from None
  raise ValueError(f"unknown schedule {spec!r}; expected {forms}.")


def downsampled_loss(model: nn.Module, *, factor: int = 2, target: Target = None,
                     rescale: bool = True, label_smoothing: float = 0.0,
                     update_model_state: bool = False,
                     rng_streams: Sequence[str] = ("dropout",)) -> LossFn:
  """The loss of a downsampled step, with the signature of `classification_loss`.

  Softmax cross-entropy of `model` applied (train=True) to `pool_input(image, factor)` with every
  2-D `nn.Conv` kernel pooled to `target` (default ceil(k/2)); gradients flow to the full-size
  parameters.

  Args:
    model: any Linen classifier of fastnets (`model(x, train=...)` -> logits) whose output does
      not depend on the spatial size (global pooling; a flatten + dense head fails here).
    factor: input pooling factor (image height and width must be divisible by it).
    target, rescale: kernel pooling, see `fastnets.nn.pooled_kernels`.
    label_smoothing: of the cross-entropy.
    update_model_state: keep the batch-norm running statistics computed by the downsampled step.
      Default False: they are discarded, so the statistics used at evaluation (full resolution,
      full kernels) come from full-resolution batches only. (Batch norm still normalises the
      downsampled batch by its own statistics.)
    rng_streams: rng collections passed to the model (as in `classification_loss`).

  Returns:
    loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, {"accuracy"})).
  """

  def loss_fn(params, model_state, batch, rng):
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(rng_streams)}
    logits, new_state = downsampled_apply(
        model, {"params": params, **model_state}, batch["image"], train=True, rngs=rngs,
        mutable=list(model_state), factor=factor, target=target, rescale=rescale)
    loss = ops.cross_entropy_loss(logits, batch["label"], label_smoothing)
    kept = dict(new_state) if update_model_state else model_state
    return loss, (kept, {"accuracy": ops.accuracy(logits, batch["label"])})

  return loss_fn


def downsampling_variants(model: nn.Module, *, factor: int = 2, target: Target = None,
                          rescale: bool = True, label_smoothing: float = 0.0,
                          update_model_state: bool = False,
                          rng_streams: Sequence[str] = ("dropout",)) -> dict[str, LossFn]:
  """{"full": classification_loss, "downsampled": downsampled_loss}: `fit`'s `step_variants`.

  Arguments as in `downsampled_loss`. "full" comes first (fit reads the metric names from it).
  """
  return {
      FULL: classification_loss(model, label_smoothing, rng_streams),
      DOWNSAMPLED: downsampled_loss(model, factor=factor, target=target, rescale=rescale,
                                    label_smoothing=label_smoothing,
                                    update_model_state=update_model_state,
                                    rng_streams=rng_streams),
  }


def variant_chooser(schedule: Callable[[int], bool]) -> Callable[[int], str]:
  """`choose_variant(step) -> "downsampled" | "full"` from a schedule."""
  return lambda step: DOWNSAMPLED if schedule(step) else FULL


def dynamic_downsampling(model: nn.Module, schedule: Callable[[int], bool], *,
                         factor: int = 2, target: Target = None, rescale: bool = True,
                         label_smoothing: float = 0.0, update_model_state: bool = False,
                         rng_streams: Sequence[str] = ("dropout",)) -> dict:
  """Keyword arguments for `fit`: {"step_variants": ..., "choose_variant": ...}.

  `fit` jits one train step per variant (two in all), each compiled at its first use and reused
  for every later batch (the batch shape is fixed, so nothing recompiles).

  Args:
    model: the model passed to `fit`.
    schedule: `step -> bool` (True: downsampled), e.g. `every_k(4)`, `with_probability(0.25, s)`,
      `first_fraction(0.3, steps)`, or from `parse_schedule`.
    factor, target, rescale, label_smoothing, update_model_state, rng_streams: see
      `downsampled_loss`.
  """
  if factor < 1:
    raise ValueError(f"factor must be a positive int, got {factor!r}.")
  variants = downsampling_variants(model, factor=factor, target=target, rescale=rescale,
                                   label_smoothing=label_smoothing,
                                   update_model_state=update_model_state, rng_streams=rng_streams)
  return {"step_variants": variants, "choose_variant": variant_chooser(schedule)}
