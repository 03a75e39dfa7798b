"""Hand-derived activation derivatives equal jax.grad; values equal jax.nn."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import activations as act

# Grid avoiding exactly 0 (ReLU's kink) but covering both tails and the saturated regions.
_X = jnp.concatenate([jnp.linspace(-12.0, -0.01, 97), jnp.linspace(0.013, 12.0, 97)])

_LIBRARY = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,  # negative_slope=0.01 in both
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


@pytest.mark.parametrize("name", sorted(act.ELEMENTWISE))
def test_value_matches_jax_nn(name):
  phi, _ = act.get_activation(name)
  ours, lib = jax.jit(lambda x: (phi(x), _LIBRARY[name](x)))(_X)
  np.testing.assert_allclose(ours, lib, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(act.ELEMENTWISE))
def test_hand_derivative_matches_jax_grad(name):
  phi, dphi = act.get_activation(name)
  hand, auto, lib = jax.jit(lambda x: (dphi(x), jax.vmap(jax.grad(phi))(x),
                                       jax.vmap(jax.grad(_LIBRARY[name]))(x)))(_X)
  np.testing.assert_allclose(hand, auto, rtol=1e-5, atol=1e-6)
  # Also against the library function, so a wrong φ with a consistent φ' cannot pass.
  np.testing.assert_allclose(hand, lib, rtol=1e-5, atol=1e-6)


def test_known_values():
  # σ(0) = 1/2, σ'(0) = 1/4, GELU'(0) = Φ(0) = 1/2, SiLU'(0) = 1/2, tanh'(0) = 1.
  z = jnp.zeros(())
  np.testing.assert_allclose(act.sigmoid_grad(z), 0.25)
  np.testing.assert_allclose(act.gelu_grad(z), 0.5)
  np.testing.assert_allclose(act.silu_grad(z), 0.5)
  np.testing.assert_allclose(act.tanh_grad(z), 1.0)


def test_sigmoid_does_not_overflow():
  x = jnp.array([-1000.0, 1000.0])
  assert np.all(np.isfinite(act.sigmoid(x))) and np.all(np.isfinite(act.sigmoid_grad(x)))
  np.testing.assert_allclose(act.sigmoid(x), [0.0, 1.0])


@pytest.mark.parametrize("use_jit", [False, True])
def test_softmax_jacobian_matches_jax_jacobian(use_jit):
  x_C = jax.random.normal(jax.random.key(0), (7,)) * 3.0
  jac_fn = jax.jit(act.softmax_jacobian) if use_jit else act.softmax_jacobian
  ours = jac_fn(x_C)
  chex.assert_shape(ours, (7, 7))
  np.testing.assert_allclose(ours, jax.jit(jax.jacobian(act.softmax))(x_C), atol=1e-6)
  np.testing.assert_allclose(act.softmax(x_C), jax.nn.softmax(x_C), atol=1e-7)
  # Rows of J sum to zero: softmax is invariant to adding a constant to every logit.
  np.testing.assert_allclose(ours.sum(axis=1), 0.0, atol=1e-6)


def test_softmax_vjp_matches_jax_vjp():
  k1, k2 = jax.random.split(jax.random.key(1))
  x_BC = jax.random.normal(k1, (4, 5)) * 2.0
  g_BC = jax.random.normal(k2, (4, 5))
  ours, ref = jax.jit(lambda x, g: (act.softmax_vjp(x, g), jax.vjp(jax.nn.softmax, x)[1](g)[0]))(
      x_BC, g_BC)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_softmax_large_logits_stay_finite():
  s = act.softmax(jnp.array([1000.0, 1000.0, -1000.0]))
  np.testing.assert_allclose(s, [0.5, 0.5, 0.0], atol=1e-7)


def test_bad_input():
  with pytest.raises(ValueError, match="valid choices: gelu"):
    act.get_activation("swishy")
  with pytest.raises(ValueError, match=r"shape \[C\]"):
    act.softmax_jacobian(jnp.zeros((2, 3)))
