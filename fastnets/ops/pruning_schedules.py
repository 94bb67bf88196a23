"""The gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune", Eq. (1).

`s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3` for `t = t_0, t_0 + dt, ..., t_0 + n dt`: the
target sparsity rises quickly at first, when many redundant weights remain, then slowly. The
schedule is a function of the step (jit-compatible); `pruning_optim.gradual_magnitude_pruning`
applies it inside an optimizer.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from fastnets.checks import check_sparsity

__all__ = ["ZhuGuptaSchedule", "zhu_gupta_sparsity"]


def zhu_gupta_sparsity(step, *, final_sparsity: float, begin_step: int, end_step: int,
                       initial_sparsity: float = 0.0, frequency: int = 1, power: float = 3.0):
  """Target sparsity at `step` of the Zhu & Gupta (2017) schedule, Eq. (1).

  `s_t = s_f + (s_i - s_f) (1 - (t_q - t_0) / (t_end - t_0))^power`, where t_q is `step` rounded
  down to the last pruning step `t_0 + m * frequency`; `s_i` before `t_0`, `s_f` after `t_end`.
  Jit-compatible (`step` may be traced).

  Returns:
    float32 scalar.

  Raises:
    ValueError: sparsities outside [0, 1), a non-positive frequency, end_step before begin_step.
  """
  check_sparsity(final_sparsity, "final_sparsity")
  check_sparsity(initial_sparsity, "initial_sparsity")
  if isinstance(frequency, bool) or not isinstance(frequency, (int, np.integer)) or frequency < 1:
    raise ValueError(f"zhu_gupta_sparsity: frequency must be a positive int, got {frequency!r}.")
  if end_step < begin_step:
    raise ValueError(f"zhu_gupta_sparsity: end_step ({end_step}) must not precede begin_step "
                     f"({begin_step}).")
  t = jnp.asarray(step, jnp.float32)
  t0 = float(begin_step)
  tq = t0 + jnp.floor((t - t0) / frequency) * frequency
  frac = jnp.clip((tq - t0) / max(1.0, float(end_step - begin_step)), 0.0, 1.0)
  s = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** power
  return jnp.where(t < t0, initial_sparsity, s).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ZhuGuptaSchedule:
  """Gradual pruning schedule of Zhu & Gupta (2017), Eq. (1); call it with a step.

  Attributes:
    final_sparsity: s_f in [0, 1).
    begin_step: t_0, first pruning step.
    end_step: t_0 + n dt, last step at which sparsity increases.
    initial_sparsity: s_i in [0, 1).
    frequency: dt, steps between mask updates.
    power: exponent (3 in the paper).
  """

  final_sparsity: float
  begin_step: int = 0
  end_step: int = 1000
  initial_sparsity: float = 0.0
  frequency: int = 100
  power: float = 3.0

  def __post_init__(self):
    check_sparsity(self.final_sparsity, "final_sparsity")
    check_sparsity(self.initial_sparsity, "initial_sparsity")
    if self.begin_step < 0 or self.end_step < self.begin_step:
      raise ValueError(
        f"need 0 <= begin_step <= end_step; got begin_step={self.begin_step}, "
        f"end_step={self.end_step}.")
    if self.frequency < 1:
      raise ValueError(f"frequency must be a positive int; got {self.frequency}.")

  def __call__(self, step):
    return zhu_gupta_sparsity(
      step, final_sparsity=self.final_sparsity, begin_step=self.begin_step,
      end_step=self.end_step, initial_sparsity=self.initial_sparsity, frequency=self.frequency,
      power=self.power)

  def is_pruning_step(self, step):
    """True at t_0, t_0 + dt, ... up to end_step (jit-compatible)."""
    step = jnp.asarray(step)
    return ((step >= self.begin_step) & (step <= self.end_step)
            & ((step - self.begin_step) % self.frequency == 0))
