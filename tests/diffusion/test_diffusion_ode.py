"""Tests for genfm.diffusion.ode: Dormand–Prince against scipy.integrate.solve_ivp, and the
convergence orders of Euler (1) and Heun (2) on an ODE with a closed-form solution."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from genfm.diffusion import ode


def _osc(y, t):   # damped/forced oscillator, non-autonomous
  return jnp.stack([y[1], -y[0] + 0.3 * jnp.sin(3 * t) * y[1]])


def _osc_np(t, y):
  return [y[1], -y[0] + 0.3 * np.sin(3 * t) * y[1]]


class Dopri5Test(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_scipy_rk45(self):
    y0 = jnp.array([1.0, 0.0])
    solve = self.variant(lambda y: ode.dopri5(_osc, y, 0.0, 5.0, rtol=1e-6, atol=1e-8))
    y, stats = solve(y0)
    rk45 = integrate.solve_ivp(_osc_np, (0, 5), [1.0, 0.0], method="RK45", rtol=1e-6, atol=1e-8)
    exact = integrate.solve_ivp(_osc_np, (0, 5), [1.0, 0.0], method="DOP853", rtol=1e-12,
                                atol=1e-12)
    np.testing.assert_allclose(y, rk45.y[:, -1], atol=2e-6)
    np.testing.assert_allclose(y, exact.y[:, -1], atol=2e-6)
    # Same controller as scipy ⇒ the same number of accepted steps (26 here), give or take one.
    assert abs(int(stats["nsteps"]) - (len(rk45.t) - 1)) <= 1
    assert not stats["failed"]


def test_backward_and_pytree_state():
  """Integrating backward retraces the forward solution; tuples of arrays are valid states."""
  f = lambda y, t: (y[1], -y[0])                    # harmonic oscillator as a pytree
  y1, _ = ode.dopri5(f, (jnp.ones(3), jnp.zeros(3)), 0.0, 2.0, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(y1[0], np.cos(2.0), atol=1e-5)
  np.testing.assert_allclose(y1[1], -np.sin(2.0), atol=1e-5)
  y0, stats = ode.dopri5(f, y1, 2.0, 0.0, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(y0[0], 1.0, atol=1e-5)
  np.testing.assert_allclose(y0[1], 0.0, atol=1e-5)
  assert not stats["failed"]


def test_max_steps_reports_failure():
  _, stats = ode.dopri5(_osc, jnp.array([1.0, 0.0]), 0.0, 5.0, rtol=1e-8, atol=1e-10,
                        max_steps=5)
  assert stats["failed"]


def test_fixed_step_convergence_orders():
  """y' = −y + sin t, y(0) = 1 ⇒ y(t) = 1.5 e^{−t} + (sin t − cos t)/2."""
  f = lambda y, t: -y + jnp.sin(t)
  exact = 1.5 * np.exp(-2.0) + (np.sin(2.0) - np.cos(2.0)) / 2
  for method, order in (("euler", 1), ("heun", 2)):
    e20 = abs(float(ode.integrate(f, jnp.ones(()), 0.0, 2.0, method, num_steps=20)) - exact)
    e40 = abs(float(ode.integrate(f, jnp.ones(()), 0.0, 2.0, method, num_steps=40)) - exact)
    np.testing.assert_allclose(np.log2(e20 / e40), order, atol=0.15, err_msg=method)
  rk = ode.integrate(f, jnp.ones(()), 0.0, 2.0, "rk45", rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(rk, exact, atol=1e-6)


def test_bad_method():
  with pytest.raises(ValueError, match="Unknown ODE method 'rk4'.*euler, heun, rk45"):
    ode.integrate(lambda y, t: y, jnp.ones(()), 0.0, 1.0, "rk4")
