"""Tests for genfm.diffusion.gaussian: eq. (4) of 2006.11239 and the ε / x₀ / v algebra."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import gaussian
from genfm.diffusion import schedules

SCHED = schedules.make_schedule("linear", 1000)


def _batch(key, shape=(64, 3)):
  k1, k2, k3 = jax.random.split(key, 3)
  x0 = jax.random.normal(k1, shape)
  noise = jax.random.normal(k2, shape)
  t_B = jax.random.randint(k3, (shape[0],), 0, 1000)
  a = schedules.extract(SCHED.sqrt_alphas_cumprod, t_B, len(shape))
  s = schedules.extract(SCHED.sqrt_one_minus_alphas_cumprod, t_B, len(shape))
  return x0, noise, t_B, a, s


def test_q_sample_moments():
  """Monte-Carlo mean/variance of x_t match √ᾱ_t x_0 and 1 − ᾱ_t (eq. 4)."""
  x0 = jnp.full((20000, 1), 1.5)
  t_B = jnp.full((20000,), 299)
  xt = gaussian.q_sample(SCHED, x0, t_B, jax.random.normal(jax.random.PRNGKey(0), x0.shape))
  mean, var = gaussian.q_mean_variance(SCHED, x0[:1], t_B[:1])
  np.testing.assert_allclose(jnp.mean(xt), mean[0, 0], atol=0.02)
  np.testing.assert_allclose(jnp.var(xt), var[0, 0], rtol=0.03)


class ConversionsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_conversions_recover_true_targets(self):
    x0, noise, _, a, s = _batch(jax.random.PRNGKey(1))
    xt = a * x0 + s * noise
    truth = {p: gaussian.target(x0, noise, a, s, p) for p in gaussian.PREDICTION_TYPES}
    pairs = list(itertools.product(gaussian.PREDICTION_TYPES, repeat=2))

    @self.variant
    def convert_all(truth, xt, a, s):
      return [gaussian.convert(truth[src], xt, a, s, src, dst) for src, dst in pairs]

    for (src, dst), out in zip(pairs, convert_all(truth, xt, a, s)):
      # atol covers ε from x0 at t ≈ 1 where σ ≈ 0.01 amplifies float32 rounding.
      np.testing.assert_allclose(out, truth[dst], rtol=1e-4, atol=2e-3, err_msg=f"{src}->{dst}")

  @chex.variants(with_jit=True, without_jit=True)
  def test_round_trip_is_identity(self):
    _, _, _, a, s = _batch(jax.random.PRNGKey(2))
    keep = (a > 0.2) & (s > 0.2)            # well-conditioned t: exact inverse up to rounding
    pred = jax.random.normal(jax.random.PRNGKey(3), a.shape[:1] + (3,))
    xt = jax.random.normal(jax.random.PRNGKey(4), pred.shape)
    pairs = list(itertools.permutations(gaussian.PREDICTION_TYPES, 2))

    @self.variant
    def round_trips(pred, xt, a, s):
      return [gaussian.convert(gaussian.convert(pred, xt, a, s, src, dst), xt, a, s, dst, src)
              for src, dst in pairs]

    for back in round_trips(pred, xt, a, s):
      np.testing.assert_allclose(jnp.where(keep, back, 0), jnp.where(keep, pred, 0), atol=1e-5)


def test_v_is_velocity_on_the_circle():
  """v ≡ dx_φ/dφ for x_φ = cos φ x_0 + sin φ ε (Sec. 4 of 2202.00512), via jax.jvp."""
  x0, noise, _, a, s = _batch(jax.random.PRNGKey(5))
  phi = jnp.arctan2(s, a)
  x_of_phi = lambda p: jnp.cos(p) * x0 + jnp.sin(p) * noise
  _, v_jvp = jax.jvp(x_of_phi, (phi,), (jnp.ones_like(phi),))
  np.testing.assert_allclose(gaussian.target(x0, noise, a, s, "v"), v_jvp, atol=1e-6)


def test_loss_minimisers_agree():
  """Least-squares linear predictors fitted to each target, at one t, convert into one another
  exactly; the module's loss has zero gradient there; all equal the Gaussian posterior mean."""
  mu, std, t = 2.0, 0.5, 400
  n = 8192
  k1, k2 = jax.random.split(jax.random.PRNGKey(6))
  x0 = mu + std * jax.random.normal(k1, (n, 1))
  noise = jax.random.normal(k2, (n, 1))
  t_B = jnp.full((n,), t)
  a, s = SCHED.sqrt_alphas_cumprod[t], SCHED.sqrt_one_minus_alphas_cumprod[t]
  xt = a * x0 + s * noise
  feats = jnp.concatenate([xt, jnp.ones_like(xt)], axis=1)
  grid = jnp.linspace(-2.0, 3.0, 11)[:, None]
  as_x0 = {}
  for p in gaussian.PREDICTION_TYPES:
    w = jnp.linalg.lstsq(feats, gaussian.target(x0, noise, a, s, p))[0]  # [2, 1]
    model = lambda x, _t, w=w: w[0] * x + w[1]
    grad = jax.grad(lambda w: gaussian.diffusion_loss_at(
        lambda x, _t: w[0] * x + w[1], SCHED, x0, t_B, noise, p))(w)
    np.testing.assert_allclose(grad, 0.0, atol=2e-4, err_msg=p)
    as_x0[p] = gaussian.to_x0(model(grid, None), grid, a, s, p)
  np.testing.assert_allclose(as_x0["eps"], as_x0["x0"], atol=2e-4)
  np.testing.assert_allclose(as_x0["v"], as_x0["x0"], atol=2e-4)
  # Posterior mean E[x_0 | x_t] for Gaussian data (Monte-Carlo tolerance).
  post = mu + a * std ** 2 / (a ** 2 * std ** 2 + s ** 2) * (grid - a * mu)
  np.testing.assert_allclose(as_x0["x0"], post, atol=0.03)


def test_loss_shapes_and_values():
  model = lambda x, t: jnp.zeros_like(x)
  x0 = jnp.ones((4, 8, 8, 3))
  out = jax.eval_shape(lambda k: gaussian.diffusion_loss(model, SCHED, x0, k),
                       jax.random.PRNGKey(0))
  chex.assert_shape(out, ())
  # A zero ε-predictor has loss E[ε²]; a zero x0-predictor has loss mean(x0²) = 1.
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  t_B = jnp.array([0, 10, 500, 999])
  np.testing.assert_allclose(
      gaussian.diffusion_loss_at(model, SCHED, x0, t_B, noise, "eps"), jnp.mean(noise ** 2),
      rtol=1e-6)
  np.testing.assert_allclose(
      gaussian.diffusion_loss_at(model, SCHED, x0, t_B, noise, "x0"), 1.0, rtol=1e-6)


def test_posterior_of_true_x0_is_q():
  """q_posterior mean/var at paper t=2 by brute force: x_1 | x_2, x_0 from the 2-step chain."""
  x0 = jnp.array([[0.7]])
  xt = jnp.array([[-0.3]])
  mean, var = gaussian.q_posterior(SCHED, x0, xt, jnp.array([1]))
  b1, b2 = 1e-4, float(schedules.linear_betas(1000)[1])
  # x_1 = √(1−b1) x_0 + √b1 e1, x_2 = √(1−b2) x_1 + √b2 e2: condition x_1 on x_2.
  prior_m, prior_v = np.sqrt(1 - b1) * 0.7, b1
  gain = prior_v * np.sqrt(1 - b2) / ((1 - b2) * prior_v + b2)
  np.testing.assert_allclose(mean[0, 0], prior_m + gain * (-0.3 - np.sqrt(1 - b2) * prior_m),
                             rtol=1e-5)
  np.testing.assert_allclose(var[0, 0], prior_v - gain * np.sqrt(1 - b2) * prior_v, rtol=1e-4)


def test_bad_input():
  with pytest.raises(ValueError, match="Unknown prediction type 'score'.*eps, x0, v"):
    gaussian.convert(jnp.ones(2), jnp.ones(2), 1.0, 0.0, "score", "eps")
  with pytest.raises(ValueError, match="Unknown prediction type"):
    gaussian.diffusion_loss(lambda x, t: x, SCHED, jnp.ones((2, 2)), jax.random.PRNGKey(0),
                            "epsilon")
  with pytest.raises(ValueError, match=r"model_fn returned shape \(2,\)"):
    gaussian.diffusion_loss(lambda x, t: x[:, 0], SCHED, jnp.ones((2, 2)),
                            jax.random.PRNGKey(0))
