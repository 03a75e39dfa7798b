"""4-bit NormalFloat (NF4) weight storage of QLoRA, Dettmers et al. 2023, arXiv:2305.14314.

NF4 (§3 "4-bit NormalFloat Quantization", eq. (4); the code pinned in App. E; used by the QLoRA
layer of eq. (5)): a weight tensor is cut into blocks of `block_size` consecutive elements
(row-major); each block is divided by its absolute maximum c2 = max|w| (the blockwise absmax
quantization of §2, eq. (1)/(2)), and each value is replaced by the index of the nearest of 16
levels placed at standard-normal quantiles, so that a normally distributed weight fills the 16
bins about equally. The code is asymmetric (8 positive levels, 7 negative, an exact 0) so that
zero — padding, pruned weights — is represented exactly.

Double quantization (§3 "Double Quantization", eq. (6)): the fp32 block constants c2 (one per
`block_size` weights, 32/64 = 0.5 bit per parameter) are themselves quantized to 8 bits in blocks
of `dq_block_size`, after subtracting their mean (they are all positive, so centring them uses
the symmetric code fully). That costs 8/64 + 32/(64·256) = 0.127 bit per parameter.

Deviation from the paper: the second level uses *linear* symmetric int8 (q = round(127·d / s),
s = the block's max|d|), not the paper's 8-bit float code. Linear int8 has one absolute step s/127
per block of constants, so a constant much smaller than its neighbours loses relative precision
that FP8 would keep; the bound (half a step, s/254) is tested.

Layout of `quantize`'s result (letters local to this module, besides the house P):
  P  weights (flattened, row-major);  A  block_size;  M = P / A  first-level blocks (constants);
  R  M padded with zeros to a multiple of W = dq_block_size;  U = R / W  second-level blocks.
  "codes"         uint8 [M, A // 2]  two 4-bit indices per byte; element 2i in the HIGH nibble
                  (bits 7..4), element 2i+1 in the LOW nibble (bitsandbytes' order).
                  `codes.reshape(-1)` is the flat [P // 2] byte string; the 2-D shape lets
                  `dequantize` read the block size (it cannot be told apart from the padded
                  double-quantized constants alone).
  "absmax"        float32 [M]        without double quantization.
  "absmax_q"      int8 [R]           with double quantization: round(127 (c2 − mean) / s).
  "absmax_scale"  float32 [U]        s = max |c2 − mean| over each block of W constants.
  "absmax_mean"   float32 []         the mean of the M constants (padding excluded), to 17 bits.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# The NF4 code of QLoRA App. E (= bitsandbytes' create_normal_map(0.9677083)), ascending.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=np.float32)


def _decision_thresholds(levels_16: np.ndarray) -> np.ndarray:
  """The 15 fp32 thresholds t_k with: nearest level of an fp32 x = #{k : x > t_k}.

  The exact midpoint m_k = (l_k + l_{k+1}) / 2 (exact in float64) need not be an fp32 number;
  taking t_k = the largest fp32 <= m_k makes `x > t_k` <=> `x > m_k` for every fp32 x, so the
  index is exactly the argmin of |x - l|, and an exact tie x = m_k goes to the lower index.
  """
  mid_15 = (levels_16[:-1].astype(np.float64) + levels_16[1:].astype(np.float64)) / 2
  t_15 = mid_15.astype(np.float32)
  t_15 = np.where(t_15.astype(np.float64) > mid_15, np.nextafter(t_15, np.float32(-np.inf)), t_15)
  return t_15.astype(np.float32)


_THRESHOLDS = _decision_thresholds(NF4_LEVELS)
_INV_127 = np.float32(1 / 127)


def normal_float_levels(offset: float = 0.9677083) -> np.ndarray:
  """The k-bit NormalFloat code for k = 4, from standard-normal quantiles (2305.14314, eq. (4)).

  As bitsandbytes' `create_normal_map(offset, use_extra_value=True)`: q_i = Φ⁻¹ of 8 equally
  spaced probabilities in [offset, 0.5) for the positive half and of 7 for the negative half,
  plus an exact 0, normalised into [-1, 1] by the largest. `offset` replaces the paper's
  1 − 1/(2·(2^k + 1)) ends, where Φ⁻¹ would be infinite; 0.9677083 reproduces App. E.
  """
  from scipy.stats import norm  # pylint: disable=g-import-not-at-top  (only needed here)
  # Float64 quantiles; the result is rounded once, to fp32, at the end.
  pos_8 = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  neg_7 = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  levels_16 = np.sort(np.concatenate([pos_8, [0.0], neg_7]))
  return (levels_16 / levels_16.max()).astype(np.float32)


def _check_blocks(block_size: int, dq_block_size: int) -> None:
  if not isinstance(block_size, (int, np.integer)) or block_size < 2 or block_size % 2:
    raise ValueError(
        f"block_size={block_size} must be an even integer >= 2 (two 4-bit codes share a byte); "
        "QLoRA uses 64")
  if not isinstance(dq_block_size, (int, np.integer)) or dq_block_size < 1:
    raise ValueError(
        f"dq_block_size={dq_block_size} must be an integer >= 1 (constants per second-level "
        "block); QLoRA uses 256")


def _divisor_hint(size: int, block_size: int) -> str:
  even = [d for d in range(2, block_size + 1, 2) if size % d == 0]
  if even:
    return f"e.g. {even[-1]}"
  return "none is even, so pad the weight to an even number of elements"


def _absmax_from_double_quant(q: dict[str, Array], M: int) -> Array:
  """Rebuilds the first-level constants c2 [M] from their 8-bit double quantization (eq. (6))."""
  U = q["absmax_scale"].shape[0]
  W = q["absmax_q"].shape[0] // U
  # Multiply by a pinned fp32 1/127 rather than divide by 127: XLA rewrites a division by a
  # constant into a multiplication under jit, and eager and jitted results should be bit-equal.
  # The step is then rounded to 17 significant bits so that q · step (|q| <= 127: 7 bits) is
  # exact in fp32: XLA contracts `q · step + mean` into one FMA under jit but not eagerly, and
  # with an exact product both give the same bits. The cost, |q| · step · 2^-17 <= s · 2^-17,
  # is 1/500 of the half step s / 254 that the int8 rounding already costs.
  step_U = jax.lax.reduce_precision(
      q["absmax_scale"] * _INV_127, exponent_bits=8, mantissa_bits=16)
  d_UW = q["absmax_q"].astype(jnp.float32).reshape(U, W) * step_U[:, None]
  return d_UW.reshape(-1)[:M] + q["absmax_mean"]


def quantize(
    w: Array,
    *,
    block_size: int = 64,
    double_quant: bool = True,
    dq_block_size: int = 256,
) -> dict[str, Array]:
  """NF4-quantizes `w` blockwise (2305.14314 §3); double-quantizes the constants (eq. (6)).

  Each block of `block_size` consecutive elements of the row-major flattened `w` is divided by
  its absmax c2 and each value is mapped to the index of the nearest NF4 level (an exact tie
  goes to the lower index). An all-zero block has c2 = 0 and gets the index of the 0 level, so
  it decodes to exactly 0. Returns the dict described in the module docstring. Jittable.
  """
  _check_blocks(block_size, dq_block_size)
  w = jnp.asarray(w)
  P = w.size
  if P == 0:
    raise ValueError(f"cannot quantize the empty {list(w.shape)} weight; it has no elements")
  if P % block_size:
    raise ValueError(
        f"block_size={block_size} does not divide the {P} elements of the {list(w.shape)} "
        f"weight; pick a block size that divides {P} ({_divisor_hint(P, block_size)})")
  M, A = P // block_size, block_size

  # Statistics in fp32 even for bf16 weights: the cast is exact, whereas a bf16 quotient w / c2
  # (8 significant bits) could move a value across a decision threshold, and the mean and
  # scales of the double quantization would be rounded to bf16.
  w_MA = w.astype(jnp.float32).reshape(M, A)
  absmax_M = jnp.max(jnp.abs(w_MA), axis=1)
  # An all-zero block divides by 1 instead of 0 (0/0 = NaN): its values are 0 either way.
  x_MA = w_MA / jnp.where(absmax_M > 0, absmax_M, 1.0)[:, None]  # in [-1, 1]; eq. (1)
  # Nearest level = number of decision thresholds strictly below x (see _decision_thresholds).
  idx_MA = jnp.searchsorted(
      jnp.asarray(_THRESHOLDS), x_MA, side="left", method="scan_unrolled")
  idx_MA = idx_MA.astype(jnp.uint8)
  codes = (idx_MA[:, 0::2] << 4) | idx_MA[:, 1::2]  # even element in the high nibble
  if not double_quant:
    return {"codes": codes, "absmax": absmax_M}

  # Double quantization, eq. (6): c2 = dequant(c1, c2_8bit); here c2 is centred on its mean first.
  # The constants are padded with zeros (after centring, so the padding never raises a block's
  # scale) up to a multiple of dq_block_size; the padding is stored and counted in bits_per_param.
  W = dq_block_size
  R = -(-M // W) * W
  # The centre is the mean rounded to 17 significant bits (any centre works; it is stored). The
  # rounding stands between XLA's `sum · (1/M)` and the subtraction below, which jit would
  # otherwise contract into one FMA (eagerly: two roundings), making jit and eager disagree.
  mean = jax.lax.reduce_precision(jnp.mean(absmax_M), exponent_bits=8, mantissa_bits=16)
  d_UW = jnp.pad(absmax_M - mean, (0, R - M)).reshape(R // W, W)
  scale_U = jnp.max(jnp.abs(d_UW), axis=1)
  # Symmetric linear int8 (not the paper's FP8): q ∈ [-127, 127], step scale / 127.
  q_UW = jnp.round(d_UW / jnp.where(scale_U > 0, scale_U, 1.0)[:, None] * 127.0)
  return {
      "codes": codes,
      "absmax_q": jnp.clip(q_UW, -127, 127).astype(jnp.int8).reshape(R),
      "absmax_scale": scale_U,
      "absmax_mean": mean,
  }


def dequantize(q: dict[str, Array], shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Inverse of `quantize`: w ≈ NF4_LEVELS[idx] · c2, as `shape` in `dtype` (2305.14314).

  The dequant of eq. (2) with the NF4 code; with double quantization, c2 is first rebuilt from
  its 8-bit constants: doubleDequant of eq. (6). The block size is read from the codes' shape
  [M, block_size // 2]. fp32 arithmetic, then a single cast to `dtype`. Jittable.

  Re-quantizing the result gives back the same codes whenever every rebuilt c2 is positive:
  always without double quantization, and with it when each c2 exceeds its error s / 254.
  """
  codes_MA2 = q["codes"]
  M, A = codes_MA2.shape[0], 2 * codes_MA2.shape[1]
  if math.prod(shape) != M * A:
    raise ValueError(
        f"shape {list(shape)} has {math.prod(shape)} elements but the codes hold {M * A} "
        f"({M} blocks of {A}); pass the shape of the weight that was quantized")
  if "absmax" in q:
    absmax_M = q["absmax"]
  else:
    absmax_M = _absmax_from_double_quant(q, M)
  idx_MA = jnp.stack([codes_MA2 >> 4, codes_MA2 & 0xF], axis=-1).reshape(M, A)
  w_MA = jnp.asarray(NF4_LEVELS)[idx_MA] * absmax_M[:, None]
  return w_MA.reshape(shape).astype(dtype)


def bits_per_param(q: dict[str, Array], num_params: int) -> float:
  """Storage measured from the arrays: 8 · total bytes (padding, the mean included) / params."""
  return 8.0 * sum(int(a.nbytes) for a in q.values()) / num_params


def constant_bits_per_param(
    block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> float:
  """The paper's accounting of the block constants (2305.14314 §3, "Double Quantization").

  32 / block_size without double quantization (0.5 for 64); with it 8 / block_size +
  32 / (block_size · dq_block_size) (0.127 for 64, 256). Padding and the one mean are not counted.
  """
  _check_blocks(block_size, dq_block_size)
  if not double_quant:
    return 32.0 / block_size
  return 8.0 / block_size + 32.0 / (block_size * dq_block_size)
