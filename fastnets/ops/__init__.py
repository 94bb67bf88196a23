"""Pure functions on arrays (no Flax state, no globals): the numerical core of fastnets.

Every op takes arrays (and, where random, an explicit `jax.random` key first) and returns arrays.
Custom gradients (`jax.custom_vjp`) live next to the forward function they differentiate.
"""

# Losses and metrics.
from fastnets.ops.losses import (  # noqa: F401
    accuracy, cross_entropy_loss, distillation_kl,
)

# Reversible residual networks (Gomez et al. 2017).
from fastnets.ops.reversible import (  # noqa: F401
    additive_coupling, additive_coupling_inverse, reversible_sequence,
    reversible_sequence_inverse, split_channels,
)

# Walsh-Hadamard transform and Fastfood (Le et al. 2013; Yang et al. 2015).
from fastnets.ops.hadamard import (  # noqa: F401
    fwht, hadamard_matrix, next_power_of_two, pad_to_power_of_two,
)
from fastnets.ops.fastfood import (  # noqa: F401
    fastfood_matrix, fastfood_params_init, fastfood_permutations, fastfood_rbf_features,
    fastfood_rbf_params, fastfood_scaling_init, fastfood_transform, FastfoodParams, rbf_kernel,
)

# Limited precision: number formats and rounding (Gupta et al. 2015; Wang et al. 2018).
from fastnets.ops.number_formats import (  # noqa: F401
    BFLOAT16, FixedPoint, FLOAT16, FLOAT32, FloatFormat, Format, FP16_WANG, FP8_E4M3, FP8_E5M2,
)
from fastnets.ops.quantization import quantize, quantize_grad, quantize_tree  # noqa: F401
from fastnets.ops.rounding import (  # noqa: F401
    is_representable, round_nearest, stochastic_round, to_native,
)
from fastnets.ops.low_precision import (  # noqa: F401
    apply_updates_low_precision, chunked_conv_general_dilated, chunked_dot, chunked_dot_general,
    low_precision_updates, QuantConfig, quantized_conv_general_dilated, quantized_dot_general,
    round_to_format, RoundToFormatState, scale_grad,
)

# Pruning and direct sparse convolution (Zhu & Gupta 2017; Escort, Chen 2018).
from fastnets.ops.pruning import (  # noqa: F401
    apply_masks, default_prunable, magnitude_mask, magnitude_masks, magnitude_prune, mask_tree,
)
from fastnets.ops.pruning_optim import (  # noqa: F401
    gradual_magnitude_pruning, masked_updates, pruning_masks,
)
from fastnets.ops.pruning_schedules import zhu_gupta_sparsity, ZhuGuptaSchedule  # noqa: F401
from fastnets.ops.sparsity_report import format_sparsity_report, sparsity_report  # noqa: F401
from fastnets.ops.sparse_conv import (  # noqa: F401
    sparse_conv2d, sparse_conv2d_reference, SparseKernel, to_dense, to_sparse_kernel,
)

# GANs and PacGAN packing (Lin et al. 2018).
from fastnets.ops.packing import (  # noqa: F401
    check_degree, concat_packs, num_packs, pack, unpack,
)
from fastnets.ops.gan import (  # noqa: F401
    discriminator_loss, generator_loss, maxout,
)
from fastnets.ops.gan_metrics import (  # noqa: F401
    frechet_distance, mode_collapse_metrics, mode_histogram, reverse_kl_to_uniform,
    stacked_mnist_metrics, stacked_mnist_modes, standardized_distances,
)

# Dynamic input and kernel downsampling (Poulos et al. 2019).
from fastnets.ops.downsample import (  # noqa: F401
    kernel_pooling_matrix, pool_input, pool_kernel, pooled_size,
)

# Analytic FLOP counts of convolutions.
from fastnets.ops.flops import conv_flops, conv_flops_of, dense_flops  # noqa: F401

# Block-Term and Tensor-Train matrices (Ye et al. 2018; Novikov et al. 2015).
from fastnets.ops.block_term import (  # noqa: F401
    bt_dense, bt_init, bt_init_stddevs, bt_matmul, bt_matmul_flops, bt_num_params, bt_shapes,
)
from fastnets.ops.einsum_plans import ContractionPlan, einsum_path_flops  # noqa: F401
from fastnets.ops.factorization import balanced_factors, check_factorization  # noqa: F401
from fastnets.ops.tensor_train import (  # noqa: F401
    tt_dense, tt_init, tt_init_stddevs, tt_matmul, tt_matmul_flops, tt_num_params, tt_shapes,
)

# Kernel distances: Cramer-Wold distance (Tabor et al. 2018) and PKT (Passalis & Tefas 2018).
from fastnets.ops.kernel_distances import (  # noqa: F401
    cosine_affinities, cramer_wold_distance, cramer_wold_normality, cramer_wold_phi, pkt_loss,
    retrieval_map, silverman_gamma,
)

# Second-order pooling: covariance, iSQRT-COV square root (Li et al. 2018), GM-SOP gate.
from fastnets.ops.second_order import (  # noqa: F401
    covariance_pool, gate_balance_loss, sqrtm_eigh, sqrtm_newton_schulz, top_k_gates,
    upper_triangle,
)

# Binary and integer-only arithmetic: K-TanH (Kundu et al. 2019), ABC-Net (Lin et al. 2017).
from fastnets.ops.binary import (  # noqa: F401
    binary_activations, binary_approximation_error, binary_bases, binary_shifts, binary_weights,
    KTANH_TABLE, ktanh, pack_bits, packed_dot, packed_matmul, packed_words,
)

# Memory planning: cost-aware recomputation (SuperNeurons, Wang et al. 2018) and a chain planner.
from fastnets.ops.flops import flops_of, primitive_flops  # noqa: F401
from fastnets.ops.memory_planning import (  # noqa: F401
    chain_peak_bytes, ChainOption, ChainPlan, cost_aware_policy, flops_per_byte, min_peak_bytes,
    plan_chain, remat, residual_bytes,
)

# Variance-constancy loss (Littwin & Wolf 2018).
from fastnets.ops.variance_constancy import (  # noqa: F401
    MIN_BETA, sown_pairs, sub_batch_indices, variance_constancy_loss, variance_constancy_total,
    variance_ratio_loss,
)

# Adversarial noise layers (You et al. 2018) and FGSM.
from fastnets.ops.adversarial_noise import (  # noqa: F401
    adversarial_noise, check_eps, class_directions, fgsm, noise_magnitudes,
)

__all__ = [
    "chain_peak_bytes", "ChainOption", "ChainPlan", "cost_aware_policy", "flops_of",
    "flops_per_byte", "min_peak_bytes", "plan_chain", "primitive_flops", "remat",
    "residual_bytes",
    "binary_activations", "binary_approximation_error", "binary_bases", "binary_shifts",
    "binary_weights", "KTANH_TABLE", "ktanh", "pack_bits", "packed_dot", "packed_matmul",
    "packed_words",
    "cosine_affinities", "covariance_pool", "cramer_wold_distance", "cramer_wold_normality",
    "cramer_wold_phi", "distillation_kl", "gate_balance_loss", "pkt_loss", "retrieval_map",
    "silverman_gamma", "sqrtm_eigh", "sqrtm_newton_schulz", "top_k_gates", "upper_triangle",
    "accuracy", "additive_coupling", "additive_coupling_inverse", "apply_masks",
    "apply_updates_low_precision", "balanced_factors", "BFLOAT16", "bt_dense", "bt_init",
    "bt_init_stddevs", "bt_matmul", "bt_matmul_flops", "bt_num_params", "bt_shapes",
    "check_degree", "check_factorization", "chunked_conv_general_dilated", "chunked_dot",
    "chunked_dot_general", "concat_packs", "ContractionPlan", "conv_flops", "conv_flops_of",
    "cross_entropy_loss", "default_prunable", "discriminator_loss", "einsum_path_flops",
    "fastfood_matrix", "fastfood_params_init", "fastfood_permutations", "fastfood_rbf_features",
    "fastfood_rbf_params", "fastfood_scaling_init", "fastfood_transform", "FastfoodParams",
    "FixedPoint", "FLOAT16", "FLOAT32", "FloatFormat", "Format", "format_sparsity_report",
    "FP16_WANG", "FP8_E4M3", "FP8_E5M2", "fwht", "generator_loss", "gradual_magnitude_pruning",
    "hadamard_matrix", "is_representable", "kernel_pooling_matrix", "low_precision_updates",
    "magnitude_mask", "magnitude_masks", "magnitude_prune", "mask_tree", "masked_updates", "maxout",
    "mode_collapse_metrics", "mode_histogram", "next_power_of_two", "num_packs", "pack",
    "pad_to_power_of_two", "pool_input", "pool_kernel", "pooled_size", "pruning_masks",
    "QuantConfig", "quantize", "quantize_grad", "quantize_tree",
    "quantized_conv_general_dilated", "quantized_dot_general", "rbf_kernel",
    "reverse_kl_to_uniform", "reversible_sequence", "reversible_sequence_inverse",
    "round_nearest", "round_to_format", "RoundToFormatState", "sparse_conv2d",
    "sparse_conv2d_reference", "SparseKernel", "sparsity_report", "split_channels",
    "stacked_mnist_metrics", "stacked_mnist_modes", "standardized_distances",
    "stochastic_round", "to_dense", "to_native", "to_sparse_kernel", "tt_dense", "tt_init",
    "tt_init_stddevs", "tt_matmul", "tt_matmul_flops", "tt_num_params", "tt_shapes", "unpack",
    "zhu_gupta_sparsity", "ZhuGuptaSchedule",
    "scale_grad",
]
__all__ += ["frechet_distance"]
__all__ += [
    "MIN_BETA", "sown_pairs", "sub_batch_indices", "variance_constancy_loss",
    "variance_constancy_total", "variance_ratio_loss",
]
__all__ += ["adversarial_noise", "check_eps", "class_directions", "fgsm", "noise_magnitudes"]

# Channel pruning: Gate Decorator's Taylor scores and global ranking (You et al. 2019).
from fastnets.ops.channel_pruning import (  # noqa: F401,E402
    global_channel_ranking, layer_minimum, prune_to_flops, slice_channels, taylor_scores,
)

__all__ += ["global_channel_ranking", "layer_minimum", "prune_to_flops", "slice_channels",
            "taylor_scores"]

# Dynamic sparse training and EDST ensembles (FreeTickets, Liu et al. 2022; RigL; SET).
from fastnets.ops.sparse_training import (  # noqa: F401,E402
    DSTSchedule, DSTState, dynamic_sparse_training, EDSTSchedule, ensemble_probabilities,
    erk_counts, erk_densities, pairwise_disagreement, prune_regrow_masks, random_sparse_masks,
    dst_masks,
)

__all__ += ["dense_flops"]
__all__ += ["DSTSchedule", "DSTState", "dynamic_sparse_training", "EDSTSchedule",
            "ensemble_probabilities", "erk_counts", "erk_densities", "pairwise_disagreement",
            "prune_regrow_masks", "random_sparse_masks"]
__all__ += ["dst_masks"]

# Selective convolutional units (Jeong & Shin 2019).
from fastnets.ops.selective_conv import (  # noqa: F401,E402
    bilinear_shift, expected_channel_damage, reallocate,
)

__all__ += ["bilinear_shift", "expected_channel_damage", "reallocate"]
