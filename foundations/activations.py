"""Activation functions and their hand-derived derivatives.

Each activation φ is written from its definition and paired with φ' derived by hand; the tests hold
φ' to `jax.grad` (softmax: its Jacobian to `jax.jacobian`) and φ to `jax.nn`.

References: sigmoid/tanh units and backprop, Rumelhart, Hinton & Williams (1986, Nature 323);
ReLU, Nair & Hinton (ICML 2010); leaky ReLU, Maas et al. (ICML 2013); GELU, Hendrycks & Gimpel
1606.08415; SiLU/Swish, Elfwing et al. 1702.03118 and Ramachandran et al. 1710.05941; softmax
Jacobian, Bridle (1990).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from genfm.foundations import errors

Array = jax.Array


def sigmoid(x: Array) -> Array:
  # σ(x) = 1 / (1 + e^{-x}) = (1 + tanh(x/2)) / 2; the tanh form never overflows e^{-x} for x ≪ 0.
  return 0.5 * (1.0 + jnp.tanh(0.5 * x))


def sigmoid_grad(x: Array) -> Array:
  s = sigmoid(x)
  return s * (1.0 - s)  # σ' = σ(1 − σ)


def tanh(x: Array) -> Array:
  # tanh is an XLA primitive; (e^{2x} − 1)/(e^{2x} + 1) would overflow for x > 44 in fp32.
  return jnp.tanh(x)


def tanh_grad(x: Array) -> Array:
  return 1.0 - jnp.tanh(x) ** 2  # tanh' = 1 − tanh²


def relu(x: Array) -> Array:
  return jnp.maximum(x, 0.0)


def relu_grad(x: Array) -> Array:
  # ReLU is not differentiable at 0; like jax.nn.relu we take the subgradient 0 there.
  return (x > 0).astype(x.dtype)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
  return jnp.where(x >= 0, x, negative_slope * x)


def leaky_relu_grad(x: Array, negative_slope: float = 0.01) -> Array:
  return jnp.where(x > 0, 1.0, negative_slope).astype(x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: Array, approximate: bool = False) -> Array:
  if approximate:
    # tanh approximation, eq. (3) of 1606.08415 (jax.nn.gelu's default).
    return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
  # exact: x Φ(x) = x (1 + erf(x/√2)) / 2, eq. (2) of 1606.08415.
  return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def gelu_grad(x: Array, approximate: bool = False) -> Array:
  if approximate:
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
    t = jnp.tanh(u)
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x**2)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * du
  cdf = 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))
  pdf = jnp.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
  return cdf + x * pdf  # d/dx [x Φ(x)] = Φ(x) + x φ(x)


def silu(x: Array) -> Array:
  return x * sigmoid(x)  # SiLU / Swish-1, 1702.03118


def silu_grad(x: Array) -> Array:
  s = sigmoid(x)
  return s * (1.0 + x * (1.0 - s))  # σ + x σ(1 − σ)


def softmax(x: Array, axis: int = -1) -> Array:
  # Subtract the max: softmax is shift-invariant and e^{x − max} ≤ 1 cannot overflow.
  z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  e = jnp.exp(z)
  return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_jacobian(x_C: Array) -> Array:
  """∂s_i/∂x_j = s_i (δ_ij − s_j), i.e. J = diag(s) − s sᵀ, for one vector x: [C] -> [C, C]."""
  if x_C.ndim != 1:
    raise ValueError(f"softmax_jacobian takes one vector of shape [C], got shape {x_C.shape}")
  s_C = softmax(x_C)
  return jnp.diag(s_C) - jnp.outer(s_C, s_C)


def softmax_vjp(x: Array, g: Array, axis: int = -1) -> Array:
  """gᵀJ without forming J: s ⊙ (g − ⟨g, s⟩), batched over all other axes."""
  s = softmax(x, axis=axis)
  return s * (g - jnp.sum(g * s, axis=axis, keepdims=True))


# Elementwise activations: name -> (φ, φ').
ELEMENTWISE: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "gelu": (gelu, gelu_grad),
    "gelu_tanh": (lambda x: gelu(x, True), lambda x: gelu_grad(x, True)),
    "silu": (silu, silu_grad),
}


def get_activation(name: str) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
  """Returns (φ, φ') for an elementwise activation; unknown names list the valid ones."""
  if name not in ELEMENTWISE:
    raise errors.unknown_choice("activation", name, ELEMENTWISE)
  return ELEMENTWISE[name]
