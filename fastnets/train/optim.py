"""Optimizers and learning-rate schedules chosen by `TrainConfig`."""

import optax

from fastnets.train.config import TrainConfig


def make_schedule(config: TrainConfig) -> optax.Schedule:
  """The learning-rate schedule of `config` (with linear warm-up when warmup_steps > 0)."""
  decay_steps = max(config.steps - config.warmup_steps, 1)
  if config.schedule == "constant":
    main = optax.constant_schedule(config.learning_rate)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
  else:
    boundaries = {b - config.warmup_steps: config.decay_factor for b in config.decay_boundaries
                  if b > config.warmup_steps}
    main = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if not config.warmup_steps:
    return main
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warmup, main], [config.warmup_steps])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The optax optimizer of `config`: clipping, weight decay, then the update rule."""
  lr = make_schedule(config)
  parts = []
  if config.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer in ("sgd", "momentum", "nesterov"):
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    momentum = None if config.optimizer == "sgd" else config.momentum
    parts.append(optax.sgd(lr, momentum=momentum, nesterov=config.optimizer == "nesterov"))
  elif config.optimizer == "adam":
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.adam(lr, b1=config.momentum))
  else:
    parts.append(optax.adamw(lr, b1=config.momentum, weight_decay=config.weight_decay))
  return optax.chain(*parts)
