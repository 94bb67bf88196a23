"""Sequence classifiers with dense, Tensor-Train or Block-Term recurrent cells (BT-RNN).

The BT-RNN setup of Ye et al. 2018 ("Learning Compact Recurrent Neural Networks with Block-Term
Tensor Decomposition", CVPR): a single recurrent layer reads a sequence of high-dimensional frames
(flattened video frames, or here MNIST digits), and a linear classifier reads its last hidden
state. Only the input-to-hidden map differs between the variants (dense / TT / BT), so the
comparison isolates the tensor format.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.nn import tensor_layers as tl
from fastnets.ops import factorization

CELLS = ("lstm", "gru", "tt_lstm", "tt_gru", "bt_lstm", "bt_gru")


class SequenceClassifier(nn.Module):
  """Recurrent layer over (batch, time, features) and a linear classifier on the last hidden state.

  Parameters live under `rnn_cell` (`input_map`: the input-to-hidden map whose size the paper
  compares; `recurrent`: the dense (H, G H) hidden-to-hidden kernel) and `head` (the classifier);
  `param_counts` splits them.

  Attributes:
    cell: "lstm" | "gru" (dense input map), "tt_lstm" | "tt_gru", "bt_lstm" | "bt_gru".
    hidden: hidden size H.
    num_classes: number of logits.
    input_factors: factorisation of the frame size (default: `ops.balanced_factors` of
      x.shape[-1] into `num_factors`; for 28x28 frames (4, 7, 4, 7) keeps rows and columns apart).
    hidden_factors: factorisation of `hidden` (default: balanced into `num_factors`).
    num_factors: number N of modes for the default factorisations.
    tucker_rank: Tucker rank R of the BT cells.
    num_blocks: number C of Tucker blocks of the BT cells.
    tt_rank: inner TT rank(s) of the TT cells.
    optimize: contraction-order strategy of the BT/TT input map ("optimal" = fewest FLOPs;
      "size" = fewest intermediate elements, often faster on CPU), see `ops.bt_matmul_flops`.
    dropout_rate: dropout on the last hidden state (training only; needs the "dropout" rng).
    hoist_input_projection: compute the input-to-hidden map for all time steps in one call before
      the scan over time (same parameters and results; far fewer, larger products). False runs
      the cell step by step as `nn.RNN` would.
    dtype: computation dtype of the recurrent layer and head (None: float32 parameters' dtype).
  """
  cell: str = "bt_lstm"
  hidden: int = 256
  num_classes: int = 10
  input_factors: Sequence[int] | None = None
  hidden_factors: Sequence[int] | None = None
  num_factors: int = 4
  tucker_rank: int | Sequence[int] = 2
  num_blocks: int = 1
  tt_rank: int | Sequence[int] = 4
  optimize: str = "optimal"
  dropout_rate: float = 0.0
  hoist_input_projection: bool = True
  dtype: Any = None

  def _make_cell(self, in_features: int) -> nn.RNNCellBase:
    if self.cell not in CELLS:
      raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}.")
    common = dict(features=self.hidden, dtype=self.dtype, name="rnn_cell")
    if self.cell == "lstm":
      return tl.DenseLSTMCell(**common)
    if self.cell == "gru":
      return tl.DenseGRUCell(**common)
    in_f = self.input_factors
    if in_f is None:
      in_f = factorization.balanced_factors(in_features, self.num_factors)
    in_f = factorization.check_factorization(in_features, in_f, "input_factors",
                                  "the frame size x.shape[-1]")
    hid_f = self.hidden_factors
    if hid_f is None:
      hid_f = factorization.balanced_factors(self.hidden, len(in_f))
    hid_f = factorization.check_factorization(self.hidden, hid_f, "hidden_factors", "hidden")
    tensor = dict(input_factors=in_f, hidden_factors=hid_f, optimize=self.optimize)
    if self.cell.startswith("bt_"):
      cls = tl.BTLSTMCell if self.cell == "bt_lstm" else tl.BTGRUCell
      return cls(**common, **tensor, tucker_rank=self.tucker_rank, num_blocks=self.num_blocks)
    cls = tl.TTLSTMCell if self.cell == "tt_lstm" else tl.TTGRUCell
    return cls(**common, **tensor, tt_ranks=self.tt_rank)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Classifies sequences.

    Args:
      x: float (batch, time, features) frames (flattened).
      train: enables dropout.

    Returns:
      float32 logits (batch, num_classes).
    """
    x = jnp.asarray(x)
    if x.ndim != 3:
      raise ValueError(f"x must have shape (batch, time, features), got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}.")
    cell = self._make_cell(x.shape[-1])
    carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    scan_kw = dict(variable_broadcast="params", split_rngs={"params": False}, in_axes=1,
                   out_axes=1)
    if self.hoist_input_projection:
      projected = cell.input_projection(x)  # (batch, time, G * hidden), one contraction.
      scan = nn.scan(lambda c, carry, z: c.recurrent_step(carry, z), **scan_kw)
      _, hs = scan(cell, carry, projected)
    else:
      scan = nn.scan(lambda c, carry, xt: c(carry, xt), **scan_kw)
      _, hs = scan(cell, carry, x)
    h = hs[:, -1]
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h).astype(jnp.float32)


class FrameSequenceClassifier(SequenceClassifier):
  """`SequenceClassifier` on frames stored as images (batch, time, features, 1) (or any
  (batch, time, ...)): flattens each frame, then runs the recurrent layer and the head."""

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x: (batch, time, ...) float frames. Returns: (batch, num_classes) float32 logits."""
    x = jnp.asarray(x)
    if x.ndim < 3:
      raise ValueError(f"x must have shape (batch, time, ...frame), got shape {x.shape}.")
    return super().__call__(x.reshape(x.shape[:2] + (-1,)), train=train)


def param_counts(params) -> dict[str, int]:
  """Parameter counts of a `SequenceClassifier`'s params tree.

  Args:
    params: the "params" collection (or the whole variables dict).

  Returns:
    {"input_params": weights and bias of the input-to-hidden map, "total_params": all}.
  """
  params = params.get("params", params)
  count = lambda tree: sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))
  return {"input_params": count(params["rnn_cell"]["input_map"]), "total_params": count(params)}
