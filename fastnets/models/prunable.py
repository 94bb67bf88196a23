"""Channel-prunable conv nets with Gate Decorator gates, and channel surgery that shrinks them.

`PrunableConvNet` has three layouts, each declaring which variables depend on which gate's
channels (`channel_dependencies`), so that `channel_surgery` can cut a trained, gated model down to
a smaller dense one of the same class:

* "plain": conv3x3-BN-ReLU x len(widths) (max-pool after the layers in `pool_after`), global
  average pool, dense classifier; every batch norm is gated (the paper's VGG case).
* "residual": a stem conv, then basic blocks conv-BN-ReLU-conv-BN + shortcut; only the block's
  inner channels (`widths`, one per block) are gated and pruned, the residual stream
  (`stem_width`) is not (the paper's ResNet case: pruning the residual stream would tie every
  block together).
* "grouped": a stem conv, then inverted-residual blocks 1x1 expand-BN-ReLU, depthwise 3x3
  (groups = channels)-BN(gated)-ReLU, 1x1 project-BN + shortcut. Pruning depthwise channel c
  also removes expand output c and its batch norm, since nothing else reads them.

`channel_surgery(model, variables)` removes the channels whose mask is 0, folds the gates into
the batch norms (phi * (gamma x + beta) = (phi gamma) x + phi beta) and returns the ungated
smaller model and its variables. Its outputs equal the gated model's (with those channels masked)
up to float rounding, in training and in inference mode. FLOPs of a masked model without building
it: `pruned_conv_flops`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnets.nn.gated import GATE_COLLECTION, GatedBatchNorm, gate_masks
from fastnets.ops.channel_pruning import slice_channels
from fastnets.ops.flops import model_conv_flops

__all__ = ["LAYOUTS", "PrunableConvNet", "channel_surgery", "pruned_conv_flops"]

LAYOUTS = ("plain", "residual", "grouped")
_BN = ("bn",)  # A GatedBatchNorm's inner batch norm.


class PrunableConvNet(nn.Module):
  """A small conv net whose channels can be gated, pruned and cut out (Gate Decorator).

  Attributes:
    num_classes: logits.
    layout: "plain", "residual" or "grouped" (see the module docstring).
    widths: the prunable widths: one per conv ("plain"), per block's inner conv ("residual"),
      per block's expanded width ("grouped").
    stem_width: the residual stream's width ("residual", "grouped").
    pool_after: "plain": max-pool 2x2 after these layer indices; "residual"/"grouped": these
      blocks have stride 2 (with a 1x1 projection shortcut).
    gated: GatedBatchNorm gates on the prunable batch norms (False: plain batch norms).
  """
  num_classes: int = 10
  layout: str = "plain"
  widths: Sequence[int] = (8, 16, 16, 32)
  stem_width: int = 16
  pool_after: Sequence[int] = (0, 2)
  gated: bool = True

  def gate_names(self) -> list[str]:
    """Names of the prunable (gated) batch norms, in the order of `widths`."""
    if self.layout == "plain":
      return [f"gbn{i}" for i in range(len(self.widths))]
    return [f"block{i}_gbn" for i in range(len(self.widths))]

  def widths_for(self, alive: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """The widths of the model that keeps the `alive` channels ({gate name: (C,) bool})."""
    return tuple(int(np.sum(alive[n])) for n in self.gate_names())

  def channel_dependencies(self) -> dict:
    """{gate name: [(variable path, axis), ...]}: every leaf indexed by that gate's channels."""
    def bn(name):
      return [(("params", name) + _BN + ("scale",), 0), (("params", name) + _BN + ("bias",), 0),
              (("batch_stats", name) + _BN + ("mean",), 0),
              (("batch_stats", name) + _BN + ("var",), 0)]

    def gate(name):
      return bn(name) + [(("params", name, "gate"), 0), ((GATE_COLLECTION, name, "mask"), 0)]

    deps = {}
    n = len(self.widths)
    for i, name in enumerate(self.gate_names()):
      if self.layout == "plain":
        nxt = (("params", f"conv{i + 1}", "kernel"), 2) if i + 1 < n else \
            (("params", "head", "kernel"), 0)
        deps[name] = [(("params", f"conv{i}", "kernel"), 3), *gate(name), nxt]
      elif self.layout == "residual":
        deps[name] = [(("params", f"block{i}_a", "kernel"), 3), *gate(name),
                      (("params", f"block{i}_b", "kernel"), 2)]
      else:
        deps[name] = [(("params", f"block{i}_expand", "kernel"), 3), *bn(f"block{i}_ebn"),
                      (("params", f"block{i}_dw", "kernel"), 3), *gate(name),
                      (("params", f"block{i}_project", "kernel"), 2)]
    return deps

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (N, H, W, C) float. Returns (N, num_classes) float32 logits."""
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}; got {self.layout!r}.")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC (batch, height, width, channels), got shape {x.shape}.")
    if not self.widths or any(int(w) < 1 for w in self.widths):
      raise ValueError(f"widths must be positive ints; got {self.widths!r}.")

    def conv(features, kernel, name, strides=1, groups=1):
      return nn.Conv(features, (kernel, kernel), strides=strides, padding="SAME", use_bias=False,
                     feature_group_count=groups, name=name)

    def norm(name, gated):
      return GatedBatchNorm(gated=gated and self.gated, name=name)

    if self.layout == "plain":
      for i, w in enumerate(self.widths):
        x = nn.relu(norm(f"gbn{i}", True)(conv(w, 3, f"conv{i}")(x), train))
        if i in self.pool_after:
          x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    else:
      x = nn.relu(norm("stem_bn", False)(conv(self.stem_width, 3, "stem")(x), train))
      for i, w in enumerate(self.widths):
        stride = 2 if i in self.pool_after else 1
        if stride == 1:
          shortcut = x
        else:
          shortcut = norm(f"block{i}_sbn", False)(
              conv(self.stem_width, 1, f"block{i}_proj", stride)(x), train)
        if self.layout == "residual":
          y = nn.relu(norm(f"block{i}_gbn", True)(conv(w, 3, f"block{i}_a", stride)(x), train))
          y = norm(f"block{i}_bn", False)(conv(self.stem_width, 3, f"block{i}_b")(y), train)
        else:
          y = nn.relu(norm(f"block{i}_ebn", False)(conv(w, 1, f"block{i}_expand")(x), train))
          y = conv(w, 3, f"block{i}_dw", stride, groups=w)(y)
          y = nn.relu(norm(f"block{i}_gbn", True)(y, train))
          y = norm(f"block{i}_pbn", False)(conv(self.stem_width, 1, f"block{i}_project")(y),
                                           train)
        x = nn.relu(y + shortcut)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def _fold_gates(params):
  """params without gate leaves, each gate folded into its batch norm's scale and bias."""
  out = {}
  for k, v in params.items():
    if isinstance(v, Mapping):
      if "gate" in v:
        g = v["gate"]
        bn = dict(v["bn"])
        bn["scale"] = bn["scale"] * g.astype(bn["scale"].dtype)
        bn["bias"] = bn["bias"] * g.astype(bn["bias"].dtype)
        out[k] = {kk: vv for kk, vv in v.items() if kk not in ("gate", "bn")} | {"bn": bn}
      else:
        out[k] = _fold_gates(v)
    else:
      out[k] = v
  return out


def channel_surgery(model: PrunableConvNet, variables: Mapping) -> tuple[PrunableConvNet, dict]:
  """The smaller dense model that computes what the gated, masked model computes.

  Removes every channel whose mask (the "channel_mask" collection) is 0: the conv's output
  channel, its batch norm's entries, its gate, the next conv's (or the classifier's) input
  channel, and for the grouped layout the depthwise channel and the expand conv's output. The
  kept gates are folded into the batch norms, so the result has no gates. Neither `model` nor
  `variables` is modified.

  Args:
    model: a gated `PrunableConvNet`.
    variables: its variables ({"params", "batch_stats", "channel_mask"}).

  Returns:
    (model of the same class with the remaining widths and gated=False, its variables).

  Raises:
    ValueError: a model or variables without gates, or a layer left with no channel.
  """
  if not isinstance(model, PrunableConvNet) or not model.gated:
    raise ValueError("channel_surgery needs a gated PrunableConvNet (gated=True); got "
                     f"{type(model).__name__} with gated={getattr(model, 'gated', None)}.")
  keep = gate_masks(variables)
  missing = sorted(set(model.gate_names()) - set(keep))
  if missing:
    raise ValueError(f"variables lack the channel masks of gates {missing}.")
  sliced = slice_channels(variables, model.channel_dependencies(), keep)
  sliced["params"] = _fold_gates(sliced["params"])
  del sliced[GATE_COLLECTION]
  return model.clone(widths=model.widths_for(keep), gated=False), sliced


@functools.lru_cache(maxsize=4096)
def _conv_flops_of_widths(layout: str, widths: tuple, stem_width: int, pool_after: tuple,
                          input_shape: tuple) -> int:
  model = PrunableConvNet(layout=layout, widths=widths, stem_width=stem_width,
                          pool_after=pool_after, gated=False)
  return model_conv_flops(model, input_shape, training_step=False)


def pruned_conv_flops(model: PrunableConvNet, alive: Mapping[str, np.ndarray],
                      input_shape: Sequence[int]) -> int:
  """Forward conv FLOPs (`fastnets.ops.flops.model_conv_flops`) of the model that keeps the
  `alive` channels ({gate name: (C,) bool}), without building its variables (cached by widths)."""
  return _conv_flops_of_widths(model.layout, model.widths_for(alive), int(model.stem_width),
                               tuple(int(p) for p in model.pool_after),
                               tuple(int(d) for d in input_shape))
