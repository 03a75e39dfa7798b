"""Linear regression: hand gradients = jax.grad; GD converges to the closed form to 1e-5."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import linear_regression as lr


def _data(batch=64, dim=3, noise=0.1, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x_BD = jax.random.normal(k1, (batch, dim))
  w_true = jnp.array([1.5, -2.0, 0.5])[:dim]
  y_B = x_BD @ w_true + 0.7 + noise * jax.random.normal(k2, (batch,))
  return x_BD, y_B


def test_hand_gradient_matches_jax_grad():
  x_BD, y_B = _data()
  params = lr.LinearParams(jnp.array([0.3, -0.1, 2.0]), jnp.array(-0.4))
  ours = lr.mse_grad(params, x_BD, y_B)
  auto = jax.grad(lr.mse_loss)(params, x_BD, y_B)
  chex.assert_trees_all_close(ours, auto, rtol=1e-5, atol=1e-6)


def test_gradient_descent_reaches_closed_form():
  x_BD, y_B = _data()
  params, losses = jax.jit(lr.fit_gradient_descent, static_argnums=(2, 3))(x_BD, y_B, 0.1, 500)
  exact = lr.fit_closed_form(x_BD, y_B)
  chex.assert_shape(losses, (500,))
  np.testing.assert_allclose(params.w_D, exact.w_D, atol=1e-5)
  np.testing.assert_allclose(params.b, exact.b, atol=1e-5)
  # The closed form recovers the generating weights up to the noise level.
  np.testing.assert_allclose(exact.w_D, [1.5, -2.0, 0.5], atol=0.05)
  # Full-batch GD on a convex quadratic below 2/λ_max decreases the loss monotonically.
  assert np.all(np.diff(np.asarray(losses)) <= 1e-7)


def test_closed_form_satisfies_normal_equations():
  x_BD, y_B = _data(noise=1.0)
  exact = lr.fit_closed_form(x_BD, y_B)
  # Residual is orthogonal to every column of X̃: X̃ᵀ(X̃θ − y) = 0, i.e. ∇L = 0.
  g = lr.mse_grad(exact, x_BD, y_B)
  np.testing.assert_allclose(g.w_D, 0.0, atol=1e-5)
  np.testing.assert_allclose(g.b, 0.0, atol=1e-5)


def test_step_size_above_bound_diverges():
  x_BD, y_B = _data()
  bound = float(lr.max_stable_learning_rate(x_BD))
  _, below = lr.fit_gradient_descent(x_BD, y_B, 0.9 * bound, 200)
  _, above = lr.fit_gradient_descent(x_BD, y_B, 1.1 * bound, 200)
  best = float(lr.mse_loss(lr.fit_closed_form(x_BD, y_B), x_BD, y_B))
  assert below[-1] < best + 1e-4  # converged (the optimum has loss ≈ noise² = 0.01)
  assert above[-1] > 1e3  # the top Hessian eigen-direction grows by |1 − ηλ| > 1 per step


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"\[B, D\]"):
    lr.fit_closed_form(jnp.zeros((4, 2)), jnp.zeros((5,)))
