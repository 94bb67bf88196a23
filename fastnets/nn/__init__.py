"""Flax Linen modules: thin wrappers that own parameters and call `fastnets.ops`."""

from fastnets.nn.sparse import conv_kernel_prunable, sparse_apply, sparse_convs, sparsify_variables
__all__ = []
from fastnets.nn.downsample import downsampled_apply, model_conv_flops, pooled_kernels, resolve_target
__all__ += ["downsampled_apply", "model_conv_flops", "pooled_kernels", "resolve_target"]
from fastnets.nn.quantized import quantized, quantized_layer_kind
__all__ += ["quantized", "quantized_layer_kind"]
__all__ += ["conv_kernel_prunable", "sparse_apply", "sparse_convs", "sparsify_variables"]
from fastnets.nn.fastfood import FASTFOOD_CONSTANTS, FastfoodDense
__all__ += ["FASTFOOD_CONSTANTS", "FastfoodDense"]
from fastnets.nn.tensor_layers import (BTGRUCell, BTLinear, BTLSTMCell, DenseGRUCell, DenseLSTMCell, TTGRUCell, TTLinear, TTLSTMCell, stacked_orthogonal)
__all__ += ["BTGRUCell", "BTLinear", "BTLSTMCell", "DenseGRUCell", "DenseLSTMCell", "TTGRUCell", "TTLinear", "TTLSTMCell", "stacked_orthogonal"]
from fastnets.nn.reversible import ReversibleStack, RevBlock
__all__ += ["ReversibleStack", "RevBlock"]
from fastnets.nn.packing import Packed, packed
__all__ += ["Packed", "packed"]
