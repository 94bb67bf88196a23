"""Pure functions on arrays (no Flax state, no globals): the numerical core of fastnets.

Every op takes arrays (and, where random, an explicit `jax.random` key first) and returns arrays.
Custom gradients (`jax.custom_vjp`) live next to the forward function they differentiate.
"""

from fastnets.ops.losses import accuracy, cross_entropy_loss
from fastnets.ops.numerics import (BFLOAT16, FLOAT16, FLOAT32, FP8_E4M3, FP8_E5M2, FP16_WANG, FixedPoint, FloatFormat, Format, is_representable, quantize, quantize_grad, quantize_tree, round_nearest, stochastic_round, to_native)
from fastnets.ops.low_precision import (QuantConfig, RoundToFormatState, apply_updates_low_precision, chunked_conv_general_dilated, chunked_dot, chunked_dot_general, low_precision_updates, quantized_conv_general_dilated, quantized_dot_general, round_to_format)
from fastnets.ops.pruning import (ZhuGuptaSchedule, apply_masks, default_prunable, format_sparsity_report, gradual_magnitude_pruning, magnitude_mask, magnitude_masks, magnitude_prune, masked_updates, pruning_masks, sparsity_report, zhu_gupta_sparsity)
from fastnets.ops.sparse_conv import (SparseKernel, conv_flops, sparse_conv2d, sparse_conv2d_reference, to_dense, to_sparse_kernel)
from fastnets.ops.hadamard import fwht, hadamard_matrix, next_power_of_two, pad_to_power_of_two
from fastnets.ops.fastfood import (FastfoodParams, fastfood_matrix, fastfood_params_init, fastfood_permutations, fastfood_rbf_features, fastfood_rbf_params, fastfood_scaling_init, fastfood_transform, rbf_kernel)

from fastnets.ops.downsample import (conv_flops_of, kernel_pooling_matrix, pool_input, pool_kernel, pooled_size)
from fastnets.ops.tensor_formats import (ContractionPlan, balanced_factors, bt_dense, bt_init, bt_init_stddevs, bt_matmul, bt_matmul_flops, bt_num_params, bt_shapes, check_factorization, einsum_path_flops, tt_dense, tt_init, tt_init_stddevs, tt_matmul, tt_matmul_flops, tt_num_params, tt_shapes)
__all__ = ["accuracy", "cross_entropy_loss"]
__all__ += ["conv_flops_of", "kernel_pooling_matrix", "pool_input", "pool_kernel", "pooled_size"]
__all__ += ["BFLOAT16", "FLOAT16", "FLOAT32", "FP8_E4M3", "FP8_E5M2", "FP16_WANG", "FixedPoint", "FloatFormat", "Format", "is_representable", "quantize", "quantize_grad", "quantize_tree", "round_nearest", "stochastic_round", "to_native"]
__all__ += ["QuantConfig", "RoundToFormatState", "apply_updates_low_precision", "chunked_conv_general_dilated", "chunked_dot", "chunked_dot_general", "low_precision_updates", "quantized_conv_general_dilated", "quantized_dot_general", "round_to_format"]
__all__ += ["ZhuGuptaSchedule", "apply_masks", "default_prunable", "format_sparsity_report", "gradual_magnitude_pruning", "magnitude_mask", "magnitude_masks", "magnitude_prune", "masked_updates", "pruning_masks", "sparsity_report", "zhu_gupta_sparsity"]
__all__ += ["SparseKernel", "conv_flops", "sparse_conv2d", "sparse_conv2d_reference", "to_dense", "to_sparse_kernel"]
__all__ += ["fwht", "hadamard_matrix", "next_power_of_two", "pad_to_power_of_two"]
__all__ += ["FastfoodParams", "fastfood_matrix", "fastfood_params_init", "fastfood_permutations", "fastfood_rbf_features", "fastfood_rbf_params", "fastfood_scaling_init", "fastfood_transform", "rbf_kernel"]
__all__ += ["ContractionPlan", "balanced_factors", "bt_dense", "bt_init", "bt_init_stddevs", "bt_matmul", "bt_matmul_flops", "bt_num_params", "bt_shapes", "check_factorization", "einsum_path_flops", "tt_dense", "tt_init", "tt_init_stddevs", "tt_matmul", "tt_matmul_flops", "tt_num_params", "tt_shapes"]
from fastnets.ops.reversible import (additive_coupling, additive_coupling_inverse, reversible_sequence, reversible_sequence_inverse, split_channels)
__all__ += ["additive_coupling", "additive_coupling_inverse", "reversible_sequence", "reversible_sequence_inverse", "split_channels"]
from fastnets.ops.packing import check_degree, concat_packs, num_packs, pack, unpack
__all__ += ["check_degree", "concat_packs", "num_packs", "pack", "unpack"]
from fastnets.ops.gan import discriminator_loss, generator_loss, maxout
__all__ += ["discriminator_loss", "generator_loss", "maxout"]
from fastnets.ops.gan_metrics import mode_collapse_metrics, mode_histogram, reverse_kl_to_uniform, stacked_mnist_metrics, stacked_mnist_modes, standardized_distances
__all__ += ["mode_collapse_metrics", "mode_histogram", "reverse_kl_to_uniform", "stacked_mnist_metrics", "stacked_mnist_modes", "standardized_distances"]
