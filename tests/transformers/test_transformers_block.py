"""Tests for genfm.transformers.block: pre-norm and post-norm compositions."""

import functools

from flax import nnx
import jax
import numpy as np
import pytest

from genfm.transformers import attention, block, ffn, norms

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


D, N = 16, 4


def _parts(kind="layernorm"):
  rngs = nnx.Rngs(KEY(0))
  return (attention.MultiHeadAttention(D, N, rngs=rngs), ffn.SwiGLU(D, 24, rngs=rngs),
          norms.make_norm(kind, D, rngs=rngs), norms.make_norm(kind, D, rngs=rngs))


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_equals_manual_composition(placement):
  a, f, n1, n2 = _parts()
  # Distinct norm parameters so that swapping the two norms would be caught.
  n1.scale[...] = 1.0 + jax.random.normal(KEY(1), (D,))
  n2.bias[...] = jax.random.normal(KEY(2), (D,))
  blk = block.Block(a, f, n1, n2, placement=placement, rngs=nnx.Rngs(KEY(0)))
  x = jax.random.normal(KEY(3), (2, 5, D))
  got, aux, cache = blk(x)
  if placement == "pre":
    h = x + a(n1(x))
    want = h + f(n2(h))
  else:
    h = n1(x + a(x))
    want = n2(h + f(h))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert aux == {} and cache is None


def test_block_is_causal_and_rejects_bad_placement():
  blk = block.Block(*_parts("rmsnorm"), placement="pre", rngs=nnx.Rngs(KEY(0)))
  x = jax.random.normal(KEY(4), (1, 5, D))
  jac = nnx.jit(lambda b, x: jax.jacrev(lambda x: b(x)[0])(x))(blk, x)
  dep = np.abs(np.asarray(jac)[0, :, :, 0]).sum(axis=(1, 3))
  np.testing.assert_array_equal(np.triu(dep, 1), 0.0)
  assert (np.diag(dep) > 0).all()
  with pytest.raises(ValueError, match="valid choices"):
    block.Block(*_parts(), placement="sandwich", rngs=nnx.Rngs(KEY(0)))
