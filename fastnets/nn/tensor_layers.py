"""Block-Term and Tensor-Train linear layers and the recurrent cells built on them.

BT-RNN (Ye et al. 2018, "Learning Compact Recurrent Neural Networks with Block-Term Tensor
Decomposition", CVPR) replaces the input-to-hidden matrix of an RNN on high-dimensional inputs by a
Block-Term matrix (`fastnets.ops.bt_matmul`); TT-RNN (Yang et al. 2017) by a Tensor-Train matrix
(`fastnets.ops.tt_matmul`). The hidden-to-hidden matrix stays dense (it is small).

The cells compute all gates with one input-to-hidden map of G * features outputs (G = 4 for the
LSTM, 3 for the GRU): the gates are folded into the first output mode, i.e. the map's output
factors are (G * J_1, J_2, ..., J_N) for `hidden_factors` (J_1, ..., J_N), so the output splits
into G contiguous blocks of `features` (gate g is columns g * features ... (g + 1) * features).

Every cell exposes `input_projection(inputs)` and `recurrent_step(carry, projected)`;
`__call__(carry, inputs)` is their composition (the `nn.RNN` / `nn.scan` interface). Calling
`input_projection` on the whole (batch, time, features) sequence once, outside the scan, turns T
small products into one large one; `fastnets.models.bt_rnn.SequenceClassifier` does that.
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets.ops import block_term, factorization, tensor_train

Array = jax.Array


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class BTLinear(nn.Module):
  """y = x W + b with W (I, J) in Block-Term format (Ye et al. 2018).

  W = sum_{c=1}^{C} G_c x_1 A_c^(1) x_2 ... x_N A_c^(N): see `fastnets.ops.block_term` for the
  index convention. Parameters: `factor_n` of shape (C, I_n, J_n, R_n) for n = 0..N-1, `core` of
  shape (C, R_1, ..., R_N) and `bias` (J,). Weight parameter count (`fastnets.ops.bt_num_params`):

      C * (sum_n I_n J_n R_n + prod_n R_n)          (+ J for the bias).

  The product x W contracts x with the factors and cores in the FLOP-optimal order and never
  builds W. Initialisation: i.i.d. normal with Var(W_ij) = 1 / I (LeCun fan-in, as a dense
  layer), see `fastnets.ops.bt_init_stddevs`; with `exact_init_norm` the core is then rescaled
  so that the realised W has mean square exactly init_scale / I (`fastnets.ops.
  bt_rescale_to_norm`), not only in expectation: W is a sum of few products of N + 1 normals and
  its realised scale otherwise varies a lot between seeds (0.01x to 2.6x with rank 1).

  Attributes:
    input_factors: (I_1, ..., I_N), product = input features.
    output_factors: (J_1, ..., J_N), product = output features.
    tucker_rank: Tucker rank R (int) or per-mode ranks (R_1, ..., R_N).
    num_blocks: number C of Tucker blocks.
    use_bias: add a bias of shape (J,).
    init_scale: Var(W_ij) = init_scale / I at initialisation.
    exact_init_norm: rescale the initial core so that mean(W^2) = init_scale / I exactly.
    bias_init: initializer of the bias.
    dtype: computation dtype (default: promote inputs and parameters).
    param_dtype: parameter dtype.
    optimize: contraction-order strategy ("optimal" = fewest FLOPs), see `ops.bt_matmul_flops`.
    precision: passed to the einsum.
  """
  input_factors: Sequence[int]
  output_factors: Sequence[int]
  tucker_rank: int | Sequence[int] = 2
  num_blocks: int = 1
  use_bias: bool = True
  init_scale: float = 1.0
  exact_init_norm: bool = True
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  optimize: str = "optimal"
  precision: Any = None

  def setup(self):
    f_shapes, c_shape = block_term.bt_shapes(
        self.input_factors, self.output_factors, self.tucker_rank, self.num_blocks)
    f_std, c_std = block_term.bt_init_stddevs(
        self.input_factors, self.tucker_rank, self.num_blocks, self.init_scale)
    self.factors = [self.param(f"factor_{n}", _normal(s), shp, self.param_dtype)
                    for n, (shp, s) in enumerate(zip(f_shapes, f_std))]
    factors = list(self.factors)

    def core_init(key, shape, dtype):
      core = _normal(c_std)(key, shape, dtype)
      if self.exact_init_norm:
        core = block_term.bt_rescale_to_norm(factors, core, self.init_scale)
      return core

    self.core = self.param("core", core_init, c_shape, self.param_dtype)
    if self.use_bias:
      self.bias = self.param("bias", self.bias_init, (math.prod(self.output_factors),),
                             self.param_dtype)

  def __call__(self, x: Array) -> Array:
    """Args: x: (..., I) float. Returns: (..., J)."""
    x = jnp.asarray(x)
    in_dim = math.prod(factorization.as_factors(self.input_factors, "input_factors"))
    if x.ndim < 1 or x.shape[-1] != in_dim:
      factorization.check_factorization(x.shape[-1] if x.ndim else 1, self.input_factors,
                                         "input_factors", "the input dimension x.shape[-1]")
    x, core, *factors = nn.dtypes.promote_dtype(x, self.core, *self.factors, dtype=self.dtype)
    y = block_term.bt_matmul(x, factors, core, optimize=self.optimize, precision=self.precision)
    if self.use_bias:
      y = y + self.bias.astype(y.dtype)
    return y

  def dense_kernel(self) -> Array:
    """The materialised W of shape (I, J) (for tests; never used by `__call__`)."""
    return block_term.bt_dense(self.factors, self.core)


class TTLinear(nn.Module):
  """y = x W + b with W (I, J) in Tensor-Train format (Novikov et al. 2015; Yang et al. 2017).

  W[i, j] = G_1[:, i_1, j_1, :] ... G_N[:, i_N, j_N, :]; parameters `core_n` of shape
  (r_{n-1}, I_n, J_n, r_n) (r_0 = r_N = 1) and `bias` (J,). Weight parameter count
  (`fastnets.ops.tt_num_params`): sum_n r_{n-1} I_n J_n r_n (+ J for the bias). Initialisation:
  i.i.d. normal with Var(W_ij) = 1 / I; with `exact_init_norm` the last core is rescaled so that
  the realised W has mean square exactly init_scale / I (`fastnets.ops.tt_rescale_to_norm`).

  Attributes:
    input_factors: (I_1, ..., I_N).
    output_factors: (J_1, ..., J_N).
    tt_ranks: one inner rank (int), the N-1 inner ranks, or all N+1 ranks (ends 1).
    use_bias, init_scale, exact_init_norm, bias_init, dtype, param_dtype, optimize, precision:
      as in `BTLinear`.
  """
  input_factors: Sequence[int]
  output_factors: Sequence[int]
  tt_ranks: int | Sequence[int] = 4
  use_bias: bool = True
  init_scale: float = 1.0
  exact_init_norm: bool = True
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  optimize: str = "optimal"
  precision: Any = None

  def setup(self):
    shapes = tensor_train.tt_shapes(self.input_factors, self.output_factors, self.tt_ranks)
    stds = tensor_train.tt_init_stddevs(self.input_factors, self.tt_ranks, self.init_scale)
    cores = [self.param(f"core_{n}", _normal(s), shp, self.param_dtype)
             for n, (shp, s) in enumerate(zip(shapes[:-1], stds[:-1]))]
    first = list(cores)

    def last_init(key, shape, dtype):
      core = _normal(stds[-1])(key, shape, dtype)
      if self.exact_init_norm:
        core = tensor_train.tt_rescale_to_norm(first + [core], self.init_scale)
      return core

    cores.append(self.param(f"core_{len(shapes) - 1}", last_init, shapes[-1], self.param_dtype))
    self.cores = cores
    if self.use_bias:
      self.bias = self.param("bias", self.bias_init, (math.prod(self.output_factors),),
                             self.param_dtype)

  def __call__(self, x: Array) -> Array:
    """Args: x: (..., I) float. Returns: (..., J)."""
    x = jnp.asarray(x)
    in_dim = math.prod(factorization.as_factors(self.input_factors, "input_factors"))
    if x.ndim < 1 or x.shape[-1] != in_dim:
      factorization.check_factorization(x.shape[-1] if x.ndim else 1, self.input_factors,
                                         "input_factors", "the input dimension x.shape[-1]")
    x, *cores = nn.dtypes.promote_dtype(x, *self.cores, dtype=self.dtype)
    y = tensor_train.tt_matmul(x, cores, optimize=self.optimize, precision=self.precision)
    if self.use_bias:
      y = y + self.bias.astype(y.dtype)
    return y

  def dense_kernel(self) -> Array:
    """The materialised W of shape (I, J) (for tests; never used by `__call__`)."""
    return tensor_train.tt_dense(self.cores)


# ---------------------------------------------------------------------------------------------
# Recurrent cells.


def stacked_orthogonal(num: int, scale: float = 1.0) -> Callable[..., Array]:
  """Initializer for a (H, num * H) kernel made of `num` independent (H, H) orthogonal blocks.

  This is what `flax.linen.LSTMCell` / `GRUCell` do with one orthogonal matrix per gate.
  """
  def init(key, shape, dtype=jnp.float32):
    if len(shape) != 2 or shape[1] != num * shape[0]:
      raise ValueError(
          f"stacked_orthogonal({num}) needs a kernel shape (H, {num} * H), got {shape}.")
    keys = jax.random.split(key, num)
    ortho = nn.initializers.orthogonal(scale)
    return jnp.concatenate([ortho(k, (shape[0], shape[0]), dtype) for k in keys], axis=1)
  return init


def _gate_output_factors(features: int, hidden_factors, num_gates: int, num_modes: int):
  if hidden_factors is None:
    hidden_factors = factorization.balanced_factors(features, num_modes)
  hf = factorization.check_factorization(features, hidden_factors, "hidden_factors", "features")
  if len(hf) != num_modes:
    raise ValueError(f"hidden_factors {hf} must have as many modes as input_factors "
                     f"({num_modes}).")
  return (num_gates * hf[0],) + hf[1:]


class _GatedCell(nn.RNNCellBase):
  """Shared parts of the LSTM and GRU cells: the input map (subclass) and the recurrent kernel."""
  features: int
  gate_fn: Callable[..., Any] = nn.sigmoid
  activation_fn: Callable[..., Any] = nn.tanh
  recurrent_kernel_init: Callable[..., Array] | None = None  # default: stacked_orthogonal
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()
  carry_init: Callable[..., Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  num_gates = 0  # class constant set by the LSTM (4) and GRU (3) bases; not a dataclass field.

  def _input_map(self) -> nn.Module:
    raise NotImplementedError

  def setup(self):
    if isinstance(self.features, bool) or not isinstance(self.features, int) or self.features < 1:
      raise ValueError(f"features must be a positive int, got {self.features!r}.")
    self.input_map = self._input_map()
    self.recurrent = nn.Dense(
        self.num_gates * self.features, use_bias=False,
        kernel_init=self.recurrent_kernel_init or stacked_orthogonal(self.num_gates),
        dtype=self.dtype, param_dtype=self.param_dtype)
    if self.num_gates == 3:  # GRU: the candidate's recurrent bias sits inside r * (.)
      self.hidden_bias_n = self.param("hidden_bias_n", self.bias_init, (self.features,),
                                      self.param_dtype)

  def input_projection(self, inputs: Array) -> Array:
    """The input-to-hidden map with its bias: (..., in_features) -> (..., G * features)."""
    return self.input_map(inputs)

  def recurrent_step(self, carry, projected: Array):
    raise NotImplementedError

  def __call__(self, carry, inputs: Array):
    """One step: `recurrent_step(carry, input_projection(inputs))`.

    Args:
      carry: as returned by `initialize_carry`.
      inputs: (..., in_features) for this time step.

    Returns:
      (new_carry, output h of shape (..., features)).
    """
    return self.recurrent_step(carry, self.input_projection(inputs))

  @property
  def num_feature_axes(self) -> int:
    return 1


class _LSTMBase(_GatedCell):
  """LSTM gating, as `flax.linen.LSTMCell` (gates i, f, g, o; carry (c, h))."""
  num_gates = 4

  def recurrent_step(self, carry, projected: Array):
    """LSTM update from precomputed input projections.

    i = gate(z_i + h W_hi), f = gate(z_f + h W_hf), g = act(z_g + h W_hg), o = gate(z_o + h W_ho),
    c' = f c + i g, h' = o act(c'), with z = input_projection(x) (bias included).

    Args:
      carry: (c, h), each (..., features).
      projected: (..., 4 * features).

    Returns:
      ((c', h'), h').
    """
    c, h = carry
    z = projected + self.recurrent(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
    new_h = self.gate_fn(o) * self.activation_fn(new_c)
    return (new_c, new_h), new_h

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]):
    """Zero (c, h), each of shape input_shape[:-1] + (features,) and dtype param_dtype."""
    mem_shape = tuple(input_shape[:-1]) + (self.features,)
    k1, k2 = jax.random.split(rng)
    return (self.carry_init(k1, mem_shape, self.param_dtype),
            self.carry_init(k2, mem_shape, self.param_dtype))


class _GRUBase(_GatedCell):
  """GRU gating, as `flax.linen.GRUCell` (gates r, z, n; carry h)."""
  num_gates = 3

  def recurrent_step(self, carry, projected: Array):
    """GRU update from precomputed input projections (input biases inside `projected`).

    r = gate(z_r + h W_hr), u = gate(z_z + h W_hz), n = act(z_n + r (h W_hn + b_hn)),
    h' = (1 - u) n + u h.

    Args:
      carry: h, (..., features).
      projected: (..., 3 * features).

    Returns:
      (h', h').
    """
    h = carry
    zr, zz, zn = jnp.split(projected, 3, axis=-1)
    hr, hz, hn = jnp.split(self.recurrent(h), 3, axis=-1)
    r = self.gate_fn(zr + hr)
    u = self.gate_fn(zz + hz)
    n = self.activation_fn(zn + r * (hn + self.hidden_bias_n.astype(hn.dtype)))
    new_h = (1.0 - u) * n + u * h
    return new_h, new_h

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]):
    """Zero h of shape input_shape[:-1] + (features,) and dtype param_dtype."""
    mem_shape = tuple(input_shape[:-1]) + (self.features,)
    return self.carry_init(rng, mem_shape, self.param_dtype)


def _dense_input_map(cell: _GatedCell) -> nn.Module:
  return nn.Dense(cell.num_gates * cell.features, use_bias=True,
                  kernel_init=nn.initializers.lecun_normal(), bias_init=cell.bias_init,
                  dtype=cell.dtype, param_dtype=cell.param_dtype)


def _bt_input_map(cell: _GatedCell) -> nn.Module:
  in_f = factorization.as_factors(cell.input_factors, "input_factors")
  out_f = _gate_output_factors(cell.features, cell.hidden_factors, cell.num_gates, len(in_f))
  return BTLinear(in_f, out_f, cell.tucker_rank, cell.num_blocks, use_bias=True,
                  bias_init=cell.bias_init, dtype=cell.dtype, param_dtype=cell.param_dtype,
                  optimize=cell.optimize)


def _tt_input_map(cell: _GatedCell) -> nn.Module:
  in_f = factorization.as_factors(cell.input_factors, "input_factors")
  out_f = _gate_output_factors(cell.features, cell.hidden_factors, cell.num_gates, len(in_f))
  return TTLinear(in_f, out_f, cell.tt_ranks, use_bias=True, bias_init=cell.bias_init,
                  dtype=cell.dtype, param_dtype=cell.param_dtype, optimize=cell.optimize)


class DenseLSTMCell(_LSTMBase):
  """LSTM cell with a dense input-to-hidden map: the baseline of the BT/TT cells.

  Same equations and initialisation as `flax.linen.LSTMCell` (LeCun-normal input kernel, one
  orthogonal recurrent block per gate, zero biases), with the four gates' kernels stored
  concatenated: `input_map` (in, 4H) with the bias, `recurrent` (H, 4H) without.

  Attributes:
    features: hidden size H.
    gate_fn: gate nonlinearity (sigmoid).
    activation_fn: candidate/output nonlinearity (tanh).
    recurrent_kernel_init: initializer of the (H, G H) recurrent kernel (default: one orthogonal
      (H, H) block per gate, as flax).
    bias_init: initializer of the biases (zeros).
    carry_init: initializer of the carry (zeros).
    dtype: computation dtype; param_dtype: parameter (and carry) dtype.
  """

  def _input_map(self) -> nn.Module:
    return _dense_input_map(self)


class DenseGRUCell(_GRUBase):
  """GRU cell with a dense input-to-hidden map (equations and initialisation of flax's GRUCell).

  Parameters: `input_map` (in, 3H) with bias b_i, `recurrent` (H, 3H), `hidden_bias_n` (H,).
  Attributes as `DenseLSTMCell`.
  """

  def _input_map(self) -> nn.Module:
    return _dense_input_map(self)


class BTLSTMCell(_LSTMBase):
  """BT-LSTM (Ye et al. 2018): an LSTM whose input-to-hidden map is a `BTLinear`.

  The four gates share one Block-Term map with output factors (4 J_1, J_2, ..., J_N), so its
  weight has C (4 I_1 J_1 R + sum_{n>1} I_n J_n R + R^N) parameters (plus the 4H bias); the
  recurrent map is dense (H, 4H). Gating as `DenseLSTMCell`.

  Attributes:
    features: hidden size H.
    input_factors: (I_1, ..., I_N), product = input features.
    hidden_factors: (J_1, ..., J_N), product = features (default: `ops.balanced_factors`).
    tucker_rank: Tucker rank R (or per-mode ranks).
    num_blocks: number C of Tucker blocks.
    optimize: contraction-order strategy of the input map ("optimal" = fewest FLOPs).
    gate_fn, activation_fn, recurrent_kernel_init, bias_init, carry_init, dtype, param_dtype:
      as `DenseLSTMCell`.
  """
  input_factors: Sequence[int] = ()
  hidden_factors: Sequence[int] | None = None
  tucker_rank: int | Sequence[int] = 2
  num_blocks: int = 1
  optimize: str = "optimal"

  def _input_map(self) -> nn.Module:
    return _bt_input_map(self)


class BTGRUCell(_GRUBase):
  """BT-GRU: a GRU whose input-to-hidden map (3 gates, output factors (3 J_1, J_2, ...)) is a
  `BTLinear` (Ye et al. 2018). Attributes as `BTLSTMCell`.
  """
  input_factors: Sequence[int] = ()
  hidden_factors: Sequence[int] | None = None
  tucker_rank: int | Sequence[int] = 2
  num_blocks: int = 1
  optimize: str = "optimal"

  def _input_map(self) -> nn.Module:
    return _bt_input_map(self)


class TTLSTMCell(_LSTMBase):
  """TT-LSTM (Yang et al. 2017; the baseline in Ye et al. 2018): an LSTM whose input-to-hidden
  map is a `TTLinear` with output factors (4 J_1, J_2, ..., J_N).

  Attributes:
    features: hidden size H.
    input_factors: (I_1, ..., I_N), product = input features.
    hidden_factors: (J_1, ..., J_N), product = features (default: `ops.balanced_factors`).
    tt_ranks: TT ranks (int, N-1 inner ranks, or N+1 ranks with ends 1).
    optimize: contraction-order strategy of the input map.
    gate_fn, activation_fn, recurrent_kernel_init, bias_init, carry_init, dtype, param_dtype:
      as `DenseLSTMCell`.
  """
  input_factors: Sequence[int] = ()
  hidden_factors: Sequence[int] | None = None
  tt_ranks: int | Sequence[int] = 4
  optimize: str = "optimal"

  def _input_map(self) -> nn.Module:
    return _tt_input_map(self)


class TTGRUCell(_GRUBase):
  """TT-GRU: a GRU whose input-to-hidden map (3 gates) is a `TTLinear`. Attributes as
  `TTLSTMCell`.
  """
  input_factors: Sequence[int] = ()
  hidden_factors: Sequence[int] | None = None
  tt_ranks: int | Sequence[int] = 4
  optimize: str = "optimal"

  def _input_map(self) -> nn.Module:
    return _tt_input_map(self)
