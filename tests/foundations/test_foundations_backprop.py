"""Hand backprop (NumPy, and per-layer jax.vjp) equals jax.grad for every parameter."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import backprop as bp


@pytest.fixture
def x64():
  """fp64 inside one test only, so 1e-5 measures the algorithm, not fp32 round-off."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def _problem(sizes, batch=8, seed=0):
  rng = np.random.default_rng(seed + 100)
  x_BD = rng.normal(size=(batch, sizes[0]))
  y_BC = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
  return bp.init_mlp(sizes, seed=seed), x_BD, y_BC


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("sizes", [[5, 3], [5, 7, 3], [4, 6, 6, 5, 3]])
def test_numpy_backprop_matches_jax_grad(x64, sizes, activation):
  params, x_BD, y_BC = _problem(sizes)
  loss, grads = bp.numpy_loss_and_grads(params, x_BD, y_BC, activation)
  jparams = jax.tree.map(jnp.asarray, params)
  auto_loss, auto = jax.jit(jax.value_and_grad(bp.jax_loss), static_argnums=3)(
      jparams, jnp.asarray(x_BD), jnp.asarray(y_BC), activation)
  assert auto[0][0].dtype == jnp.float64
  np.testing.assert_allclose(loss, auto_loss, rtol=1e-10)
  assert len(grads) == len(sizes) - 1
  for (gw, gb), (aw, ab), (w, b) in zip(grads, auto, params):
    assert gw.shape == w.shape and gb.shape == b.shape
    np.testing.assert_allclose(gw, aw, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(gb, ab, rtol=1e-5, atol=1e-10)


def test_numpy_backprop_matches_finite_differences(x64):
  # An independent check that needs no autodiff at all: central differences on two entries.
  params, x_BD, y_BC = _problem([4, 6, 3], seed=3)
  _, grads = bp.numpy_loss_and_grads(params, x_BD, y_BC, "tanh")
  h = 1e-6
  for layer, (i, j) in [(0, (2, 1)), (1, (0, 5))]:
    plus = [(w.copy(), b.copy()) for w, b in params]
    minus = [(w.copy(), b.copy()) for w, b in params]
    plus[layer][0][i, j] += h
    minus[layer][0][i, j] -= h
    fd = (bp.numpy_loss_and_grads(plus, x_BD, y_BC)[0]
          - bp.numpy_loss_and_grads(minus, x_BD, y_BC)[0]) / (2 * h)
    np.testing.assert_allclose(grads[layer][0][i, j], fd, rtol=1e-6)


def test_vjp_backprop_matches_jax_grad():
  params, x_BD, y_BC = _problem([5, 8, 8, 3], seed=1)
  jparams = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x, y = jnp.asarray(x_BD, jnp.float32), jnp.asarray(y_BC, jnp.float32)
  loss, grads = jax.jit(bp.vjp_loss_and_grads, static_argnums=3)(jparams, x, y, "tanh")
  auto_loss, auto = jax.jit(jax.value_and_grad(bp.jax_loss), static_argnums=3)(jparams, x, y,
                                                                               "tanh")
  np.testing.assert_allclose(loss, auto_loss, rtol=1e-6)
  chex.assert_trees_all_close(grads, auto, rtol=1e-5, atol=1e-7)


def test_bad_input():
  params, x_BD, y_BC = _problem([5, 7, 3])
  with pytest.raises(ValueError, match=r"x must have shape \[B, 5\]"):
    bp.numpy_loss_and_grads(params, x_BD[:, :4], y_BC)
  with pytest.raises(ValueError, match="one-hot"):
    bp.numpy_loss_and_grads(params, x_BD, y_BC[:, :2])
  with pytest.raises(ValueError, match="valid choices: relu, sigmoid, tanh"):
    bp.numpy_loss_and_grads(params, x_BD, y_BC, "gelu")
