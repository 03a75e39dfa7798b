"""GAN losses (1406.2661) against the log-sigmoid formulas, their closed forms at D = 1/2, the
optimal discriminator of Prop. 1, the saturation that motivates the non-saturating loss, and
parameter counts of the two MLPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import gan


def test_losses_equal_the_log_sigmoid_formulas_of_eq_1():
  """Independent reference: eq. (1) written with D = σ(ℓ) and logs (fine away from saturation).
  Real and fake logits differ row by row, so a swapped argument would show."""
  k1, k2 = jax.random.split(jax.random.key(0))
  real, fake = 2.0 * jax.random.normal(k1, (64,)) + 1.0, 2.0 * jax.random.normal(k2, (64,)) - 1.0
  d_real, d_fake = jax.nn.sigmoid(real), jax.nn.sigmoid(fake)
  np.testing.assert_allclose(gan.discriminator_loss(real, fake),
                             -jnp.mean(jnp.log(d_real)) - jnp.mean(jnp.log(1 - d_fake)), rtol=1e-5)
  np.testing.assert_allclose(gan.generator_loss(fake), -jnp.mean(jnp.log(d_fake)), rtol=1e-5)
  np.testing.assert_allclose(gan.generator_loss(fake, "minimax"), jnp.mean(jnp.log(1 - d_fake)),
                             rtol=1e-5)
  assert abs(float(gan.discriminator_loss(real, fake) - gan.discriminator_loss(fake, real))) > 0.5


def test_closed_forms_at_d_one_half():
  z = jnp.zeros(8)
  assert float(gan.discriminator_loss(z, z)) == pytest.approx(2 * np.log(2), rel=1e-6)
  assert float(gan.generator_loss(z)) == pytest.approx(np.log(2), rel=1e-6)
  assert float(gan.generator_loss(z, "minimax")) == pytest.approx(-np.log(2), rel=1e-6)


def test_optimal_discriminator_is_prop_1():
  """On a 4-point space the expected L_D over per-point logits is minimised at
  σ(ℓ*) = p_data / (p_data + p_g) (Prop. 1): the gradient vanishes there and nowhere near."""
  p_data = jnp.array([0.1, 0.4, 0.3, 0.2])
  p_g = jnp.array([0.25, 0.05, 0.3, 0.4])

  def expected_loss(logits):        # Σ_x p_data(x) softplus(−ℓ_x) + p_g(x) softplus(ℓ_x)
    return jnp.sum(p_data * jax.nn.softplus(-logits) + p_g * jax.nn.softplus(logits))

  star = jnp.log(p_data / p_g)       # σ(ℓ*) = p_data / (p_data + p_g)
  np.testing.assert_allclose(jax.nn.sigmoid(star), p_data / (p_data + p_g), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(expected_loss)(star), 0.0, atol=1e-7)
  assert float(jnp.max(jnp.abs(jax.grad(expected_loss)(star + 0.1)))) > 1e-3
  # At the optimum, −L_D = −log 4 + 2 JSD(p_data ‖ p_g) (Thm. 1's proof).
  m = (p_data + p_g) / 2
  jsd = 0.5 * jnp.sum(p_data * jnp.log(p_data / m)) + 0.5 * jnp.sum(p_g * jnp.log(p_g / m))
  np.testing.assert_allclose(-expected_loss(star), -np.log(4) + 2 * jsd, rtol=1e-5)


def test_minimax_saturates_where_non_saturating_does_not():
  """When D rejects fakes (ℓ → −∞) the minimax generator gradient −σ(ℓ) vanishes; the
  non-saturating −(1 − σ(ℓ)) stays near −1 (Sec. 3 of 1406.2661)."""
  logit = jnp.array([-10.0])
  g_mm = jax.grad(lambda l: gan.generator_loss(l, "minimax"))(logit)
  g_ns = jax.grad(lambda l: gan.generator_loss(l))(logit)
  assert abs(float(g_mm[0])) < 1e-4 and float(g_ns[0]) == pytest.approx(-1.0, abs=1e-4)
  with pytest.raises(ValueError, match="unknown generator loss"):
    gan.generator_loss(logit, "wasserstein")


def test_parameter_counts_and_shapes():
  g = gan.MLPGenerator(8, 2, hidden=32, depth=3, rngs=nnx.Rngs(0))
  d = gan.MLPDiscriminator(2, hidden=32, depth=3, rngs=nnx.Rngs(1))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(g) == (8 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 2 + 2)
  assert count(d) == (2 * 32 + 32) + 2 * (32 * 32 + 32) + (32 + 1)
  x = jax.eval_shape(lambda z: g(z), jax.ShapeDtypeStruct((5, 8), jnp.float32))
  assert x.shape == (5, 2)
  assert jax.eval_shape(lambda x: d(x), x).shape == (5,)
