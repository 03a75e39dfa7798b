"""L1/L2, inverted dropout and early stopping: their defining properties, and dropout = nnx's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import regularization as reg


def test_l2_gradient_is_weight_decay():
  # SGD on L + (λ/2)‖w‖² equals (1 − ηλ)w − η∇L: the L2 penalty is weight decay for SGD.
  w = {"k": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
  loss = lambda p: jnp.sum(jnp.sin(p["k"]))
  lam, eta = 0.1, 0.3
  g = jax.grad(lambda p: loss(p) + reg.l2_penalty(p, lam))(w)
  sgd_l2 = w["k"] - eta * g["k"]
  decayed = (1 - eta * lam) * w["k"] - eta * jax.grad(loss)(w)["k"]
  np.testing.assert_allclose(sgd_l2, decayed, rtol=1e-6)
  np.testing.assert_allclose(reg.l2_penalty(w, 2.0), 1.0 + 4.0 + 0.25 + 9.0, rtol=1e-6)
  np.testing.assert_allclose(reg.l1_penalty(w, 2.0), 2.0 * 6.5, rtol=1e-6)


def test_l1_proximal_gradient_gives_soft_thresholded_least_squares():
  # Orthogonal design XᵀX = B·I: the lasso solution is the soft-thresholded OLS solution,
  # w* = sign(ŵ) max(|ŵ| − λ/2, 0) for L = mean((Xw − y)²) + λ‖w‖₁; irrelevant weights are 0.
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (64, 4)))
  x_BD = q * 8.0  # columns orthogonal with squared norm 64 = B
  w_true = jnp.array([2.0, -1.0, 0.05, 0.0])
  y_B = x_BD @ w_true
  lam, eta = 0.3, 0.2
  w = jnp.zeros(4)
  for _ in range(200):  # ISTA: gradient step on the smooth part, prox step on λ‖w‖₁
    w = reg.prox_l1(w - eta * 2 / 64 * x_BD.T @ (x_BD @ w - y_B), eta * lam)
  ols = jnp.linalg.lstsq(x_BD, y_B)[0]
  expected = jnp.sign(ols) * jnp.maximum(jnp.abs(ols) - lam / 2, 0.0)
  np.testing.assert_allclose(w, expected, atol=1e-5)
  assert float(w[2]) == 0.0 and float(w[3]) == 0.0  # exact zeros, not just small


def test_dropout_matches_nnx_and_preserves_expectation():
  x_BD = jax.random.normal(jax.random.key(0), (64, 128)) + 2.0
  key = jax.random.key(7)
  ours, theirs, many = jax.jit(lambda key: (
      reg.dropout(key, x_BD, rate=0.3), nnx.Dropout(0.3)(x_BD, rngs=key),
      jax.vmap(lambda k: reg.dropout(k, x_BD[:4], 0.3))(jax.random.split(key, 4000))))(key)
  np.testing.assert_array_equal(ours, theirs)
  # Statistical test: fraction dropped ≈ p; E[y] = x. 8192 entries: std of the dropped
  # fraction is √(p(1−p)/N) ≈ 0.005; allow 4σ.
  dropped = float(jnp.mean(ours == 0.0))
  assert abs(dropped - 0.3) < 0.02, dropped
  kept = ours != 0
  np.testing.assert_allclose(ours[kept], x_BD[kept] / 0.7, rtol=1e-6)
  # Mean over 4000 masks: std of the mean = |x|·√(p/(1−p))/√4000 ≈ 0.01·|x|; allow 5σ.
  np.testing.assert_allclose(many.mean(axis=0), x_BD[:4], atol=0.05 * float(jnp.abs(x_BD).max()))
  chex.assert_trees_all_equal(reg.dropout(key, x_BD, 0.3, deterministic=True), x_BD)


def test_early_stopping():
  stopper = reg.EarlyStopping(patience=3, min_delta=0.01)
  losses = [1.0, 0.8, 0.7, 0.695, 0.71, 0.69, 0.75]  # 0.695 and 0.69 are within min_delta
  stops = [stopper.update(v) for v in losses]
  assert stops == [False, False, False, False, False, True, True]
  assert stopper.best == 0.7 and stopper.best_step == 2
  assert reg.EarlyStopping(patience=5).update(float("nan"))


def test_bad_input():
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
    reg.dropout(jax.random.key(0), jnp.ones(3), 1.0)
  with pytest.raises(ValueError, match="patience must be >= 1"):
    reg.EarlyStopping(patience=0)
