"""Training: configuration, optimizers, jit'd steps, data-parallel sharding, checkpoints, `fit`."""

from fastnets.train.checkpoint import (Checkpointer, WorkdirMismatchError,
                                       check_or_record_run_config)
from fastnets.train.config import OPTIMIZERS, SCHEDULES, TrainConfig
from fastnets.train.loop import NonFiniteLossError, TrainResult, evaluate, fit
from fastnets.train.multiseed import (SEED_BATCHING, MultiSeedResult, evaluate_seeds,
                                      fit_seeds, map_seeds)
from fastnets.train.optim import make_optimizer, make_schedule
from fastnets.train.sharding import (DATA_AXIS, batch_sharded, check_batch_size, make_mesh,
                                     maybe_initialize_distributed, replicate, replicated,
                                     shard_batch)
from fastnets.train.tuning import grid_points, grid_search, tune_arms
from fastnets.train.distillation import TeacherFn, distillation_loss, with_sown_losses
from fastnets.train.steps import (LossFn, TrainState, classification_loss, empty_metric_sums,
                                  init_train_state, make_eval_step, make_train_step)
from fastnets.train.steps import init_key, make_keyed_train_step
from fastnets.train.dynamics import (LayerStatsRecorder, layer_statistics, lr_sweep,
                                      variance_constancy_loss_fn)

from fastnets.train.adversarial import (activation_grads, anl_loss_fn, canl_loss_fn,
                                        fgsm_evaluator, fgsm_input_range, fgsm_training_loss_fn,
                                        input_grads, value_and_recorded_grad, zero_perturbations)
__all__ = [
    "Checkpointer", "DATA_AXIS", "LossFn", "NonFiniteLossError", "OPTIMIZERS", "SCHEDULES",
    "TrainConfig", "TrainResult", "TrainState", "WorkdirMismatchError", "batch_sharded",
    "check_batch_size", "check_or_record_run_config", "classification_loss",
    "empty_metric_sums", "evaluate", "fit", "grid_points", "grid_search", "init_train_state",
    "make_eval_step", "make_mesh",
    "make_optimizer", "make_schedule", "make_train_step", "maybe_initialize_distributed",
    "replicate", "replicated", "shard_batch", "tune_arms",
    "MultiSeedResult", "SEED_BATCHING", "evaluate_seeds", "fit_seeds", "init_key",
    "make_keyed_train_step", "map_seeds",
    "TeacherFn", "distillation_loss", "with_sown_losses",
]
__all__ += ["LayerStatsRecorder", "layer_statistics", "lr_sweep", "variance_constancy_loss_fn"]
__all__ += ["activation_grads", "anl_loss_fn", "canl_loss_fn", "fgsm_evaluator",
            "fgsm_input_range", "fgsm_training_loss_fn", "input_grads",
            "value_and_recorded_grad", "zero_perturbations"]

# Gate Decorator's tick-tock pruning as fit callbacks (You et al. 2019).
from fastnets.train.gate_decorator import (  # noqa: E402
    gate_l1_loss, OneShotPrune, taylor_channel_scores, TickTock,
)

__all__ += ["gate_l1_loss", "OneShotPrune", "taylor_channel_scores", "TickTock"]

# Selective convolutional units' channel re-allocation as a fit callback (Jeong & Shin 2019).
from fastnets.train.selective import SelectionReallocation  # noqa: E402

__all__ += ["SelectionReallocation"]
