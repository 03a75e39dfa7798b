"""DCGAN networks (1511.06434) and the WGAN-GP critic: shapes through eval_shape, parameter
counts against hand formulas, the N(0, 0.02²) init of §4, tanh's range, and the critic's rows
not interacting (what the gradient penalty needs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import dcgan


def count(m):
  return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


@pytest.mark.parametrize("Z,C,W", [(16, 1, 8), (64, 3, 32)])
def test_generator_shapes_and_parameter_count(Z, C, W):
  g = jax.eval_shape(lambda: dcgan.DCGANGenerator(Z, C, W, rngs=nnx.Rngs(0)))
  # project (no bias) + BN(4W) + up 4W→2W (no bias) + BN(2W) + up 2W→W + BN(W) + out W→C + bias
  assert count(g) == (Z * 16 * 4 * W + 2 * 4 * W + 16 * 4 * W * 2 * W + 2 * 2 * W
                      + 16 * 2 * W * W + 2 * W + 16 * W * C + C)
  # Built and run inside one trace: no eager initialisation, and train-mode batch norm writes
  # its statistics to variables of that same trace.
  out = jax.eval_shape(lambda z: dcgan.DCGANGenerator(Z, C, W, rngs=nnx.Rngs(0))(z),
                       jax.ShapeDtypeStruct((5, Z), jnp.float32))
  assert out.shape == (5, 32, 32, C)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_discriminator_shapes_and_parameter_count(norm):
  C, W = 1, 8
  d = jax.eval_shape(lambda: dcgan.DCGANDiscriminator(C, W, norm, rngs=nnx.Rngs(0)))
  bias = 0 if norm == "batch" else 1      # batch norm's β replaces the conv bias
  norms = 0 if norm == "none" else 2 * (2 * W) + 2 * (4 * W)
  assert count(d) == ((16 * C * W + W) + 16 * W * 2 * W + bias * 2 * W
                      + 16 * 2 * W * 4 * W + bias * 4 * W + norms + (16 * 4 * W + 1))
  out = jax.eval_shape(lambda x: dcgan.DCGANDiscriminator(C, W, norm, rngs=nnx.Rngs(0))(x),
                       jax.ShapeDtypeStruct((3, 32, 32, C), jnp.float32))
  assert out.shape == (3,)
  with pytest.raises(ValueError, match="pad 28×28"):
    jax.eval_shape(lambda x: dcgan.DCGANDiscriminator(C, W, norm, rngs=nnx.Rngs(0))(x),
                   jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
  with pytest.raises(ValueError, match="unknown discriminator norm"):
    dcgan.DCGANDiscriminator(1, 8, "group", rngs=nnx.Rngs(0))


def test_conv_kernels_start_at_std_0p02():
  """§4 of 1511.06434: weights ~ N(0, 0.02²); biases 0, batch-norm scales 1. (Initialised
  under jit: eager initialisation dispatches op by op, seconds on a busy CPU.)"""
  build = lambda: nnx.to_pure_dict(nnx.state(dcgan.DCGANGenerator(64, 1, 32, rngs=nnx.Rngs(0))))
  g = jax.jit(build)()
  d = jax.jit(lambda: nnx.to_pure_dict(nnx.state(dcgan.DCGANDiscriminator(
      1, 32, rngs=nnx.Rngs(1)))))()
  for k in (g["project"]["kernel"], g["up1"]["kernel"], g["up2"]["kernel"],
            d["conv1"]["kernel"], d["conv2"]["kernel"], d["out"]["kernel"]):
    k = np.asarray(k)
    assert k.std() == pytest.approx(0.02, rel=0.1) and abs(k.mean()) < 0.005
  assert float(np.abs(g["out"]["bias"]).max()) == 0.0
  np.testing.assert_array_equal(g["norm1"]["scale"], 1.0)


def test_generator_output_lies_in_minus_one_one():
  """tanh output (§3): even an output layer 1000× its init stays in [−1, 1], and saturates."""

  @jax.jit
  def sample(z):
    gen = dcgan.DCGANGenerator(16, 1, 8, rngs=nnx.Rngs(0))
    gen.out.kernel[...] = 1000.0 * gen.out.kernel[...]
    return gen(z)

  x = sample(jax.random.normal(jax.random.key(0), (8, 16)))
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and float(x.max() - x.min()) > 1.0


@pytest.mark.parametrize("norm,coupled", [("batch", True), ("layer", False)])
def test_only_batch_norm_couples_the_rows(norm, coupled):
  """In train mode batch norm mixes the batch: changing image 1 changes D's score of image 0.
  The WGAN-GP critic (layer norm or none) keeps rows independent, as per-example gradient
  penalties need (1704.00028 §4)."""
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  y = x.at[1].set(-x[1])
  scores = jax.jit(lambda a: dcgan.DCGANDiscriminator(1, 8, norm, rngs=nnx.Rngs(0))(a))
  delta = float(jnp.abs(scores(x)[0] - scores(y)[0]))
  assert (delta > 1e-5) if coupled else (delta == 0.0)
