"""The training configuration: one frozen dataclass; variants are `dataclasses.replace`d."""

import dataclasses
from typing import Optional

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")

# Fields that change how often things are reported or saved but not what is computed: a workdir's
# checkpoint may be resumed with different values of these.
REPORTING_FIELDS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything the classification training loop needs to know, with validated values.

  Attributes:
    steps: optimizer steps in total.
    batch_size: global batch size; must divide evenly over the devices.
    eval_batch_size: evaluation batch size (rounded up to a multiple of the device count).
    optimizer: one of OPTIMIZERS ("momentum" is SGD with heavy-ball momentum).
    learning_rate: peak learning rate.
    schedule: "constant", "cosine" (to zero at `steps`) or "step" (multiply by `decay_factor` at
      each of `decay_boundaries`).
    warmup_steps: linear warm-up from 0 before the schedule.
    decay_boundaries: steps of the "step" schedule.
    decay_factor: factor of the "step" schedule.
    momentum: momentum of "momentum"/"nesterov"; beta1 of "adam"/"adamw".
    weight_decay: L2 added to the gradient for SGD variants (as in the ResNet/RevNet papers);
      decoupled decay for "adamw".
    grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
    label_smoothing: of the cross-entropy loss.
    augment: "none" or "crop_flip" (CIFAR augmentation).
    seed: the one seed for initialisation, shuffling, dropout and augmentation.
    log_every: steps between progress lines / TensorBoard train scalars.
    eval_every: steps between validation passes (0: only at the end).
    checkpoint_every: steps between checkpoints (0: only at the end); needs a workdir.
    keep_checkpoints: how many checkpoints to keep.
  """
  steps: int = 1000
  batch_size: int = 128
  eval_batch_size: int = 1000
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 0
  decay_boundaries: tuple[int, ...] = ()
  decay_factor: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 0.0
  grad_clip_norm: Optional[float] = None
  label_smoothing: float = 0.0
  augment: str = "none"
  seed: int = 0
  log_every: int = 100
  eval_every: int = 0
  checkpoint_every: int = 500
  keep_checkpoints: int = 2

  def __post_init__(self):
    def positive(name):
      if getattr(self, name) <= 0:
        raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}.")

    for name in ("steps", "batch_size", "eval_batch_size", "learning_rate", "log_every",
                 "keep_checkpoints"):
      positive(name)
    for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay"):
      if getattr(self, name) < 0:
        raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got "
                       f"{self.optimizer!r}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
    if self.augment not in ("none", "crop_flip"):
      raise ValueError(f"TrainConfig.augment must be 'none' or 'crop_flip', got {self.augment!r}.")
    if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
      raise ValueError(f"TrainConfig.grad_clip_norm must be positive or None, got "
                       f"{self.grad_clip_norm}.")
    object.__setattr__(self, "decay_boundaries", tuple(int(b) for b in self.decay_boundaries))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
