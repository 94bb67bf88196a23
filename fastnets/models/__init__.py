"""Whole networks, and a registry so experiments pick them by name (`--model=resnet20`)."""

import difflib
import re
from typing import Any, Callable

import flax.linen as nn

from fastnets.models.abc_net import ABCCNN
from fastnets.models.bt_rnn import FrameSequenceClassifier, SequenceClassifier
from fastnets.models.cnn import SmallCNN
from fastnets.models.deep_fried import FC_KINDS, DeepFriedConvnet, fc_param_count
from fastnets.models.low_precision import LowPrecisionNet
from fastnets.models.dynamics import NOISES, NORMS, EluCNN, EluMLP, NoiseCNN
from fastnets.models.ffnet import (
    FastForward, FFNet, FFNetMainPath, FFNetStage, ffnet_spatial_sizes,
)
from fastnets.models.pacgan import (
    DCGANDiscriminator, DCGANGenerator, digit_classifier, MaxoutDiscriminator, MLPGenerator,
)
from fastnets.models.resnet import BasicBlock, BottleneckBlock, ResNet
# The factory `revnet` is not re-exported: it would shadow the submodule `fastnets.models.revnet`.
from fastnets.models.revnet import (
    matching_resnet, RESNET_BASELINES, REVNET_CONFIGS, RevNet, revnet110, revnet164, revnet38,
    RevResidualFn, RevTransition,
)
from fastnets.models.revnet import revnet as _revnet_factory
from fastnets.models.second_order import HEADS as POOLING_HEADS, PoolingCNN
from fastnets.models.lcw import MLPAutoencoder, MLPDecoder, latent_generator

__all__ = [
    "ABCCNN",
    "BasicBlock", "BottleneckBlock", "create_model", "DCGANDiscriminator", "DCGANGenerator",
    "DeepFriedConvnet", "digit_classifier", "FC_KINDS", "fc_param_count", "FastForward", "FFNet",
    "FFNetMainPath", "FFNetStage", "ffnet_spatial_sizes", "FrameSequenceClassifier",
    "latent_generator", "LowPrecisionNet", "matching_resnet", "MLPAutoencoder", "MLPDecoder",
    "MaxoutDiscriminator", "MLPGenerator", "model_names", "POOLING_HEADS", "PoolingCNN",
    "register_model", "ResNet", "RESNET_BASELINES", "REVNET_CONFIGS", "RevNet", "revnet110",
    "revnet164", "revnet38", "RevResidualFn", "RevTransition", "SequenceClassifier", "SmallCNN",
]
__all__ += ["EluCNN", "EluMLP", "NOISES", "NORMS", "NoiseCNN"]

# name -> factory(num_classes, **overrides). Names with a trailing depth ("resnet32") are parsed
# by `create_model`. PacGAN generators and discriminators are generative models and
# `SequenceClassifier` takes sequences, so neither is in this image-classification registry.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
  """Adds `factory(num_classes, **overrides) -> nn.Module` under `name` (for your own models)."""
  if name in _REGISTRY:
    raise ValueError(f"model name {name!r} is already registered.")
  _REGISTRY[name] = factory


def model_names() -> list[str]:
  """The registered model names (a trailing depth is allowed where the factory takes `depth`)."""
  return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a registered name ("cnn", "resnet", ...), optionally with a depth suffix ("resnet32"
      means `resnet` with depth=32).
    num_classes: number of output logits.
    **overrides: constructor arguments of the model.

  Raises:
    ValueError: unknown name, listing the known ones.
  """
  match = re.fullmatch(r"([a-z_]+?)(\d+)?", name)
  base, depth = (match.group(1), match.group(2)) if match else (name, None)
  if name in _REGISTRY:
    return _REGISTRY[name](num_classes, **overrides)
  if base in _REGISTRY and depth is not None:
    return _REGISTRY[base](num_classes, depth=int(depth), **overrides)
  close = difflib.get_close_matches(str(name), model_names(), n=1)
  hint = f' Did you mean "{close[0]}"?' if close else ""
  raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())} "
                   f"(a depth may follow resnet, e.g. resnet32).{hint}")


register_model("cnn", lambda num_classes, **kw: SmallCNN(num_classes=num_classes, **kw))
register_model("resnet", lambda num_classes, depth=20, **kw: ResNet(
    num_classes=num_classes, depth=depth, **kw))
register_model("ffnet", lambda num_classes, **kw: FFNet(num_classes=num_classes, **kw))
register_model("ffnet_noff", lambda num_classes, **kw: FFNet(
    num_classes=num_classes, fast_forward=False, **kw))
# Deep Fried Convnets: conv trunk with dense or Fastfood FC layers (fc= one of FC_KINDS).
register_model("deep_fried", lambda num_classes, **kw: DeepFriedConvnet(
    num_classes=num_classes, **kw))
# RevNet: "revnet38" / "revnet110" / "revnet164" (create_model passes depth=); "resnet164" is the
# paper's bottleneck baseline (He et al. 2016b), an exact name that wins over "resnet" + depth.
register_model("revnet", _revnet_factory)
register_model("resnet164", lambda num_classes, **kw: ResNet(
    num_classes=num_classes, **{"depth": 164, "bottleneck": True, **kw}))
# Second-order pooling heads (GM-SOP, Wang et al. 2018; iSQRT-COV, Li et al. 2018):
# "pooling_cnn" with head="gap" | "covariance" | "gm_sop".
register_model("pooling_cnn", lambda num_classes, **kw: PoolingCNN(num_classes=num_classes, **kw))
# ABC-Net (Lin et al. 2017): binary middle layers (M, N as weight_bases / activation_bases) and the
# same network in full precision.
register_model("abc_cnn", lambda num_classes, **kw: ABCCNN(num_classes=num_classes, **kw))
register_model("abc_cnn_float", lambda num_classes, **kw: ABCCNN(
    num_classes=num_classes, binary=False, **kw))
# Training dynamics: noise regularisers (ANL / CANL, You et al. 2018) and ELU networks without
# normalisation, with batch norm or with VCL taps (Littwin & Wolf 2018).
register_model("noise_cnn", lambda num_classes, **kw: NoiseCNN(num_classes=num_classes, **kw))
register_model("elu_mlp", lambda num_classes, **kw: EluMLP(num_classes=num_classes, **kw))
register_model("elu_cnn", lambda num_classes, **kw: EluCNN(num_classes=num_classes, **kw))

# Gate Decorator: channel-prunable conv nets (plain, residual, grouped) and channel surgery.
from fastnets.models.prunable import (  # noqa: E402
    channel_surgery, LAYOUTS as PRUNABLE_LAYOUTS, PrunableConvNet, pruned_conv_flops,
)

__all__ += ["channel_surgery", "PRUNABLE_LAYOUTS", "PrunableConvNet", "pruned_conv_flops"]
register_model("prunable", lambda num_classes, **kw: PrunableConvNet(
    num_classes=num_classes, **kw))

# LeNet-300-100 style MLP (the dense model of sparse training papers).
from fastnets.models.mlp import MLP  # noqa: E402

__all__ += ["MLP"]
register_model("mlp", lambda num_classes, **kw: MLP(num_classes=num_classes, **kw))

# Selective convolutional units in a small DenseNet-BC (Jeong & Shin 2019).
from fastnets.models.selective_densenet import SelectiveDenseNet  # noqa: E402

__all__ += ["SelectiveDenseNet"]
register_model("selective_densenet", lambda num_classes, **kw: SelectiveDenseNet(
    num_classes=num_classes, **kw))
