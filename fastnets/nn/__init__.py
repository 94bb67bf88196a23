"""Flax Linen modules: thin wrappers that own parameters and call `fastnets.ops`."""

# Reversible residual networks (Gomez et al. 2017).
from fastnets.nn.reversible import (  # noqa: F401
    RevBlock, ReversibleStack,
)

# Fastfood layers (Yang et al. 2015).
from fastnets.nn.fastfood import (  # noqa: F401
    FASTFOOD_CONSTANTS, FASTFOOD_DIAGONALS, fastfood_diagonal_mask, FastfoodDense,
    scale_fastfood_updates,
)

# Limited precision: quantized layers (Gupta et al. 2015; Wang et al. 2018).
from fastnets.nn.quantization import (  # noqa: F401
    quantized, quantized_layer_kind,
)

# Pruned models as direct sparse convolutions (Escort, Chen 2018).
from fastnets.nn.sparse import (  # noqa: F401
    conv_kernel_prunable, sparse_apply, sparse_convs, sparsify_variables,
)

# PacGAN packing (Lin et al. 2018).
from fastnets.nn.packing import (  # noqa: F401
    Packed, packed,
)

# Dynamic input and kernel downsampling (Poulos et al. 2019).
from fastnets.nn.downsample import (  # noqa: F401
    downsampled_apply, model_conv_flops, pooled_kernels, resolve_target,
)

# Block-Term and Tensor-Train recurrent layers (Ye et al. 2018).
from fastnets.nn.tensor_layers import (  # noqa: F401
    BTGRUCell, BTLinear, BTLSTMCell, DenseGRUCell, DenseLSTMCell, stacked_orthogonal, TTGRUCell,
    TTLinear, TTLSTMCell,
)

# Second-order pooling heads: iSQRT-COV (Li et al. 2018) and GM-SOP (Wang et al. 2018).
from fastnets.nn.second_order import (  # noqa: F401
    CovariancePooling, GMSOP,
)

# ABC-Net binary layers and the bit-packed inference path (Lin et al. 2017).
from fastnets.nn.binary import (  # noqa: F401
    ABCConv, ABCDense, binary_apply, binary_layer_paths, is_binary_layer, pack_binary_variables,
    PackedBinaryKernel,
)

# Memory planning: cost-aware recomputation of Flax models and a per-block planner.
from fastnets.nn.memory_planning import (  # noqa: F401
    block_options, block_strategies, Chain, chain_blocks, MemoryPlan, offload_support,
    plan_memory, planned_apply, planned_step_memory, remat_apply, training_step,
)

# Variance-constancy taps (Littwin & Wolf 2018).
from fastnets.nn.variance_constancy import (  # noqa: F401
    VarianceConstancy, VCL_COLLECTION,
)

# Adversarial noise layer (You et al. 2018).
from fastnets.nn.adversarial_noise import (  # noqa: F401
    ANL_DIRECTIONS, ANL_PERTURBATIONS, ANL_RNG, ANL_STATE, AdversarialNoise,
)

__all__ = [
    "block_options", "block_strategies", "Chain", "chain_blocks", "MemoryPlan",
    "offload_support", "plan_memory", "planned_apply", "planned_step_memory", "remat_apply",
    "training_step",
    "ABCConv", "ABCDense", "binary_apply", "binary_layer_paths", "is_binary_layer",
    "pack_binary_variables", "PackedBinaryKernel",
    "CovariancePooling", "GMSOP",
    "BTGRUCell", "BTLinear", "BTLSTMCell", "conv_kernel_prunable", "DenseGRUCell",
    "DenseLSTMCell", "downsampled_apply", "FASTFOOD_CONSTANTS", "FASTFOOD_DIAGONALS",
    "FastfoodDense", "scale_fastfood_updates", "fastfood_diagonal_mask",
    "model_conv_flops", "Packed", "packed", "pooled_kernels", "quantized",
    "quantized_layer_kind", "resolve_target", "RevBlock", "ReversibleStack", "sparse_apply",
    "sparse_convs", "sparsify_variables", "stacked_orthogonal", "TTGRUCell", "TTLinear",
    "TTLSTMCell",
]
__all__ += ["VarianceConstancy", "VCL_COLLECTION"]
__all__ += ["ANL_DIRECTIONS", "ANL_PERTURBATIONS", "ANL_RNG", "ANL_STATE", "AdversarialNoise"]

# Gate Decorator's gated batch norm (You et al. 2019).
from fastnets.nn.gated import (  # noqa: F401,E402
    GATE_COLLECTION, GatedBatchNorm, gate_masks, gate_values, with_gate_masks,
)

__all__ += ["GATE_COLLECTION", "GatedBatchNorm", "gate_masks", "gate_values", "with_gate_masks"]

# Selective convolutional units (Jeong & Shin 2019).
from fastnets.nn.selective import (  # noqa: F401,E402
    SELECTION_COLLECTION, SelectiveConv, selection_scores,
)

__all__ += ["SELECTION_COLLECTION", "SelectiveConv", "selection_scores"]
