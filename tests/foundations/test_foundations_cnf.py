"""Continuous normalising flows: the instantaneous change of variables (1806.07366, Thm. 1) on a
linear field in closed form, Hutchinson's estimate (1810.01367) unbiased, the zero field gives
the base density, and sampling inverts the density pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.scipy.linalg import expm
from jax.scipy.stats import norm

from genfm.foundations import cnf, neural_ode

TOL = 1e-6


def mlp_field():
  model = neural_ode.ConcatMLPField(2, hidden=16, depth=2, rngs=nnx.Rngs(3))
  return neural_ode.module_field(model)


def test_linear_field_log_density_is_closed_form():
  """f(z) = Az: z(T) = e^{TA} x and Δlog p(T) = −T·tr(A), so log p(x) = log N(e^{TA}x) + T tr A."""
  A = jnp.array([[0.3, -1.2, 0.1], [0.8, -0.5, 0.4], [0.2, 0.3, 0.6]])
  field = lambda z_BD, t, A_: z_BD @ A_.T
  x_BD = jax.random.normal(jax.random.key(0), (5, 3)) * jnp.arange(1, 6)[:, None]
  T = 0.7
  logp_B, z_BD, stats = jax.jit(lambda x: cnf.log_prob(field, A, x, T=T, rtol=TOL, atol=TOL))(x_BD)
  z_ref_BD = x_BD @ expm(T * A).T
  np.testing.assert_allclose(z_BD, z_ref_BD, rtol=1e-5, atol=1e-5)
  delta_B = cnf.standard_normal_logp(z_BD) - logp_B                 # Δ(T) = log p(z(T)) − log p(x)
  # −t·tr(A) for every row; atol: fp32 cancellation in log N(z) − log p(x), both ≈ −50 for row 5
  np.testing.assert_allclose(delta_B, -T * jnp.trace(A), rtol=1e-5, atol=2e-5)
  logp_ref_B = norm.logpdf(z_ref_BD).sum(-1) + T * jnp.trace(A)
  np.testing.assert_allclose(logp_B, logp_ref_B, rtol=1e-5, atol=1e-5)
  assert int(stats["nfev"]) > 0 and not bool(stats["failed"])


def test_zero_field_gives_the_standard_normal():
  x_BD = jax.random.normal(jax.random.key(1), (6, 2)) * 3.0
  logp_B, z_BD, stats = jax.jit(lambda x: cnf.log_prob(lambda z, t, p: jnp.zeros_like(z), (), x,
                                                       rtol=TOL, atol=TOL))(x_BD)
  np.testing.assert_array_equal(z_BD, x_BD)
  np.testing.assert_allclose(logp_B, norm.logpdf(x_BD).sum(-1), rtol=1e-6)
  assert int(stats["nfev"]) > 0                                      # NFE is reported


def test_probes_have_zero_mean_and_identity_covariance():
  for estimator in ("rademacher", "gaussian"):
    eps_MD = cnf.draw_probes(jax.random.key(0), (200_000, 3), estimator)
    np.testing.assert_allclose(eps_MD.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(eps_MD.T @ eps_MD / eps_MD.shape[0], np.eye(3), atol=0.01)
  assert set(np.unique(cnf.draw_probes(jax.random.key(0), (100, 3), "rademacher"))) == {-1, 1}


def test_hutchinson_divergence_is_unbiased_with_gaussian_probes():
  """εᵀ(∂f/∂z)ε with Gaussian ε, averaged over M = 4096 probes per point, equals tr(∂f/∂z) at
  three different points within 4 standard errors."""
  field, params = mlp_field()
  M = 4096
  z_B2 = jnp.array([[0.0, 0.0], [1.5, -0.5], [-1.0, 2.0]])
  eps_R2 = cnf.draw_probes(jax.random.key(5), (3 * M, 2), "gaussian")

  @jax.jit
  def run(z_B2, eps_R2):
    exact_B = cnf.divergence(field, z_B2, 0.3, params, "exact")
    est_R = cnf.divergence(field, jnp.repeat(z_B2, M, axis=0), 0.3, params, "gaussian", eps_R2)
    jac_B22 = jax.vmap(jax.jacfwd(lambda z: field(z[None], 0.3, params)[0]))(z_B2)
    return exact_B, est_R.reshape(3, M), jnp.trace(jac_B22, axis1=1, axis2=2)

  exact_B, est_BM, trace_B = run(z_B2, eps_R2)
  sem_B = est_BM.std(axis=1, ddof=1) / np.sqrt(M)
  assert float(sem_B.min()) > 1e-4
  np.testing.assert_array_less(np.abs(est_BM.mean(axis=1) - exact_B), 4 * sem_B)
  np.testing.assert_allclose(exact_B, trace_B, rtol=1e-5)            # D JVPs = tr(jacfwd)


def test_hutchinson_log_density_is_unbiased():
  """Mean of M = 512 one-probe (Rademacher) estimates of log p(x) at 4 different points equals
  the exact-trace value within 4 standard errors (probes fixed per solve; z(t) does not depend
  on them, so the integrated estimate is unbiased up to the solver tolerance)."""
  estimator = "rademacher"
  field, params = mlp_field()
  B, M = 4, 512
  x_B2 = jnp.array([[0.0, 0.0], [1.5, -0.5], [-1.0, 2.0], [0.3, 0.9]])
  x_R2 = jnp.repeat(x_B2, M, axis=0)                                 # row r = b·M + m

  @jax.jit
  def run(x_B2, x_R2):
    exact_B = cnf.log_prob(field, params, x_B2, rtol=TOL, atol=TOL)[0]
    est_R = cnf.log_prob(field, params, x_R2, estimator=estimator, key=jax.random.key(7),
                         rtol=TOL, atol=TOL)[0]
    return exact_B, est_R

  exact_B, est_R = run(x_B2, x_R2)
  est_BM = est_R.reshape(B, M)
  sem_B = est_BM.std(axis=1, ddof=1) / np.sqrt(M)
  assert float(sem_B.min()) > 1e-3                                   # the probes do matter
  np.testing.assert_array_less(np.abs(est_BM.mean(axis=1) - exact_B), 4 * sem_B)
  assert len(set(np.round(np.asarray(exact_B), 4))) == B             # rows genuinely differ


def test_sample_inverts_log_prob():
  """x → z(T) by the density pass, then z(T) → x by `sample`, to the solver tolerance."""
  field, params = mlp_field()
  x_B2 = jax.random.normal(jax.random.key(2), (8, 2)) * 2.0

  @jax.jit
  def round_trip(x_B2):
    _, z_B2, fwd = cnf.log_prob(field, params, x_B2, rtol=TOL, atol=TOL)
    x_back_B2, back = cnf.sample(field, params, z_B2, rtol=TOL, atol=TOL)
    return z_B2, x_back_B2, fwd["nfev"], back["nfev"]

  z_B2, x_back_B2, nfe_fwd, nfe_back = round_trip(x_B2)
  assert float(jnp.abs(z_B2 - x_B2).max()) > 0.1                    # the flow moves points
  np.testing.assert_allclose(x_back_B2, x_B2, atol=1e-4)
  assert int(nfe_fwd) > 0 and int(nfe_back) > 0


@pytest.mark.parametrize("kw,needle", [
    ({"estimator": "hutch"}, "Unknown trace estimator 'hutch'"),
    ({"estimator": "rademacher"}, "needs a PRNG key"),
    ({"rtol": 0.0}, "ODE tolerance rtol=0.0 must be a positive number"),
])
def test_bad_inputs_are_one_line(kw, needle):
  with pytest.raises(ValueError, match=needle):
    cnf.log_prob(lambda z, t, p: z, (), jnp.zeros((2, 2)), **kw)
