"""Tests for genfm.diffusion.schedules against closed forms (2006.11239, 2102.09672)."""

import numpy as np
import pytest

from genfm.diffusion import schedules


def test_linear_pinned_values_and_indexing_convention():
  s = schedules.make_schedule("linear", 1000)
  abar = np.asarray(s.alphas_cumprod)
  # Paper t = 1..T is array index t − 1: ᾱ_T = abar[999], ᾱ_500 = abar[499].
  np.testing.assert_allclose(abar[-1], 4.036e-5, rtol=1e-3)
  np.testing.assert_allclose(abar[499], 0.07859, rtol=1e-3)
  # The 0-based reading (index 500) would give 0.0778, which does not round to 0.0786.
  assert abs(abar[500] - 0.0786) > 5e-4
  np.testing.assert_allclose(s.betas[0], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(s.betas[-1], 0.02, rtol=1e-6)


def test_cosine_pinned_value_and_clipping():
  s = schedules.make_schedule("cosine", 1000)
  abar = np.asarray(s.alphas_cumprod)
  np.testing.assert_allclose(abar[499], 0.49384, rtol=1e-4)
  # Unclipped steps reproduce ᾱ(t) = f(t)/f(0) — eq. (17) of 2102.09672 — directly.
  direct = schedules.cosine_alphas_cumprod(np.arange(1, 1001), 1000)
  np.testing.assert_allclose(abar[:990], direct[:990], rtol=1e-5)
  assert np.max(np.asarray(s.betas)) == pytest.approx(0.999, rel=1e-6)
  assert np.all(np.diff(abar) < 0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_gaussian_conditioning(name):
  """β̃ and μ̃ coefficients (eqs. 6–7) against Bayes' rule on the joint Gaussian of
  (x_{t−1}, x_t) given x_0, derived independently here in float64."""
  s = schedules.make_schedule(name, 1000)
  betas = (schedules.linear_betas(1000) if name == "linear" else schedules.cosine_betas(1000))
  abar = np.cumprod(1 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  alphas = 1 - betas
  # x_{t−1} | x_0 ~ N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1});  x_t = √α_t x_{t−1} + √β_t ε.
  cov = np.sqrt(alphas) * (1 - abar_prev)            # Cov(x_{t−1}, x_t | x_0)
  var_t = alphas * (1 - abar_prev) + betas           # Var(x_t | x_0)
  np.testing.assert_allclose(var_t, 1 - abar, rtol=1e-9)
  coef2 = cov / var_t
  coef1 = np.sqrt(abar_prev) - coef2 * np.sqrt(alphas * abar_prev)
  post_var = (1 - abar_prev) - cov ** 2 / var_t
  np.testing.assert_allclose(s.posterior_mean_coef1, coef1, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(s.posterior_mean_coef2, coef2, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(s.posterior_variance, post_var, rtol=2e-4, atol=1e-9)
  assert s.posterior_variance[0] == 0.0
  assert np.all(np.isfinite(np.asarray(s.posterior_log_variance_clipped)))


def test_alphas_cumprod_is_running_product():
  s = schedules.make_schedule("linear", 50, beta_start=1e-3, beta_end=0.2)
  prod, expected = 1.0, []
  for b in np.linspace(1e-3, 0.2, 50):
    prod *= 1.0 - b
    expected.append(prod)
  np.testing.assert_allclose(s.alphas_cumprod, expected, rtol=1e-6)
  assert s.num_timesteps == 50


def test_extract_broadcasts():
  s = schedules.make_schedule("linear", 10)
  out = schedules.extract(s.betas, np.array([0, 9]), 4)
  assert out.shape == (2, 1, 1, 1)
  np.testing.assert_allclose(out[:, 0, 0, 0], [s.betas[0], s.betas[9]])


def test_bad_input():
  with pytest.raises(ValueError, match="Unknown schedule 'sigmoid'.*linear, cosine"):
    schedules.make_schedule("sigmoid")
  with pytest.raises(ValueError, match="positive integer"):
    schedules.make_schedule("linear", 0)
  with pytest.raises(ValueError, match=r"in \(0, 1\)"):
    schedules.schedule_from_betas(np.array([0.1, 1.0]))
