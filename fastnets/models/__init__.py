"""Whole networks, and a registry so experiments pick them by name (`--model=resnet20`)."""

import re
from typing import Any, Callable

import flax.linen as nn

from fastnets.models.cnn import SmallCNN
from fastnets.models.resnet import BasicBlock, BottleneckBlock, ResNet

# name -> factory(num_classes, **overrides). Names with a trailing depth ("resnet32") are parsed
# by `create_model`; technique modules add their own entries below.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn": lambda num_classes, **kw: SmallCNN(num_classes=num_classes, **kw),
    "resnet": lambda num_classes, depth=20, **kw: ResNet(num_classes=num_classes, depth=depth, **kw),
}


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
  raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())} "
                   "(a depth may follow resnet, e.g. resnet32).")


__all__ = ["BasicBlock", "BottleneckBlock", "ResNet", "SmallCNN", "create_model", "model_names",
           "register_model"]

from fastnets.models.ffnet import FastForward, FFNet, FFNetMainPath, FFNetStage, ffnet_spatial_sizes
register_model("ffnet", lambda num_classes, **kw: FFNet(num_classes=num_classes, **kw))
register_model("ffnet_noff", lambda num_classes, **kw: FFNet(num_classes=num_classes, fast_forward=False, **kw))
__all__ += ["FastForward", "FFNet", "FFNetMainPath", "FFNetStage", "ffnet_spatial_sizes"]
# PacGAN generators/discriminators: generative models, deliberately not in the classification registry.
from fastnets.models.pacgan import DCGANDiscriminator, DCGANGenerator, MaxoutDiscriminator, MLPGenerator, digit_classifier
__all__ += ["DCGANDiscriminator", "DCGANGenerator", "MaxoutDiscriminator", "MLPGenerator", "digit_classifier"]
# Deep Fried Convnets (issue 4): conv trunk with dense or Fastfood FC layers (fc="dense" | "fastfood_adaptive" | "fastfood_nonadaptive").
from fastnets.models.deep_fried import FC_KINDS, DeepFriedConvnet, fc_param_count
register_model("deep_fried", lambda num_classes, **kw: DeepFriedConvnet(num_classes=num_classes, **kw))
__all__ += ["DeepFriedConvnet", "FC_KINDS", "fc_param_count"]
# RevNet (issue 3): "revnet38" / "revnet110" / "revnet164" (create_model passes depth=); "resnet164"
# is the paper's bottleneck baseline (He et al. 2016b), an exact name that wins over "resnet" + depth.
# The factory `revnet` is not re-exported: it would shadow the submodule `fastnets.models.revnet`.
from fastnets.models.revnet import (RESNET_BASELINES, REVNET_CONFIGS, RevNet, RevResidualFn, RevTransition, matching_resnet, revnet38, revnet110, revnet164)
from fastnets.models.revnet import revnet as _revnet_factory
register_model("revnet", _revnet_factory)
register_model("resnet164", lambda num_classes, **kw: ResNet(num_classes=num_classes, **{"depth": 164, "bottleneck": True, **kw}))
__all__ += ["RESNET_BASELINES", "REVNET_CONFIGS", "RevNet", "RevResidualFn", "RevTransition", "matching_resnet", "revnet38", "revnet110", "revnet164"]
