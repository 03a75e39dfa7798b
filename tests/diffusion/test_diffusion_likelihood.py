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
  logp_std = logp - _exact_prior(sde)(z) + sde_lib.prior_logp(sde, z)
  assert 1e-4 < abs(float(logp_std[1] - logp[1])) < 0.05
  # Rademacher probes are exact in one dimension (v² = 1): same ODE, same numbers.
  rad, _, _ = likelihood.log_likelihood(sde, analytic.score(sde, MU, SD), x, "rademacher",
                                        jax.random.PRNGKey(0), prior_logp=_exact_prior(sde))
  np.testing.assert_allclose(rad, logp, atol=1e-5)


def test_log_likelihood_multivariate_ve():
  """2-D isotropic Gaussian: log p_0 = Σ log N(x_d; μ, σ²) through the VE SDE's ODE."""
  sde = sde_lib.VESDE()
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


def test_correlated_gaussian_exact_and_hutchinson_unbiased():
  """Data N(μ, Σ) with correlated Σ: p_t = N(m μ, m² Σ + s² I) gives the score in closed form
  (written here, independent of analytic.py). The exact trace recovers log N(x; μ, Σ); the
  Hutchinson estimates (non-diagonal Jacobian ⇒ nonzero variance) average to it."""
  sde = sde_lib.VPSDE()
  mu = jnp.array([1.0, -0.5])
  cov = np.array([[0.5, 0.3], [0.3, 0.4]])
  # m² Σ + s² I = Q diag(m² λ + s²) Qᵀ: plain matmuls keep the ODE cheap to compile.
  lam, q = (jnp.asarray(a, jnp.float32) for a in np.linalg.eigh(cov))

  def marg(t):
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    return m * mu, m ** 2 * lam + s ** 2          # mean, eigenvalues of the covariance

  def score(x, t_B):
    mean, ev = marg(t_B[0])
    return -(((x - mean) @ q) / ev) @ q.T

  def logn(x, t):
    mean, ev = marg(jnp.float32(t))
    proj = (x - mean) @ q
    return -0.5 * jnp.sum(proj ** 2 / ev, -1) - 0.5 * jnp.sum(jnp.log(2 * np.pi * ev))

  x = jnp.array([[1.2, -0.1], [0.0, -1.0]])
  exact, _, _ = likelihood.log_likelihood(sde, score, x, "exact", eps=0.0,
                                          prior_logp=lambda z: logn(z, 1.0))
  ref = [np.log(2 * np.pi) * -1 - 0.5 * np.log(np.linalg.det(cov))
         - 0.5 * d @ np.linalg.solve(cov, d) for d in np.asarray(x) - np.asarray(mu)]
  np.testing.assert_allclose(logn(x, 0.0), ref, rtol=1e-5)
  np.testing.assert_allclose(exact, ref, atol=1e-3)
  # One solve for both probe kinds: rows [0, n) get Rademacher probes, [n, 2n) Gaussian ones.
  n = 256
  xr = jnp.broadcast_to(x[:1], (2 * n, 2))
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  v = jnp.concatenate([likelihood.probe(k1, (n, 2), "rademacher"),
                       likelihood.probe(k2, (n, 2), "gaussian")])
  lp, _, _ = likelihood.log_likelihood(sde, score, xr, v, eps=0.0,
                                       prior_logp=lambda z: logn(z, 1.0))
  for est, lp_est in (("rademacher", lp[:n]), ("gaussian", lp[n:])):
    se = float(jnp.std(lp_est)) / np.sqrt(n)
    assert se > 1e-3, est
    np.testing.assert_allclose(jnp.mean(lp_est), exact[0], atol=4 * se, err_msg=est)


def test_bits_per_dim_and_errors():
  np.testing.assert_allclose(likelihood.bits_per_dim(jnp.array([-np.log(2) * 6]), (1, 3)), 2.0)
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="Unknown trace estimator 'hutch'.*exact, rademacher"):
    likelihood.log_likelihood(sde, lambda x, t: -x, jnp.ones((1, 1)), "hutch")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    likelihood.log_likelihood(sde, lambda x, t: -x, jnp.ones((1, 1)), "gaussian")
