"""Linear regression: gradient descent with hand-derived gradients vs closed-form least squares.

Model ŷ = x w + b, loss L = (1/B) Σ_i (ŷ_i − y_i)² (mean squared error). With residual r = ŷ − y,
  ∂L/∂w = (2/B) xᵀ r,   ∂L/∂b = (2/B) Σ_i r_i,
and the minimiser solves the normal equations X̃ᵀX̃ θ = X̃ᵀy with X̃ = [x, 1], θ = [w; b]
(Gauss 1809 / Legendre 1805; e.g. Hastie, Tibshirani & Friedman, ESL §3.2, eq. (3.6)).
Gradient descent on a quadratic converges for lr < 2 / λ_max(2 X̃ᵀX̃ / B) (Boyd & Vandenberghe §9.3).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class LinearParams(NamedTuple):
  w_D: Array  # [D]
  b: Array  # []


def _check(x_BD: Array, y_B: Array) -> None:
  if x_BD.ndim != 2 or y_B.ndim != 1 or x_BD.shape[0] != y_B.shape[0]:
    raise ValueError(
        f"expected x of shape [B, D] and y of shape [B] with the same B; got x {x_BD.shape}, "
        f"y {y_B.shape}")


def predict(params: LinearParams, x_BD: Array) -> Array:
  return x_BD @ params.w_D + params.b  # [B]


def mse_loss(params: LinearParams, x_BD: Array, y_B: Array) -> Array:
  r_B = predict(params, x_BD) - y_B
  return jnp.mean(r_B**2)


def mse_grad(params: LinearParams, x_BD: Array, y_B: Array) -> LinearParams:
  """Hand-derived ∇L: (2/B) xᵀ r and (2/B) Σ r."""
  _check(x_BD, y_B)
  batch = x_BD.shape[0]
  r_B = predict(params, x_BD) - y_B
  return LinearParams(w_D=(2.0 / batch) * (x_BD.T @ r_B), b=(2.0 / batch) * jnp.sum(r_B))


def fit_gradient_descent(x_BD: Array, y_B: Array, learning_rate: float,
                         num_steps: int) -> tuple[LinearParams, Array]:
  """Full-batch gradient descent from zeros; returns final params and the loss per step [num_steps]."""
  _check(x_BD, y_B)
  init = LinearParams(jnp.zeros(x_BD.shape[1], x_BD.dtype), jnp.zeros((), x_BD.dtype))

  def step(params, _):
    g = mse_grad(params, x_BD, y_B)
    loss = mse_loss(params, x_BD, y_B)
    params = jax.tree.map(lambda p, gp: p - learning_rate * gp, params, g)  # θ ← θ − η ∇L
    return params, loss

  return jax.lax.scan(step, init, None, length=num_steps)


def fit_closed_form(x_BD: Array, y_B: Array) -> LinearParams:
  """argmin_θ ‖X̃θ − y‖² by least squares (SVD-based lstsq: stabler than inverting X̃ᵀX̃)."""
  _check(x_BD, y_B)
  x_aug = jnp.concatenate([x_BD, jnp.ones((x_BD.shape[0], 1), x_BD.dtype)], axis=1)  # [B, D+1]
  theta, *_ = jnp.linalg.lstsq(x_aug, y_B)
  return LinearParams(w_D=theta[:-1], b=theta[-1])


def max_stable_learning_rate(x_BD: Array) -> Array:
  """2 / λ_max of the loss Hessian H = (2/B) X̃ᵀX̃; GD diverges above this step size."""
  x_aug = jnp.concatenate([x_BD, jnp.ones((x_BD.shape[0], 1), x_BD.dtype)], axis=1)
  hess = 2.0 / x_BD.shape[0] * x_aug.T @ x_aug
  return 2.0 / jnp.max(jnp.linalg.eigvalsh(hess))
