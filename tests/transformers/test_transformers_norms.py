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


# The closed-form backward (custom_vjp) against autodiff of the plain formula, computed by flax's
# own nnx.LayerNorm / nnx.RMSNorm: rows with different means and spreads, a non-trivial affine
# part, and a cotangent that differs per element (a uniform one would hide the mean terms).
@pytest.mark.parametrize("kind,use_bias", [("layernorm", True), ("layernorm", False),
                                           ("rmsnorm", False)])
def test_closed_form_backward_equals_autodiff_of_flax(kind, use_bias):
  ours = norms.make_norm(kind, D, epsilon=1e-5, use_bias=use_bias, rngs=nnx.Rngs(KEY(0)))
  if kind == "layernorm":
    theirs = nnx.LayerNorm(D, epsilon=1e-5, use_bias=use_bias, rngs=nnx.Rngs(KEY(0)))
  else:
    theirs = nnx.RMSNorm(D, epsilon=1e-5, rngs=nnx.Rngs(KEY(0)))
  _random_affine(ours)
  _random_affine(theirs)
  row_scale = jnp.arange(1.0, 11.0).reshape(2, 5, 1)          # every row its own mean and σ
  x = _x() * row_scale + row_scale ** 2
  dy = jax.random.normal(KEY(3), x.shape)

  def grads(mod):
    graphdef, params = nnx.split(mod, nnx.Param)
    f = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) * dy)
    return jax.grad(f, argnums=(0, 1))(params, x)

  (p_ours, dx_ours), (p_theirs, dx_theirs) = grads(ours), grads(theirs)
  np.testing.assert_allclose(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(p_ours["scale"][...], p_theirs["scale"][...], rtol=1e-4, atol=1e-5)
  if use_bias:
    np.testing.assert_allclose(p_ours["bias"][...], p_theirs["bias"][...], rtol=1e-5)
    np.testing.assert_allclose(p_ours["bias"][...], dy.sum((0, 1)), rtol=1e-5)  # ∂L/∂b = Σ dy
  else:
    assert "bias" not in p_ours
  # Each row's ∂L/∂x sums to 0 for LayerNorm (y is invariant to adding a constant to x); it is
  # orthogonal to x for both (invariant to re-scaling x), up to the ε in σ.
  if kind == "layernorm":
    np.testing.assert_allclose(dx_ours.sum(-1), 0.0, atol=1e-4)
  np.testing.assert_allclose((dx_ours * x).sum(-1), 0.0, atol=1e-2)


def test_closed_form_backward_bf16_gives_bf16_gradients():
  ln = norms.LayerNorm(D, rngs=nnx.Rngs(KEY(0)))
  x = _x(jnp.bfloat16)
  dx = jax.grad(lambda x: jnp.sum(ln(x).astype(jnp.float32) ** 2))(x)
  dx32 = jax.grad(lambda x: jnp.sum(ln(x) ** 2))(x.astype(jnp.float32))
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_allclose(dx.astype(jnp.float32), dx32, atol=0.1, rtol=0.05)
