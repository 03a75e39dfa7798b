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


# --- WGAN / WGAN-GP (1701.07875, 1704.00028) ------------------------------------------------


def test_wgan_loss_signs():
  """The critic loss E[D(x̃)] − E[D(x)] falls when D scores real above fake; G's −E[D(x̃)] falls
  as D scores its samples higher. Swapping the arguments flips the sign."""
  high, low = jnp.array([2.0, 3.0, 1.0]), jnp.array([-1.0, 0.0, -2.0])
  assert float(gan.wgan_critic_loss(high, low)) == pytest.approx(-3.0)
  assert float(gan.wgan_critic_loss(low, high)) == pytest.approx(3.0)
  assert float(gan.wgan_generator_loss(high)) == pytest.approx(-2.0)
  g = jax.grad(gan.wgan_critic_loss, argnums=(0, 1))(high, low)
  np.testing.assert_allclose(g[0], -1 / 3)        # raising a real score lowers the loss
  np.testing.assert_allclose(g[1], 1 / 3)


@pytest.mark.parametrize("shape", [(6, 2), (4, 8, 8, 1)])
def test_gradient_penalty_of_a_linear_critic_is_closed_form(shape):
  """D(x) = wᵀx + b has ∇D = w everywhere, so the penalty is λ(‖w‖ − 1)² for any ε."""
  kw, kr, kf, ke = jax.random.split(jax.random.key(0), 4)
  w = jax.random.normal(kw, shape[1:])
  critic = lambda x: jnp.sum((x * w).reshape(x.shape[0], -1), axis=1) + 0.7
  real, fake = jax.random.normal(kr, shape), jax.random.normal(kf, shape)
  expect = 10.0 * (float(jnp.linalg.norm(w)) - 1.0) ** 2
  for eps in (jax.random.uniform(ke, shape[:1]), jnp.zeros(shape[0]), jnp.ones(shape[0])):
    assert float(gan.gradient_penalty(critic, real, fake, eps)) == pytest.approx(expect, rel=1e-5)
  assert float(gan.gradient_penalty(critic, real, fake, eps, lam=0.5)) == pytest.approx(
      expect / 20, rel=1e-5)


def test_gradient_penalty_interpolates_per_example():
  """D(x) = ½‖x‖² has ∇D(x̂) = x̂, so each row's norm is ‖ε_b x_b + (1 − ε_b) x̃_b‖: a manual
  per-row reference; a batch-shared ε or swapped real / fake would differ."""
  kr, kf = jax.random.split(jax.random.key(1))
  real, fake = jax.random.normal(kr, (5, 3)), 3.0 * jax.random.normal(kf, (5, 3))
  eps = jnp.array([0.0, 0.25, 0.5, 0.75, 1.0])
  critic = lambda x: 0.5 * jnp.sum(x ** 2, axis=1)
  x_hat = np.asarray(eps)[:, None] * np.asarray(real) + (1 - np.asarray(eps))[:, None] * fake
  np.testing.assert_allclose(gan.interpolate(real, fake, eps), x_hat, rtol=1e-6)
  norms = np.linalg.norm(x_hat, axis=1)
  assert len(set(np.round(norms, 4))) == 5                      # the rows differ
  expect = 10.0 * np.mean((norms - 1.0) ** 2)
  assert float(gan.gradient_penalty(critic, real, fake, eps)) == pytest.approx(expect, rel=1e-5)
  assert abs(float(gan.gradient_penalty(critic, fake, real, eps)) - expect) > 1.0
  with pytest.raises(ValueError, match="ε of shape"):
    gan.interpolate(real, fake, eps[:3])


def test_wgan_gp_critic_loss_is_the_sum_of_its_parts_and_trains_the_critic():
  """eq. (3): the loss is the Wasserstein term plus the penalty, and its gradient reaches the
  critic's parameters through the double backward pass (finite, non-zero)."""
  critic = gan.MLPDiscriminator(2, hidden=16, depth=2, rngs=nnx.Rngs(0))
  kr, kf, ke = jax.random.split(jax.random.key(2), 3)
  real, fake = jax.random.normal(kr, (32, 2)) + 2.0, jax.random.normal(kf, (32, 2))
  eps = jax.random.uniform(ke, (32,))
  loss, aux = nnx.jit(gan.wgan_gp_critic_loss)(critic, real, fake, eps)
  np.testing.assert_allclose(loss, -aux["wasserstein"] + aux["gradient_penalty"], rtol=1e-6)
  np.testing.assert_allclose(aux["gradient_penalty"],
                             nnx.jit(gan.gradient_penalty)(critic, real, fake, eps), rtol=1e-5)
  grads = nnx.jit(nnx.grad(lambda c: gan.wgan_gp_critic_loss(c, real, fake, eps)[0]))(critic)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves) and sum(float(jnp.abs(g).sum())
                                                            for g in leaves) > 0
