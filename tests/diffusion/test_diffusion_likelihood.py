"""Tests for genfm.diffusion.likelihood: ODE log-likelihood of Gaussian data in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import analytic
from genfm.diffusion import likelihood
from genfm.diffusion import sde as sde_lib

MU, SD = 2.0, 0.5


def _exact_prior(sde):
  return lambda z: analytic.marginal_logp(sde, MU, SD, z, sde.T)


def test_vp_log_likelihood_pins():
  """log N(2.0; 2, 0.5²) = −0.22579 and log N(2.7; 2, 0.5²) = −1.20579 through the VP ODE."""
  sde = sde_lib.VPSDE()
  x = jnp.array([[2.0], [2.7]])
  logp, z, stats = likelihood.log_likelihood(sde, analytic.score(sde, MU, SD), x, "exact",
                                             prior_logp=_exact_prior(sde))
  np.testing.assert_allclose(logp, [-0.22579, -1.20579], atol=1e-3)
  assert z.shape == x.shape and not stats["failed"]
  # With the N(0, I) prior, the mismatch p_T ≠ N(0, 1) (mean 2·e^{−5.025} = 0.013) shows.
  logp_std, _, _ = likelihood.log_likelihood(sde, analytic.score(sde, MU, SD), x, "exact")
  assert 1e-4 < abs(float(logp_std[1] - logp[1])) < 0.05


@pytest.mark.parametrize("name", ["subvp", "ve"])
def test_log_likelihood_multivariate(name):
  """2-D isotropic Gaussian: log p_0 = Σ log N(x_d; μ, σ²), for sub-VP and VE SDEs."""
  sde = sde_lib.make_sde(name)
  x = MU + SD * jax.random.normal(jax.random.PRNGKey(0), (3, 2))
  logp, _, _ = likelihood.log_likelihood(sde, analytic.score(sde, MU, SD), x, "exact",
                                         prior_logp=_exact_prior(sde))
  ref = np.sum(-0.5 * np.log(2 * np.pi * SD ** 2) - 0.5 * (np.asarray(x) - MU) ** 2 / SD ** 2,
               axis=-1)
  np.testing.assert_allclose(logp, ref, atol=1e-3)


def test_exact_divergence_is_jacobian_trace():
  W = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
  fn = lambda x: jnp.tanh(x @ W.T)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
  ref = [jnp.trace(jax.jacfwd(lambda v: jnp.tanh(W @ v))(xi)) for xi in x]
  np.testing.assert_allclose(likelihood.exact_divergence(fn, x), ref, rtol=1e-5)


def test_hutchinson_rademacher_exact_in_1d():
  sde = sde_lib.VPSDE()
  score = analytic.score(sde, MU, SD)
  x1 = jnp.array([[2.0], [2.7]])
  exact1, _, _ = likelihood.log_likelihood(sde, score, x1, "exact")
  rad1, _, _ = likelihood.log_likelihood(sde, score, x1, "rademacher", jax.random.PRNGKey(0))
  np.testing.assert_allclose(rad1, exact1, atol=1e-5)     # v² = 1 in one dimension


def test_correlated_gaussian_exact_and_hutchinson_unbiased():
  """Data N(μ, Σ) with correlated Σ: p_t = N(m μ, m² Σ + s² I) gives the score in closed form
  (written here, independent of analytic.py). The exact trace recovers log N(x; μ, Σ); the
  Hutchinson estimates (non-diagonal Jacobian ⇒ nonzero variance) average to it."""
  sde = sde_lib.VPSDE()
  mu = jnp.array([1.0, -0.5])
  cov = jnp.array([[0.5, 0.3], [0.3, 0.4]])

  def marg(t):
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    return m * mu, m ** 2 * cov + s ** 2 * jnp.eye(2)

  def score(x, t_B):
    mean, c = marg(t_B[0])
    return -jnp.linalg.solve(c, (x - mean).T).T

  def logn(x, t):
    mean, c = marg(jnp.float32(t))
    d = x - mean
    return (-0.5 * jnp.einsum("bi,ij,bj->b", d, jnp.linalg.inv(c), d)
            - 0.5 * jnp.linalg.slogdet(2 * np.pi * c)[1])

  x = jnp.array([[1.2, -0.1], [0.0, -1.0]])
  exact, _, _ = likelihood.log_likelihood(sde, score, x, "exact", eps=0.0,
                                          prior_logp=lambda z: logn(z, 1.0))
  np.testing.assert_allclose(exact, logn(x, 0.0), atol=1e-3)
  n = 256
  xr = jnp.broadcast_to(x[:1], (n, 2))
  for est in ("rademacher", "gaussian"):
    lp, _, _ = likelihood.log_likelihood(sde, score, xr, est, jax.random.PRNGKey(3), eps=0.0,
                                         prior_logp=lambda z: logn(z, 1.0))
    se = float(jnp.std(lp)) / np.sqrt(n)
    assert se > 1e-3, est
    np.testing.assert_allclose(jnp.mean(lp), exact[0], atol=4 * se, err_msg=est)


def test_bits_per_dim_and_errors():
  np.testing.assert_allclose(likelihood.bits_per_dim(jnp.array([-np.log(2) * 6]), (1, 3)), 2.0)
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="Unknown trace estimator 'hutch'.*exact, rademacher"):
    likelihood.log_likelihood(sde, lambda x, t: -x, jnp.ones((1, 1)), "hutch")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    likelihood.log_likelihood(sde, lambda x, t: -x, jnp.ones((1, 1)), "gaussian")
