"""Tests for genfm.transformers.positions: sinusoidal, learned, RoPE, ALiBi."""

import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import positions

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")



def test_sinusoidal_matches_paper_formula_loop():
  D, T = 8, 5
  pos_BT = jnp.arange(T)[None]
  pe = np.asarray(positions.sinusoidal(pos_BT, D))[0]
  chex.assert_shape(pe, (T, D))
  for p in range(T):
    for i in range(D // 2):
      np.testing.assert_allclose(pe[p, 2 * i], np.sin(p / 10000 ** (2 * i / D)), atol=1e-6)
      np.testing.assert_allclose(pe[p, 2 * i + 1], np.cos(p / 10000 ** (2 * i / D)), atol=1e-6)


def test_sinusoidal_offset_is_a_fixed_linear_map():
  # The paper's motivation (sec. 3.5): PE(pos + k) = M_k PE(pos) for a fixed M_k, here the
  # per-pair rotation by angle k·ω_i (sin(a+b) = sin a cos b + cos a sin b, ...).
  D, k = 16, 3
  pe = np.asarray(positions.sinusoidal(jnp.arange(40)[None], D)[0], np.float64)
  M = np.zeros((D, D))
  for i in range(D // 2):
    b = k / 10000 ** (2 * i / D)
    M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[np.cos(b), np.sin(b)], [-np.sin(b), np.cos(b)]]
  np.testing.assert_allclose(pe[:-k] @ M.T, pe[k:], atol=2e-5)


def test_learned_positions_is_a_table_lookup():
  lp = positions.LearnedPositions(10, 4, rngs=nnx.Rngs(KEY(0)))
  pos = jnp.array([[0, 3, 9]])
  np.testing.assert_array_equal(lp(pos)[0], lp.embed.embedding[...][jnp.array([0, 3, 9])])


def _rotation_matrix(m, H, base=10_000.0):
  """R_{Θ,m} of eq. (15) of 2104.09864, pairing channel i with i + H/2."""
  R = np.zeros((H, H))
  for i in range(H // 2):
    a = m * base ** (-2 * i / H)
    j = i + H // 2
    R[i, i], R[i, j], R[j, i], R[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
  return R


def test_rope_equals_explicit_rotation_matrix():
  H = 8
  x = jax.random.normal(KEY(0), (1, 4, 2, H))
  pos = jnp.array([[0, 1, 7, 300]])
  got = np.asarray(positions.apply_rope(x, pos))
  for t, m in enumerate([0, 1, 7, 300]):
    want = np.asarray(x[0, t], np.float64) @ _rotation_matrix(m, H).T
    np.testing.assert_allclose(got[0, t], want, atol=1e-5)


def test_rope_preserves_norm():
  x = jax.random.normal(KEY(1), (2, 5, 3, 16))
  pos = jax.random.randint(KEY(2), (2, 5), 0, 4096)
  np.testing.assert_allclose(jnp.linalg.norm(positions.apply_rope(x, pos), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_inner_product_depends_only_on_offset():
  H = 16
  q = jax.random.normal(KEY(3), (1, 1, 1, H))
  k = jax.random.normal(KEY(4), (1, 1, 1, H))

  def score(m, n):
    rq = positions.apply_rope(q, jnp.array([[m]]))
    rk = positions.apply_rope(k, jnp.array([[n]]))
    return float(jnp.sum(rq * rk))

  for offset in (0, 2, 5):
    s = [score(n + offset, n) for n in (0, 3, 40, 500)]
    np.testing.assert_allclose(s, s[0], atol=1e-4)
  assert abs(score(5, 0) - score(0, 0)) > 1e-3  # and it does depend on the offset


def test_rope_keeps_dtype_and_rejects_odd_head_dim():
  x = jnp.ones((1, 2, 1, 4), jnp.bfloat16)
  assert positions.apply_rope(x, jnp.zeros((1, 2), jnp.int32)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="even head dimension"):
    positions.apply_rope(jnp.ones((1, 2, 1, 5)), jnp.zeros((1, 2), jnp.int32))


def test_alibi_slopes_follow_the_paper():
  # 8 heads: 1/2, 1/4, ..., 1/256 (sec. 3 of 2108.12409).
  np.testing.assert_allclose(positions.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
  # 16 heads: 1/√2, 1/2, ..., 1/256.
  np.testing.assert_allclose(positions.alibi_slopes(16), [2.0 ** (-(i + 1) / 2) for i in range(16)])
  # 6 heads (not a power of two): slopes of 4 heads, then every other slope of 8 heads.
  np.testing.assert_allclose(positions.alibi_slopes(6),
                             [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])


def test_alibi_bias_is_minus_slope_times_distance():
  N, T = 4, 5
  slopes = positions.alibi_slopes(N)
  pos = jnp.arange(T)[None]
  bias = np.asarray(positions.alibi_bias(slopes, pos, pos))
  chex.assert_shape(bias, (1, N, T, T))
  for n in range(N):
    for i in range(T):
      for j in range(i + 1):
        assert bias[0, n, i, j] == pytest.approx(-float(slopes[n]) * (i - j))
