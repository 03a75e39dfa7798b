"""Tests for genfm.diffusion.sde_samplers with the analytic score of N(2, 0.5²) data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import analytic
from genfm.diffusion import sde as sde_lib
from genfm.diffusion import sde_samplers

MU, SD, EPS = 2.0, 0.5, 1e-3


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_reverse_sde_and_pc_recover_moments(name):
  """Euler–Maruyama (no corrector) and PC with one Langevin step both give N(2, 0.5²)."""
  sde = sde_lib.make_sde(name)
  score = analytic.score(sde, MU, SD)
  n = 4000
  for corrector_steps in (0, 1):
    x = sde_samplers.pc_sample(sde, score, jax.random.PRNGKey(0), (n, 1), num_steps=250,
                               eps=EPS, corrector_steps=corrector_steps)
    # Discretisation error (~1%) plus sampling error (σ/√n ≈ 0.008) of the mean/std.
    np.testing.assert_allclose(jnp.mean(x), MU, atol=0.04, err_msg=f"{name} {corrector_steps}")
    np.testing.assert_allclose(jnp.std(x), SD, atol=0.03, err_msg=f"{name} {corrector_steps}")


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_probability_flow_is_the_exact_gaussian_map(name):
  """The flow of Gaussians is affine: x(eps) = m_eps μ + (std_eps/std_T)(x_T − m_T μ).
  RK45 hits it to 1e-4; Euler errors halve and Heun errors quarter when steps double."""
  sde = sde_lib.make_sde(name)
  score = analytic.score(sde, MU, SD)
  m = lambda t: float(sde.mean_coeff(jnp.float32(t)))
  std = lambda t: float(np.sqrt(m(t) ** 2 * SD ** 2 + float(sde.marginal_std(jnp.float32(t))) ** 2))
  x_T = jnp.array([[0.0], [1.0]])
  slope = std(EPS) / std(1.0)
  expect = m(EPS) * MU + slope * (np.array([0.0, 1.0]) - m(1.0) * MU)
  out = sde_samplers.probability_flow_sample(sde, score, x_T, "rk45", eps=EPS)
  np.testing.assert_allclose(out[:, 0], expect, atol=1e-4 * max(1.0, slope * 50))
  if name == "vp":
    for method, order in (("euler", 1), ("heun", 2)):
      err = [np.max(np.abs(sde_samplers.probability_flow_sample(
          sde, score, x_T, method, num_steps=n, eps=EPS)[:, 0] - expect)) for n in (50, 100)]
      np.testing.assert_allclose(np.log2(err[0] / err[1]), order, atol=0.3, err_msg=method)


def test_reverse_drift_shapes_and_errors():
  sde = sde_lib.VPSDE()
  x = jnp.ones((3, 4, 4, 2))
  drift, g = sde_samplers.reverse_drift(sde, lambda x, t: -x, x, jnp.float32(0.5))
  assert drift.shape == x.shape and g.shape == (3, 1, 1, 1)
  # Reverse SDE drift f − g²s vs ODE drift f − ½g²s on s = −x: closed form.
  beta = 0.1 + 0.5 * 19.9
  np.testing.assert_allclose(drift, (-0.5 * beta + beta) * x, rtol=1e-6)
  ode_drift, _ = sde_samplers.reverse_drift(sde, lambda x, t: -x, x, jnp.float32(0.5), True)
  np.testing.assert_allclose(ode_drift, 0.0 * x, atol=1e-5)
  with pytest.raises(ValueError, match="score_fn returned shape"):
    sde_samplers.reverse_drift(sde, lambda x, t: x[:, 0], x, jnp.float32(0.5))
  with pytest.raises(ValueError, match="num_steps must be a positive integer"):
    sde_samplers.pc_sample(sde, lambda x, t: -x, jax.random.PRNGKey(0), (2, 1), num_steps=0)
  with pytest.raises(ValueError, match="Unknown ODE method"):
    sde_samplers.probability_flow_sample(sde, lambda x, t: -x, x, "midpoint")
