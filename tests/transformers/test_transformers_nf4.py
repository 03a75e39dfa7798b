"""Tests for genfm.transformers.nf4: the NF4 code, exact nearest-level coding against a numpy
brute force, nibble order, error bounds, double quantization and the storage in bits/param."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import nf4

L = nf4.NF4_LEVELS
EPS32 = np.finfo(np.float32).eps

# Jitted once per shape and setting: eager op-by-op dispatch compiles every primitive and was
# most of this file's run time. test_jit_equals_eager_and_bf16 holds these equal to eager.
quantize = jax.jit(nf4.quantize, static_argnames=("block_size", "double_quant", "dq_block_size"))
dequantize = jax.jit(nf4.dequantize, static_argnums=(1, 2))


def _ragged_weight(M=40, A=64, seed=0, lo=-3.0, hi=2.0):
  """[M·A/32, 32] normal weight whose M blocks of A have scales 10^lo … 10^hi, shuffled."""
  rng = np.random.default_rng(seed)
  scale_M = 10.0 ** rng.permutation(np.linspace(lo, hi, M))
  w_MA = rng.standard_normal((M, A)) * scale_M[:, None]
  return w_MA.astype(np.float32).reshape(-1, 32)


def _unpack(codes):
  """Reference unpacking from the documented layout: element 2i high nibble, 2i+1 low."""
  b = np.asarray(codes).reshape(-1)
  return np.stack([b >> 4, b & 0xF], axis=-1).reshape(-1)


def _reference_indices(w, block_size):
  """Brute force: argmin_l |x − l| per element in float64 (argmin ties → the lower index)."""
  w_MA = np.asarray(w, np.float32).reshape(-1, block_size)
  absmax_M = np.abs(w_MA).max(1)
  x_MA = w_MA / np.where(absmax_M > 0, absmax_M, 1)[:, None]  # the fp32 quotient, as specified
  dist_MAL = np.abs(x_MA.astype(np.float64)[..., None] - L.astype(np.float64))
  return dist_MAL.argmin(-1).reshape(-1)


# --- the code ----------------------------------------------------------------------------------


def test_levels_are_the_normal_quantile_construction():
  np.testing.assert_allclose(L, nf4.normal_float_levels(), rtol=0, atol=1e-6)
  assert L.dtype == np.float32 and L.shape == (16,)
  assert np.all(np.diff(L) > 0)  # 16 distinct, ascending
  assert (L == 0).sum() == 1 and (L > 0).sum() == 8 and (L < 0).sum() == 7
  assert L[0] == -1.0 and L[-1] == 1.0
  # The construction is the one that gives these numbers: another offset does not.
  assert np.abs(nf4.normal_float_levels(0.99) - L).max() > 1e-2


# --- coding is exact ---------------------------------------------------------------------------


def test_codes_equal_numpy_brute_force_on_ragged_blocks():
  w = _ragged_weight()
  q = quantize(w, block_size=64, double_quant=False)
  got = _unpack(q["codes"])
  want = _reference_indices(w, 64)
  np.testing.assert_array_equal(got[:64], want[:64])  # first block
  np.testing.assert_array_equal(got[-64:], want[-64:])  # last block
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(q["absmax"], np.abs(w.reshape(-1, 64)).max(1))
  assert len(np.unique(q["absmax"])) == 40  # the blocks really differ
  assert len(np.unique(got)) == 16  # every level is exercised


def test_nibble_order_and_ties_go_to_the_lower_index():
  # One block of 8 with absmax 1 (it holds ±1), so x = w exactly.
  w = np.array([-1.0, L[9], L[12], 1.0,
                L[8] / 2, L[6] / 2,  # exact midpoints: 0|L8 → 7 (the 0 level), L6|0 → 6
                L[3], L[14]], np.float32)
  q = quantize(w, block_size=8, double_quant=False)
  assert q["codes"].dtype == jnp.uint8 and q["codes"].shape == (1, 4)
  # Bytes (hi, lo) = (idx[2i], idx[2i+1]): (0, 9), (12, 15), (7, 6), (3, 14).
  np.testing.assert_array_equal(q["codes"].reshape(-1), [0x09, 0xCF, 0x76, 0x3E])


def test_weights_on_the_grid_round_trip_bit_exactly():
  rng = np.random.default_rng(1)
  M, A = 24, 64
  idx_MA = rng.integers(0, 16, (M, A))
  idx_MA[:, 5] = rng.choice([0, 15], M)  # a ±1 level in every block: the absmax is exact
  absmax_M = (10.0 ** rng.uniform(-3, 2, M)).astype(np.float32)
  idx_MA[7], absmax_M[7] = 7, 0.0  # an all-zero block
  w = (L[idx_MA] * absmax_M[:, None]).reshape(16, 96)  # fp32 products, as dequantize computes
  q = quantize(w, block_size=A, double_quant=False)
  np.testing.assert_array_equal(_unpack(q["codes"]), idx_MA.reshape(-1))
  w_hat = dequantize(q, w.shape)
  assert np.all(np.isfinite(w_hat))
  np.testing.assert_array_equal(w_hat, w)


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantize_of_dequantize_is_the_identity_on_codes(double_quant):
  # Scales 0.1 … 10: with double quantization every rebuilt constant stays positive.
  w = _ragged_weight(lo=-1.0, hi=1.0, seed=2)
  w[3] = 0.0  # the 32 elements of row 3 sit in one block (of 64); half of it is zero
  w[:2] = 0.0  # block 0 is all zero
  kw = dict(block_size=64, double_quant=double_quant, dq_block_size=16)
  q = quantize(w, **kw)
  q2 = quantize(dequantize(q, w.shape), **kw)
  np.testing.assert_array_equal(q2["codes"], q["codes"])
  assert np.all(_unpack(q["codes"])[:64] == 7)


# --- error bounds ------------------------------------------------------------------------------


def test_error_at_most_half_the_largest_gap_times_absmax():
  w = _ragged_weight(seed=3)
  q = quantize(w, block_size=64, double_quant=False)
  err_MA = np.abs(w - np.asarray(dequantize(q, w.shape))).reshape(-1, 64)
  absmax_M = np.abs(w.reshape(-1, 64)).max(1)
  half_gap = np.diff(L.astype(np.float64)).max() / 2  # 0.1519, between -1 and -0.696
  # + 2 ulp of the block scale: the fp32 quotient and the fp32 product each round once.
  assert np.all(err_MA <= absmax_M[:, None] * (half_gap + 2 * EPS32))
  # Elementwise it is half the gap around the chosen level, a bound that fails off by one index.
  mid = (L[:-1].astype(np.float64) + L[1:]) / 2
  idx = _unpack(q["codes"]).reshape(-1, 64)
  half_width = np.maximum(L - np.r_[L[0], mid], np.r_[mid, L[-1]] - L)[idx]
  assert np.all(err_MA <= absmax_M[:, None] * (half_width + 2 * EPS32))


def test_double_quantized_constants_within_half_an_int8_step():
  # Eq. (6) with linear int8: d = c2 − mean, q = round(127 d / s), s = max |d| of each block of
  # W constants, so |ĉ2 − c2| ≤ s / 254 (half the step s / 127), plus fp32 rounding of the
  # centring, division and rebuild (a few ulp of s, c2 and the mean).
  M, W, U = 40, 16, 3
  w = _ragged_weight(M=M, seed=4, lo=-1.0, hi=1.0)  # 40 constants: 3 blocks, the last padded
  q = quantize(w, block_size=64, double_quant=True, dq_block_size=W)
  assert q["absmax_q"].dtype == jnp.int8 and q["absmax_q"].shape == (U * W,)
  assert q["absmax_scale"].shape == (U,) and q["absmax_mean"].shape == ()
  np.testing.assert_array_equal(q["absmax_q"][M:], 0)  # zero padding

  c = np.abs(w.reshape(-1, 64)).max(1).astype(np.float64)
  mean = c.mean()
  np.testing.assert_allclose(q["absmax_mean"], mean, rtol=2.0 ** -17)  # rounded to 17 bits
  mean = float(q["absmax_mean"])  # the centre actually used
  s = np.array([np.abs(c[j * W:(j + 1) * W] - mean).max() for j in range(U)])
  np.testing.assert_allclose(q["absmax_scale"], s, rtol=1e-6)
  s_M = np.repeat(s, W)[:M]

  c_hat = np.asarray(jax.jit(nf4._absmax_from_double_quant, static_argnums=1)(q, M), np.float64)
  err = np.abs(c_hat - c)
  # (+ s · 2^-17: dequantize rounds the step to 17 bits so that the int8 product is exact.)
  bound = s_M / 254 + s_M * 2.0 ** -17 + 8 * EPS32 * (s_M + c + mean)
  assert np.all(err <= bound)
  assert (err / (s_M / 254)).max() > 0.8  # and it is the right bound: it is nearly reached
  # Relative to each block of constants' range (the mean lies inside it for this weight):
  rng_M = np.repeat([np.ptp(c[j * W:(j + 1) * W]) for j in range(U)], W)[:M]
  assert np.all(err <= rng_M / 127 * (1 + 1e-4))

  # The weights then carry both errors: ≤ c2 · half gap + |ĉ2 − c2| (|level| ≤ 1).
  half_gap = np.diff(L.astype(np.float64)).max() / 2
  err_w = np.abs(w - np.asarray(dequantize(q, w.shape))).reshape(-1, 64)
  assert np.all(err_w <= (c * (half_gap + 2 * EPS32) + bound + 2 * EPS32 * c)[:, None])


# --- storage -----------------------------------------------------------------------------------


def test_constant_bits_per_param_is_the_papers_accounting():
  assert nf4.constant_bits_per_param(64, double_quant=False) == 0.5
  assert nf4.constant_bits_per_param(64, double_quant=True, dq_block_size=256) == 0.126953125
  assert nf4.constant_bits_per_param() == pytest.approx(0.127, abs=1e-3)


def test_bits_per_param_measured_on_the_arrays():
  shape = (256, 1024)  # 262,144 = 64 · 256 · 16 elements: no padding of the constants
  P = 256 * 1024
  w = jax.random.normal(jax.random.key(0, impl="rbg"), shape)
  quant = jax.jit(nf4.quantize, static_argnames=("double_quant",))
  q_dq = quant(w, double_quant=True)
  assert q_dq["codes"].shape == (4096, 32) and q_dq["absmax_q"].shape == (4096,)
  assert nf4.bits_per_param(q_dq, P) == 4 + 0.126953125 + 32 / P
  assert nf4.bits_per_param(q_dq, P) == pytest.approx(4.127, abs=1e-3)
  assert nf4.bits_per_param(quant(w, double_quant=False), P) == 4.5


# --- jit and dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [False, True])
def test_jit_equals_eager_and_bf16(double_quant):
  w = _ragged_weight(seed=5, lo=-1.0, hi=1.0)
  kw = dict(block_size=64, double_quant=double_quant, dq_block_size=16)
  q = nf4.quantize(w, **kw)
  q_jit = jax.jit(functools.partial(nf4.quantize, **kw))(w)
  assert q.keys() == q_jit.keys()
  for k in q:
    assert q[k].dtype == q_jit[k].dtype
    np.testing.assert_array_equal(q[k], q_jit[k])

  w_hat = nf4.dequantize(q, w.shape)
  deq_jit = jax.jit(nf4.dequantize, static_argnums=(1, 2))
  np.testing.assert_array_equal(deq_jit(q, w.shape, jnp.float32), w_hat)
  w_bf16 = deq_jit(q, w.shape, jnp.bfloat16)
  assert w_bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(w_bf16, w_hat.astype(jnp.bfloat16))

  # A bf16 weight is coded as its (exact) fp32 cast: statistics are computed in fp32.
  w16 = jnp.asarray(w, jnp.bfloat16)
  q16 = nf4.quantize(w16, **kw)
  q32 = nf4.quantize(w16.astype(jnp.float32), **kw)
  for k in q16:
    np.testing.assert_array_equal(q16[k], q32[k])


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, shape, match", [
    (dict(block_size=64), (10, 100),
     r"block_size=64 does not divide the 1000 elements of the \[10, 100\] weight; "
     r"pick a block size that divides 1000 \(e\.g\. 50\)"),
    (dict(block_size=3), (4, 6), r"block_size=3 must be an even integer >= 2"),
    (dict(block_size=0), (4, 6), r"block_size=0 must be an even integer >= 2"),
    (dict(block_size=4, dq_block_size=0), (4, 6), r"dq_block_size=0 must be an integer >= 1"),
    (dict(block_size=4), (3, 3), r"divides 9 \(none is even, so pad the weight"),
    (dict(block_size=4), (0, 8), r"cannot quantize the empty \[0, 8\] weight"),
])
def test_bad_quantize_arguments_raise_one_clear_line(kw, shape, match):
  with pytest.raises(ValueError, match=match) as e:
    nf4.quantize(jnp.zeros(shape), **kw)
  assert "\n" not in str(e.value)


def test_bad_dequantize_shape_and_constant_bits_arguments_raise():
  q = nf4.quantize(jnp.ones((4, 16)), block_size=16, double_quant=False)
  with pytest.raises(ValueError, match=r"shape \[4, 8\] has 32 elements but the codes hold 64 "
                                       r"\(4 blocks of 16\)"):
    nf4.dequantize(q, (4, 8))
  with pytest.raises(ValueError, match=r"block_size=1 must be an even integer"):
    nf4.constant_bits_per_param(1)
