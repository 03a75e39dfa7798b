"""Tests for genfm.diffusion.sde: marginals vs. the moment ODEs, VP ↔ DDPM betas, DSM loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from genfm.diffusion import analytic
from genfm.diffusion import schedules
from genfm.diffusion import sde as sde_lib


def test_vp_discrete_betas_are_ddpm_linear_betas():
  np.testing.assert_allclose(sde_lib.VPSDE(0.1, 20.0, N=1000).discrete_betas,
                             schedules.linear_betas(1000), rtol=1e-12)
  # ᾱ_i ≈ m(t_i)² at t_i = i/N: the SDE is the continuous limit of the DDPM chain. They differ
  # by Σ log(1 − β) vs −Σ β, i.e. ≈ Σ β²/2, which stays under 1% up to t = 0.5.
  vp = sde_lib.VPSDE()
  abar = np.asarray(schedules.make_schedule("linear").alphas_cumprod)
  m2 = np.asarray(vp.mean_coeff(jnp.arange(1, 1001) / 1000.0)) ** 2
  np.testing.assert_allclose(m2[:500:50], abar[:500:50], rtol=0.01)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginals_solve_the_moment_odes(name):
  """For dx = a(t) x dt + g(t) dw: m' = a m, v' = 2 a v + g² (Särkkä & Solin eq. 5.51);
  integrate them with scipy from x(0) = x0 and compare to marginal_prob."""
  sde = sde_lib.make_sde(name)
  x0 = 1.3

  def rhs(t, y):
    drift, g = sde.sde(jnp.ones((1, 1)), jnp.array([t], jnp.float32))
    a = float(drift[0, 0])
    return [a * y[0], 2 * a * y[1] + float(g.reshape(-1)[0]) ** 2]

  ts = [0.05, 0.3, 0.7, 1.0]
  sol = integrate.solve_ivp(rhs, (0.0, 1.0), [x0, 0.0], t_eval=ts, rtol=1e-7, atol=1e-9)
  mean, std = sde_lib.marginal_prob(sde, jnp.full((4, 1), x0), jnp.asarray(ts, jnp.float32))
  np.testing.assert_allclose(mean[:, 0], sol.y[0], rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(std[:, 0], np.sqrt(sol.y[1]), rtol=2e-4)


def test_subvp_variance_below_vp():
  t = jnp.linspace(0.01, 1.0, 50)
  assert np.all(sde_lib.SubVPSDE().marginal_std(t) < sde_lib.VPSDE().marginal_std(t))


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_prior_logp_is_normal_logpdf(name):
  sde = sde_lib.make_sde(name)
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2)) * sde.prior_std()
  ref = stats.norm.logpdf(np.asarray(z), scale=sde.prior_std()).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(sde_lib.prior_logp(sde, z), ref, rtol=1e-5)
  assert sde_lib.prior_sample(sde, jax.random.PRNGKey(1), (5, 3)).shape == (5, 3)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_dsm_loss_minimum_at_true_score(name):
  """At fixed t and Gaussian data the DSM loss E‖s·∇log p_t(x_t) + z‖² of the true score is
  Var(z | x_t) = 1 − s²/(m² σ_d² + s²); any other score does worse."""
  sde = sde_lib.make_sde(name)
  mu, sd, n, t = 2.0, 0.5, 50_000, 0.3
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  x0 = mu + sd * jax.random.normal(k1, (n, 1))
  z = jax.random.normal(k2, (n, 1))
  t_B = jnp.full((n,), t)
  true_score = analytic.score(sde, mu, sd)
  loss = sde_lib.dsm_loss_at(true_score, sde, x0, t_B, z)
  m, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
  np.testing.assert_allclose(loss, 1 - s ** 2 / (m ** 2 * sd ** 2 + s ** 2), rtol=0.03)
  worse = sde_lib.dsm_loss_at(lambda x, tt: 1.1 * true_score(x, tt), sde, x0, t_B, z)
  assert worse > loss
  # Random-t version runs and is finite; likelihood weighting scales by g²/s² per t.
  lw = sde_lib.dsm_loss(true_score, sde, x0[:512], jax.random.PRNGKey(3),
                        likelihood_weighting=True)
  assert np.isfinite(lw)


def test_bad_input():
  with pytest.raises(ValueError, match="Unknown SDE 'vpsde'.*vp, subvp, ve"):
    sde_lib.make_sde("vpsde")
  with pytest.raises(ValueError, match="score_fn returned shape"):
    sde_lib.dsm_loss(lambda x, t: x[:, :1], sde_lib.VPSDE(), jnp.ones((2, 3)),
                     jax.random.PRNGKey(0))
