"""Binary and integer-only arithmetic: K-TanH, ABC-Net bases and activations, packed bit products.

Papers:
  * Kundu, Mellempudi, Das, Kalamkar et al., "K-TanH: Efficient TanH For Deep Learning", 2019:
    tanh computed with integer operations only (mask, shift, add and a 32-entry table) on the bit
    pattern of a bfloat16 (or float32) input.
  * Lin, Zhao, Pan, "Towards Accurate Binary Convolutional Neural Network" (ABC-Net), NeurIPS
    2017: a weight tensor W is approximated by M binary bases, W ~ sum_i alpha_i B_i with
    B_i = sign(W - mean(W) + u_i std(W)) (their Eq. 1-3), and an activation R by N binary
    activations, A = sum_n beta_n H_{v_n}(R) with H_v(R) = 2 [clip(R + v, 0, 1) >= 0.5] - 1
    (Eq. 5-6). A convolution of A with W is then M * N convolutions of {-1, +1} tensors.

K-TanH (`ktanh`). Write the float32 bit pattern of x as bits 31..0. For 0.25 <= |x| <= 3.75 the
index t is bits 24..20 (the two low exponent bits and the three high mantissa bits) and the input
mantissa Mi is bits 22..16 (the seven bfloat16 mantissa bits). The table gives (E_t, r_t, b_t);
the output has x's sign, exponent E_t and the seven-bit mantissa (Mi >> r_t) + b_t, i.e. a value
representable in bfloat16. |x| < 0.25 returns x, |x| > 3.75 (and +-inf) returns sign(x), NaN
returns NaN. A bfloat16 input is the top 16 bits of that pattern, so both dtypes run the same
integer code; float32 input is NOT rounded to bfloat16 first (the low 16 mantissa bits are
ignored, as in the paper). The derivative is the straight-through 1 - y^2 (a `jax.custom_vjp`).

ABC-Net. `binary_bases(w, M)` returns the bases and the least-squares coefficients alpha (Eq. 2:
alpha = argmin ||vec(W) - B alpha||^2, solved through the M x M normal equations with a
pseudo-inverse, so repeated bases are fine). `binary_weights` is the forward value sum alpha_i B_i
with the paper's straight-through gradient (Eq. 4: dc/dW = sum_i alpha_i dc/dB_i with dB_i/dW = 1,
i.e. (sum alpha) times the gradient reaching the approximation). `binary_activations` returns the
N binary activations with the straight-through gradient of the surrogate 2 clip(x + v, 0, 1) - 1
(for x and the shifts v). Forward values are exactly +-1 (and exactly sum alpha_i B_i): the
straight-through terms are added as `s - stop_gradient(s)`, which is exactly zero.

Packed products. `pack_bits` stores the signs of a {-1, +1} vector (bit 1 for +1) in uint32 words,
zero-padding the tail. For two such vectors of length K, a . b = K - 2 popcount(a XOR b) (XNOR +
population count); the zero padding XORs to zero. `packed_matmul` does this for every pair of rows
(`lax.population_count`), with an optional validity mask for zero-padded convolution patches
(a . b over valid positions = popcount(mask) - 2 popcount((a XOR b) AND mask)). All counts are
int32, exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["KTANH_TABLE", "binary_activations", "binary_approximation_error", "binary_bases",
           "binary_shifts", "binary_weights", "ktanh", "pack_bits", "packed_dot",
           "packed_matmul", "packed_words"]

# K-TanH lookup table (Kundu et al. 2019): (E_t, r_t, b_t) for t = 0..31, where t is bits 24..20
# of the float32 pattern. t = 0..7 cover |x| in [2, 4), 8..15 [0.25, 0.5), 16..23 [0.5, 1),
# 24..31 [1, 2).
KTANH_TABLE = (
    (126, 2, 119), (126, 4, 122), (126, 4, 123), (126, 4, 123),
    (126, 6, 126), (126, 6, 126), (126, 6, 126), (126, 6, 126),
    (125, 1, 1), (125, 0, -4), (125, 0, -6), (125, 0, -7),
    (125, 0, -10), (125, 0, -12), (125, 0, -15), (125, 0, -18),
    (125, 0, 112), (126, 1, -4), (126, 1, -1), (126, 1, 2),
    (126, 1, 3), (126, 1, 4), (126, 1, 4), (126, 1, 4),
    (126, 0, 65), (126, 1, 72), (126, 1, 73), (126, 1, 73),
    (126, 2, 88), (126, 2, 89), (126, 2, 89), (126, 4, 110),
)


def _pack_table(values, width: int) -> tuple[tuple[int, ...], int]:
  """Packs 32 small unsigned table values into uint32 words of `32 // width` entries each."""
  per = 32 // width
  words = []
  for start in range(0, len(values), per):
    word = 0
    for j, v in enumerate(values[start:start + per]):
      if not 0 <= v < (1 << width):
        raise ValueError(f"table value {v} does not fit in {width} bits.")
      word |= int(v) << (width * j)
    words.append(word)
  return tuple(words), per


# Why not a gather: XLA:CPU does not vectorize a table gather, which made K-TanH slower than
# jnp.tanh. Instead the table lives in a few uint32 constants: the high index bits pick a word
# through a tree of selects and a variable shift by the low bits extracts the entry, all in SIMD
# registers. Two tables: (E_t - 125) << 3 | r_t in 4 bits, and b_t + 18 in 8 bits.
_BT_BIAS = 18
_SHIFT_EXP_WORDS = _pack_table([((e - 125) << 3) | r for e, r, _ in KTANH_TABLE], 4)
_MANT_ADD_WORDS = _pack_table([b + _BT_BIAS for _, _, b in KTANH_TABLE], 8)
_QUARTER_BITS = 0x3E800000  # float32 pattern of 0.25
_SATURATE_BITS = 0x40700000  # float32 pattern of 3.75
_INF_BITS = 0x7F800000
_ONE_BITS = 0x3F800000
_SIGN_BIT = 0x80000000


def _table_lookup(packed: tuple[tuple[int, ...], int], width: int, index: jax.Array) -> jax.Array:
  """Entry `index` (uint32, 0..31) of a table packed by `_pack_table`."""
  words, per = packed
  level = [jnp.uint32(w) for w in words]
  bit = per.bit_length() - 1  # index bits below this one select within a word
  while len(level) > 1:
    take_odd = ((index >> jnp.uint32(bit)) & jnp.uint32(1)) == 1
    level = [jnp.where(take_odd, level[2 * i + 1], level[2 * i]) for i in range(len(level) // 2)]
    bit += 1
  shift = (index & jnp.uint32(per - 1)) * jnp.uint32(width)
  return (level[0] >> shift) & jnp.uint32((1 << width) - 1)


def _ktanh_bits(bits: jax.Array) -> jax.Array:
  """K-TanH on float32 bit patterns (uint32 in, uint32 out); integer operations only."""
  u32 = jnp.uint32
  sign = bits & u32(_SIGN_BIT)
  magnitude = bits & u32(~_SIGN_BIT & 0xFFFFFFFF)
  index = (bits >> u32(20)) & u32(31)
  mantissa = (bits >> u32(16)) & u32(127)
  shift_exp = _table_lookup(_SHIFT_EXP_WORDS, 4, index)
  mant_add = _table_lookup(_MANT_ADD_WORDS, 8, index)
  exponent = (shift_exp >> u32(3)) + u32(125)
  # 16-bit result without the sign: exponent and 7-bit mantissa (Mi >> r_t) + b_t (no carry: the
  # table keeps the mantissa within 0..127).
  top = (exponent << u32(7)) + (mantissa >> (shift_exp & u32(7))) + mant_add - u32(_BT_BIAS)
  from_table = sign | (top << u32(16))
  saturated = jnp.where(magnitude > u32(_INF_BITS), bits, sign | u32(_ONE_BITS))  # NaN stays NaN
  return jnp.where(magnitude < u32(_QUARTER_BITS), bits,
                   jnp.where(magnitude > u32(_SATURATE_BITS), saturated, from_table))


def _ktanh_forward(x: jax.Array) -> jax.Array:
  if x.dtype == jnp.bfloat16:
    bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << jnp.uint32(16)
    out = (_ktanh_bits(bits) >> jnp.uint32(16)).astype(jnp.uint16)
    return lax.bitcast_convert_type(out, jnp.bfloat16)
  x32 = x.astype(jnp.float32)  # float16 / float64: run on the float32 pattern of the value.
  y = lax.bitcast_convert_type(_ktanh_bits(lax.bitcast_convert_type(x32, jnp.uint32)),
                               jnp.float32)
  return y.astype(x.dtype)


@jax.custom_vjp
def _ktanh(x):
  return _ktanh_forward(x)


def _ktanh_fwd(x):
  y = _ktanh_forward(x)
  return y, y


def _ktanh_bwd(y, g):
  # Straight-through: the derivative of the exact tanh written in its output, 1 - y^2.
  return ((g * (1 - y * y)).astype(y.dtype),)


_ktanh.defvjp(_ktanh_fwd, _ktanh_bwd)


def ktanh(x: jax.Array) -> jax.Array:
  """K-TanH (Kundu et al. 2019): tanh from integer operations on the float's bit pattern.

  Args:
    x: float array of any shape; bfloat16 and float32 are the paper's cases. float16 and float64
      inputs are converted to float32, run through the same algorithm and converted back.

  Returns:
    An array of x's shape and dtype. Every finite output is representable in bfloat16 except in
    the identity range |x| < 0.25, where x is returned unchanged.

  Gradient: straight-through, dy/dx = 1 - y^2 (a `jax.custom_vjp`). Works under jit, vmap, grad.

  Raises:
    TypeError: x is not a real floating array (integers, booleans, complex).
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"ktanh: x must be a real floating array (float32 or bfloat16), got dtype "
                    f"{x.dtype}.")
  return _ktanh(x)


def _check_num_bases(num_bases, name: str) -> int:
  if isinstance(num_bases, bool) or not isinstance(num_bases, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= 1, got {num_bases!r}.")
  if num_bases < 1:
    raise ValueError(f"{name} must be >= 1, got {num_bases}.")
  return int(num_bases)


def binary_shifts(num_bases: int) -> np.ndarray:
  """ABC-Net's weight shifts u_i = -1 + 2 (i - 1) / (M - 1), i = 1..M (u = 0 when M = 1)."""
  m = _check_num_bases(num_bases, "num_bases")
  if m == 1:
    return np.zeros(1, np.float32)
  return np.linspace(-1.0, 1.0, m, dtype=np.float32)


def binary_bases(w: jax.Array, num_bases: int) -> tuple[jax.Array, jax.Array]:
  """The M binary bases of a weight tensor and their least-squares coefficients (ABC-Net Eq. 1-3).

  B_i = sign(W - mean(W) + u_i std(W)) with sign(0) = +1 and the shifts of `binary_shifts`; mean
  and (population) standard deviation over the whole tensor, as the paper does per layer.
  alpha = argmin_a ||vec(W) - sum_i a_i vec(B_i)||^2, from the M x M normal equations
  (pseudo-inverse: identical bases share their weight instead of failing).

  Args:
    w: float array, any shape (e.g. an HWIO conv kernel or an (in, out) dense kernel).
    num_bases: M >= 1.

  Returns:
    bases: (M, *w.shape) of w's dtype, values exactly -1 or +1.
    alpha: (M,) float32.

  Raises:
    TypeError / ValueError: num_bases not an int >= 1, or w not a floating array.
  """
  m = _check_num_bases(num_bases, "num_bases")
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"binary_bases: w must be a floating array, got dtype {w.dtype}.")
  w32 = w.astype(jnp.float32)
  centred = w32 - jnp.mean(w32)
  std = jnp.std(w32)
  shifts = jnp.asarray(binary_shifts(m)).reshape((m,) + (1,) * w.ndim)
  bases = jnp.where(centred[None] + shifts * std >= 0, 1.0, -1.0).astype(jnp.float32)
  flat = bases.reshape(m, -1)
  gram = jnp.dot(flat, flat.T, precision=lax.Precision.HIGHEST)
  rhs = jnp.dot(flat, w32.reshape(-1), precision=lax.Precision.HIGHEST)
  alpha = jnp.linalg.pinv(gram, hermitian=True) @ rhs
  return bases.astype(w.dtype), alpha


def binary_weights(w: jax.Array, num_bases: int) -> jax.Array:
  """sum_i alpha_i B_i of `binary_bases`, with ABC-Net's straight-through gradient (Eq. 4).

  The value is exactly the combination of the bases; the gradient with respect to w is
  (sum_i alpha_i) times the gradient reaching the approximation (dB_i/dW taken as 1, alpha held
  constant: it is recomputed from W at every step).

  Args: w: float array; num_bases: M >= 1. Returns: an array of w's shape and dtype.
  """
  bases, alpha = binary_bases(w, num_bases)
  alpha = lax.stop_gradient(alpha)
  approx = jnp.tensordot(alpha, lax.stop_gradient(bases).astype(jnp.float32), axes=1)
  w32 = jnp.asarray(w).astype(jnp.float32)
  straight_through = jnp.sum(alpha) * (w32 - lax.stop_gradient(w32))  # value exactly 0
  return (approx + straight_through).astype(jnp.asarray(w).dtype)


def binary_approximation_error(w: jax.Array, num_bases: int) -> jax.Array:
  """||W - sum_i alpha_i B_i|| / ||W|| (Frobenius), a float32 scalar."""
  bases, alpha = binary_bases(w, num_bases)
  w32 = jnp.asarray(w).astype(jnp.float32)
  approx = jnp.tensordot(alpha, bases.astype(jnp.float32), axes=1)
  return jnp.linalg.norm(w32 - approx) / jnp.linalg.norm(w32)


def binary_activations(x: jax.Array, shifts: jax.Array) -> jax.Array:
  """ABC-Net's binary activations H_{v_n}(x) = 2 [clip(x + v_n, 0, 1) >= 0.5] - 1 (Eq. 5).

  Args:
    x: float array, any shape.
    shifts: (N,) the shifts v_n (learnable in `fastnets.nn.ABCDense` / `ABCConv`).

  Returns:
    (N, *x.shape) of x's dtype with values exactly -1 or +1 (+1 where x + v_n >= 0.5). Gradient:
    straight-through, that of 2 clip(x + v_n, 0, 1) - 1 (2 inside 0 <= x + v_n <= 1, else 0), for
    both x and the shifts.

  Raises:
    ValueError: shifts is not one-dimensional.
  """
  x = jnp.asarray(x)
  shifts = jnp.asarray(shifts)
  if shifts.ndim != 1:
    raise ValueError(f"binary_activations: shifts must be (N,), got shape {shifts.shape}.")
  shifted = x[None] + shifts.astype(x.dtype).reshape((-1,) + (1,) * x.ndim)
  hard = jnp.where(shifted >= 0.5, 1.0, -1.0).astype(x.dtype)
  surrogate = 2 * jnp.clip(shifted, 0, 1) - 1
  return hard + (surrogate - lax.stop_gradient(surrogate))  # value exactly `hard`


def packed_words(length: int) -> int:
  """How many uint32 words hold `length` bits."""
  return -(-int(length) // 32)


def pack_bits(x: jax.Array) -> jax.Array:
  """Packs the signs of the last axis into uint32 words: bit j of word k is [x[32k + j] > 0].

  Args:
    x: array (..., K) of {-1, +1} values (any dtype; zeros count as -1, i.e. bit 0).

  Returns:
    (..., ceil(K / 32)) uint32; the tail of the last word is zero.

  Raises:
    ValueError: x is a scalar.
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError("pack_bits: x must have at least one dimension, got a scalar.")
  k = x.shape[-1]
  words = packed_words(k)
  bits = (x > 0).astype(jnp.uint32)
  bits = jnp.pad(bits, [(0, 0)] * (x.ndim - 1) + [(0, words * 32 - k)])
  bits = bits.reshape(x.shape[:-1] + (words, 32))
  weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
  return jnp.sum(bits * weights, axis=-1, dtype=jnp.uint32)  # distinct bits: the sum is an OR


def _check_words(name: str, words: jax.Array) -> jax.Array:
  words = jnp.asarray(words)
  if words.dtype != jnp.uint32:
    raise TypeError(f"{name} must be uint32 words from pack_bits, got dtype {words.dtype}.")
  if words.ndim < 1:
    raise ValueError(f"{name} must have a word axis, got a scalar.")
  return words


def _check_length(length, num_words: int) -> int:
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
    raise TypeError(f"length must be an int, got {length!r}.")
  if packed_words(length) != num_words or length < 1:
    raise ValueError(f"length {length} needs {packed_words(length)} words, the packed arrays "
                     f"have {num_words}.")
  return int(length)


def packed_dot(a: jax.Array, b: jax.Array, length: int) -> jax.Array:
  """The dot products of packed {-1, +1} vectors: length - 2 popcount(a XOR b), int32.

  Args:
    a, b: uint32 words (..., W) from `pack_bits`, broadcastable against each other.
    length: K, the number of bits (vector length) each holds; W must be ceil(K / 32).

  Raises:
    TypeError / ValueError: not uint32, word counts that differ or do not match `length`.
  """
  a, b = _check_words("a", a), _check_words("b", b)
  if a.shape[-1] != b.shape[-1]:
    raise ValueError(f"packed_dot: a has {a.shape[-1]} words, b has {b.shape[-1]}.")
  length = _check_length(length, a.shape[-1])
  mismatches = jnp.sum(lax.population_count(a ^ b).astype(jnp.int32), axis=-1)
  return length - 2 * mismatches


def _block_sizes(rows: int, cols: int, words: int) -> tuple[int, int]:
  """Row and column block sizes that keep one block's XOR words (rows x cols x words) near 2^19
  (2 MiB): XLA:CPU materialises that intermediate, so larger blocks fall out of cache."""
  row_block = min(rows, 64)
  target = max(1, (1 << 19) // (row_block * words))
  col_block = 1 << max(3, min(8, target.bit_length() - 1))  # a power of two in [8, 256]
  return row_block, min(cols, col_block)


def packed_matmul(a: jax.Array, b: jax.Array, length: int, mask: jax.Array | None = None,
                  block: int | None = None) -> jax.Array:
  """All dot products of the packed rows of a with those of b (XNOR + population count).

  Args:
    a: (P, W) uint32, e.g. packed binary activations (one row per example or patch).
    b: (O, W) uint32, e.g. packed binary weights (one row per output unit).
    length: K, the true vector length (W = ceil(K / 32)); the zero tails do not count.
    mask: optional (P, W) uint32 validity bits of a's positions (zero padding of a convolution):
      then a_p . b_o = popcount(mask_p) - 2 popcount((a_p XOR b_o) AND mask_p).
    block: rows of b per block; default chosen from the shapes (blocks of a's rows and of b's
      rows bound the (rows, block, W) intermediate, which XLA:CPU writes to memory).

  Returns:
    (P, O) int32, exactly the float dot products of the {-1, +1} (masked: {-1, 0, +1}) vectors.

  Raises:
    TypeError / ValueError: dtypes or shapes that do not match, naming the argument.
  """
  a, b = _check_words("a", a), _check_words("b", b)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"packed_matmul: a and b must be 2-D (rows, words), got shapes {a.shape} "
                     f"and {b.shape}.")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"packed_matmul: a has {a.shape[1]} words per row, b has {b.shape[1]}.")
  length = _check_length(length, a.shape[1])
  if mask is not None:
    mask = _check_words("mask", mask)
    if mask.shape != a.shape:
      raise ValueError(f"packed_matmul: mask must have a's shape {a.shape}, got {mask.shape}.")
  (p, w), o = a.shape, b.shape[0]
  row_block, col_block = _block_sizes(p, o, w)
  if block is not None:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
      raise ValueError(f"packed_matmul: block must be a positive int, got {block!r}.")
    col_block = min(o, int(block))

  def count(a_block, mask_block, b_block):
    x = a_block[:, None, :] ^ b_block[None, :, :]
    if mask_block is not None:
      x = x & mask_block[:, None, :]
    return jnp.sum(lax.population_count(x).astype(jnp.int32), axis=-1)

  b_blocks = jnp.pad(b, ((0, -o % col_block), (0, 0))).reshape(-1, col_block, w)

  def row_counts(args):
    a_block, mask_block = args
    per_col = lax.map(lambda bb: count(a_block, mask_block, bb), b_blocks)  # (nb, rows, cb)
    return jnp.moveaxis(per_col, 0, 1).reshape(a_block.shape[0], -1)

  pad_rows = -p % row_block
  a_blocks = jnp.pad(a, ((0, pad_rows), (0, 0))).reshape(-1, row_block, w)
  mask_blocks = (None if mask is None else
                 jnp.pad(mask, ((0, pad_rows), (0, 0))).reshape(-1, row_block, w))
  if a_blocks.shape[0] == 1:
    mismatches = row_counts((a_blocks[0], None if mask is None else mask_blocks[0]))
  else:
    mismatches = lax.map(row_counts, (a_blocks, mask_blocks)).reshape(-1, b_blocks.shape[0]
                                                                       * col_block)
  mismatches = mismatches[:p, :o]
  if mask is None:
    return length - 2 * mismatches
  valid = jnp.sum(lax.population_count(mask).astype(jnp.int32), axis=-1, keepdims=True)
  return valid - 2 * mismatches
