"""Tests for genfm.transformers.norms: equal to nnx.LayerNorm / nnx.RMSNorm and to the formulas."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import norms

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


D = 16


def _x(dtype=jnp.float32):
  return (3.0 + 2.0 * jax.random.normal(KEY(0), (2, 5, D))).astype(dtype)


def _random_affine(mod, seed=1):
  # Non-trivial g and b, so that the comparison also covers the affine part.
  k1, k2 = jax.random.split(KEY(seed))
  mod.scale[...] = jax.random.normal(k1, (D,))
  if getattr(mod, "bias", None) is not None:
    mod.bias[...] = jax.random.normal(k2, (D,))


def test_layernorm_equals_nnx_layernorm():
  ours = norms.LayerNorm(D, epsilon=1e-5, rngs=nnx.Rngs(KEY(0)))
  theirs = nnx.LayerNorm(D, epsilon=1e-5, rngs=nnx.Rngs(KEY(0)))
  _random_affine(ours)
  _random_affine(theirs)
  np.testing.assert_allclose(ours(_x()), theirs(_x()), atol=1e-5)


def test_rmsnorm_equals_nnx_rmsnorm_and_formula():
  ours = norms.RMSNorm(D, epsilon=1e-5, rngs=nnx.Rngs(KEY(0)))
  theirs = nnx.RMSNorm(D, epsilon=1e-5, rngs=nnx.Rngs(KEY(0)))
  _random_affine(ours)
  _random_affine(theirs)
  x = _x()
  np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)
  xn = np.asarray(x, np.float64)
  want = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-5) * np.asarray(ours.scale[...])
  np.testing.assert_allclose(ours(x), want, atol=1e-5)


def test_invariances():
  x = _x()
  ln = norms.LayerNorm(D, rngs=nnx.Rngs(KEY(0)))
  rms = norms.RMSNorm(D, rngs=nnx.Rngs(KEY(0)))
  # LayerNorm: invariant to re-centering and re-scaling; RMSNorm: to re-scaling only.
  np.testing.assert_allclose(ln(2.5 * x + 7.0), ln(x), atol=1e-4)
  np.testing.assert_allclose(rms(2.5 * x), rms(x), atol=1e-5)
  assert not np.allclose(rms(x + 7.0), rms(x), atol=1e-2)


def test_bf16_in_bf16_out_close_to_fp32():
  ln = norms.LayerNorm(D, rngs=nnx.Rngs(KEY(0)))
  y = ln(_x(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), ln(_x(jnp.bfloat16).astype(jnp.float32)),
                             atol=2e-2)


def test_make_norm():
  assert isinstance(norms.make_norm("rmsnorm", D, rngs=nnx.Rngs(KEY(0))), norms.RMSNorm)
  assert norms.make_norm("layernorm", D, use_bias=False, rngs=nnx.Rngs(KEY(0))).bias is None
  with pytest.raises(ValueError, match="valid choices"):
    norms.make_norm("batchnorm", D, rngs=nnx.Rngs(KEY(0)))
