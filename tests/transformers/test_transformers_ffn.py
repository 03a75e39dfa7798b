"""Tests for genfm.transformers.ffn: GELU MLP and SwiGLU against numpy formulas."""

import functools
import math

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import ffn

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


D, F = 8, 12


def _x():
  return jax.random.normal(KEY(0), (2, 3, D))


def _np(p):
  return np.asarray(p[...], np.float64)


def test_gelu_mlp_equals_numpy():
  m = ffn.GeluMLP(D, F, rngs=nnx.Rngs(KEY(0)))
  m.up.bias[...] = jax.random.normal(KEY(1), (F,))
  x = np.asarray(_x(), np.float64)
  h = x @ _np(m.up.kernel) + _np(m.up.bias)
  g = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  np.testing.assert_allclose(m(_x()), g @ _np(m.down.kernel) + _np(m.down.bias), atol=1e-5)
  exact = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))  # exact GELU
  assert np.abs(g - exact).max() < 1e-3


def test_swiglu_equals_numpy():
  m = ffn.SwiGLU(D, F, rngs=nnx.Rngs(KEY(0)))
  x = np.asarray(_x(), np.float64)
  a = x @ _np(m.gate.kernel)
  want = ((a / (1 + np.exp(-a))) * (x @ _np(m.up.kernel))) @ _np(m.down.kernel)
  np.testing.assert_allclose(m(_x()), want, atol=1e-5)


def test_shapes_and_param_counts():
  for kind, n in (("gelu", 2 * D * F + F + D), ("swiglu", 3 * D * F)):
    params = jax.eval_shape(
        lambda: nnx.state(ffn.make_ffn(kind, D, F, rngs=nnx.Rngs(KEY(0))), nnx.Param))
    assert sum(p.size for p in jax.tree.leaves(params)) == n
    out = jax.eval_shape(lambda x: ffn.make_ffn(kind, D, F, rngs=nnx.Rngs(KEY(0)))(x),
                         jax.ShapeDtypeStruct((2, 3, D), jnp.float32))
    chex.assert_shape(out, (2, 3, D))
  with pytest.raises(ValueError, match="valid choices"):
    ffn.make_ffn("relu2", D, F, rngs=nnx.Rngs(KEY(0)))
