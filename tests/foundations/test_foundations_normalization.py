"""BatchNorm / LayerNorm from scratch equal nnx.BatchNorm / nnx.LayerNorm (train, running, eval)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import normalization as norm


def _set_affine(ours, theirs, key):
  k1, k2 = jax.random.split(key)
  scale, bias = 1 + 0.3 * jax.random.normal(k1, (6,)), 0.5 * jax.random.normal(k2, (6,))
  for m in (ours, theirs):
    m.scale[...] = scale
    m.bias[...] = bias


@nnx.jit
def _bn_train_both(ours, theirs, x):
  return ours(x), theirs(x, use_running_average=False)


@nnx.jit
def _bn_eval_and_grads_both(ours, theirs, x):
  def grads(m):  # nnx.grad: the BatchStat update inside the traced call is allowed
    return nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x, use_running_average=False))),
                    argnums=1)(m, x)

  return (ours(x, use_running_average=True), theirs(x, use_running_average=True),
          grads(ours), grads(theirs))


def test_batchnorm_matches_nnx():
  ours = norm.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
  theirs = nnx.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
  _set_affine(ours, theirs, jax.random.key(1))
  for step in range(3):  # train mode: batch statistics; running averages updated each call
    x_BHWC = 3.0 + 2.0 * jax.random.normal(jax.random.key(10 + step), (4, 5, 5, 6))
    y_ours, y_theirs = _bn_train_both(ours, theirs, x_BHWC)
    np.testing.assert_allclose(y_ours, y_theirs, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], atol=1e-6)
    np.testing.assert_allclose(ours.var[...], theirs.var[...], atol=1e-5)
  x_eval = jax.random.normal(jax.random.key(99), (3, 5, 5, 6))
  eval_ours, eval_theirs, g_ours, g_theirs = _bn_eval_and_grads_both(ours, theirs, x_eval)
  np.testing.assert_allclose(eval_ours, eval_theirs, atol=1e-5)
  # Gradients agree too (train mode, through the batch statistics).
  np.testing.assert_allclose(g_ours, g_theirs, atol=1e-5)


def test_batchnorm_properties():
  bn = norm.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
  x_BC = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (256, 6))
  y_BC = bn(x_BC)
  chex.assert_shape(y_BC, (256, 6))
  np.testing.assert_allclose(y_BC.mean(0), 0.0, atol=1e-5)  # train output: zero mean, unit var
  np.testing.assert_allclose(y_BC.var(0), 1.0, atol=1e-3)
  train = nnx.jit(lambda m, x: m(x))
  for i in range(100):  # running averages converge to the population statistics (3, 4)
    train(bn, 3.0 + 2.0 * jax.random.normal(jax.random.key(i + 1), (256, 6)))
  np.testing.assert_allclose(bn.mean[...], 3.0, atol=0.1)
  np.testing.assert_allclose(bn.var[...], 4.0, atol=0.3)
  # Eval mode uses the stored statistics: a single example is normalised without a batch.
  one = jnp.full((1, 6), 5.0)
  np.testing.assert_allclose(bn(one, use_running_average=True)[0], (5.0 - bn.mean[...]) /
                             jnp.sqrt(bn.var[...] + 1e-5), atol=1e-5)


def test_layernorm_matches_nnx_and_is_per_example():
  ours, theirs = norm.LayerNorm(6, rngs=nnx.Rngs(0)), nnx.LayerNorm(6, rngs=nnx.Rngs(0))
  _set_affine(ours, theirs, jax.random.key(2))
  x_BTD = 5.0 + 3.0 * jax.random.normal(jax.random.key(3), (2, 7, 6))

  @nnx.jit
  def run(ours, theirs):
    grad = lambda m: nnx.grad(lambda m, x: jnp.sum(jnp.cos(m(x))), argnums=1)(m, x_BTD)
    return ours(x_BTD), theirs(x_BTD), ours(x_BTD[:1, :1]), grad(ours), grad(theirs)

  y_ours, y_theirs, y_one, g_ours, g_theirs = run(ours, theirs)
  np.testing.assert_allclose(y_ours, y_theirs, atol=1e-5)
  # Per example: the output for one row does not depend on the rest of the batch.
  np.testing.assert_allclose(y_one, y_ours[:1, :1], atol=1e-6)
  np.testing.assert_allclose(g_ours, g_theirs, atol=1e-5)


def test_bf16_inputs_keep_dtype():
  x = jax.random.normal(jax.random.key(0), (8, 6)).astype(jnp.bfloat16)
  assert norm.BatchNorm(6, rngs=nnx.Rngs(0))(x).dtype == jnp.bfloat16
  assert norm.LayerNorm(6, rngs=nnx.Rngs(0))(x).dtype == jnp.bfloat16


def test_shape_errors():
  with pytest.raises(ValueError, match=r"expects \[\.\.\., 6\]"):
    norm.BatchNorm(6, rngs=nnx.Rngs(0))(jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r"expects \[\.\.\., 6\]"):
    norm.LayerNorm(6, rngs=nnx.Rngs(0))(jnp.ones((2, 5)))
