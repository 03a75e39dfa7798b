"""Fused RMSNorm kernel (interpret mode on CPU) against the fp32 reference and flax's RMSNorm."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.kernels import rms_norm as rn


def _inputs(shape, dtype=jnp.float32, seed=0):
  kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
  d = shape[-1]
  x = (3.0 * jax.random.normal(kx, shape)).astype(dtype)
  w = (1.0 + 0.1 * jax.random.normal(kw, (d,))).astype(dtype)
  return x, w, jax.random.normal(kd, shape)


def _value_and_grads(fn, x, w, dy):
  @jax.jit
  def run(x, w, dy):
    y, vjp = jax.vjp(fn, x, w)
    return y, vjp(dy.astype(y.dtype))
  return run(x, w, dy)


# Rows not a multiple of the tile (3·37 = 111 rows in tiles of 16), a feature dim that is not a
# power of two (96), and the default tile choice.
@pytest.mark.parametrize("shape,block_rows", [((3, 37, 96), 16), ((2, 8, 256), None)])
def test_fp32_forward_and_grads_match_reference(shape, block_rows):
  x, w, dy = _inputs(shape)
  y, (dx, dw) = _value_and_grads(lambda a, b: rn.rms_norm(a, b, block_rows=block_rows), x, w, dy)
  ref_y, (ref_dx, ref_dw) = _value_and_grads(rn.rms_norm_reference, x, w, dy)
  chex.assert_shape(y, shape)
  np.testing.assert_allclose(y, ref_y, atol=1e-5, rtol=0)
  np.testing.assert_allclose(dx, ref_dx, atol=1e-4, rtol=0)
  np.testing.assert_allclose(dw, ref_dw, atol=1e-4, rtol=1e-5)  # dw sums 111 rows


def test_reference_equals_flax_rmsnorm():
  x, w, _ = _inputs((4, 64), seed=1)
  norm = nnx.RMSNorm(64, epsilon=1e-6, rngs=nnx.Rngs(0))
  norm.scale[...] = w
  np.testing.assert_allclose(rn.rms_norm_reference(x, w), norm(x), atol=1e-5, rtol=1e-6)


def test_bf16_within_2e2_and_at_most_twice_plain_jnp_bf16():
  x, w, dy = _inputs((4, 24, 128), dtype=jnp.bfloat16, seed=2)
  ref_y, ref_grads = _value_and_grads(rn.rms_norm_reference, x.astype(jnp.float32),
                                      w.astype(jnp.float32), dy)

  def plain_bf16(a, b):  # the unfused bf16 formula XLA would run
    return a * jax.lax.rsqrt(jnp.mean(a * a, axis=-1, keepdims=True) + 1e-6) * b

  errs = {}
  for name, fn in (("pallas", rn.rms_norm), ("plain", plain_bf16)):
    y, grads = _value_and_grads(fn, x, w, dy)
    assert y.dtype == jnp.bfloat16
    errs[name] = [float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref_y)) / jnp.max(jnp.abs(ref_y)))]
    errs[name] += [float(jnp.max(jnp.abs(g.astype(jnp.float32) - rg)) / jnp.max(jnp.abs(rg)))
                   for g, rg in zip(grads, ref_grads)]
  assert max(errs["pallas"]) < 2e-2, errs
  for ours, theirs in zip(errs["pallas"], errs["plain"]):
    assert ours <= 2 * theirs + 1e-3, errs


def test_scale_invariance_and_zero_rows():
  """RMSNorm(c·x) = RMSNorm(x) for c > 0; an all-zero row maps to zeros, not NaN."""
  x, w, _ = _inputs((16, 64), seed=3)
  x = x.at[5].set(0.0)
  y = rn.rms_norm(x, w)
  np.testing.assert_allclose(rn.rms_norm(7.0 * x, w), y, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(y[5], 0.0)
  dx = jax.grad(lambda a: jnp.sum(rn.rms_norm(a, w)))(x)
  assert bool(jnp.all(jnp.isfinite(dx)))


def test_bad_input_raises():
  x = jnp.ones((4, 8))
  with pytest.raises(ValueError, match=r"weight must have shape \[D\]"):
    rn.rms_norm(x, jnp.ones((7,)))
  with pytest.raises(ValueError, match="dtype must be one of"):
    rn.rms_norm(x.astype(jnp.int32), jnp.ones((8,), jnp.int32))
  with pytest.raises(ValueError, match="backend must be one of"):
    rn.rms_norm(x, jnp.ones((8,)), backend="cuda")
