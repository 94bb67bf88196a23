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
