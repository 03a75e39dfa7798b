"""Weight initialisation that keeps activation variance constant with depth.

For z_l = W_l o_{l−1} with i.i.d. zero-mean weights, Var[z_l] = n_in Var[W] E[o_{l−1}²].
  Xavier/Glorot (Glorot & Bengio, AISTATS 2010, eq. (12) and (16)): Var[W] = 2 / (n_in + n_out),
    uniform on ±√(6/(n_in + n_out)); keeps the variance for linear/tanh-like units (φ'(0) = 1) in
    both the forward and backward pass when n_in = n_out.
  He/Kaiming (He et al. 1502.01852, eq. (10)): Var[W] = 2 / n_in; ReLU zeroes half its input, so
    E[o²] = Var[z]/2 and the factor 2 restores Var[z_l] = Var[z_{l−1}].
Mismatching them multiplies the variance by a constant factor per layer: Xavier under ReLU halves
it (2⁻²⁰ ≈ 1e-6 after 20 layers), He under a linear map doubles it (2²⁰ ≈ 1e6).
Kernels are [D_in, D_out] (nnx.Linear's layout); conv kernels [kh, kw, C_in, C_out] have fan_in =
kh·kw·C_in.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from genfm.foundations import errors


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
  """(fan_in, fan_out) for a [..., D_in, D_out] kernel; leading axes are the receptive field."""
  if len(shape) < 2:
    raise ValueError(f"a kernel needs at least 2 axes [D_in, D_out], got shape {shape}")
  receptive = math.prod(shape[:-2])
  return shape[-2] * receptive, shape[-1] * receptive


def xavier_uniform(key, shape, gain: float = 1.0, dtype=jnp.float32) -> jax.Array:
  fan_in, fan_out = fans(shape)
  limit = gain * math.sqrt(6.0 / (fan_in + fan_out))  # eq. (16) of Glorot & Bengio 2010
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def xavier_normal(key, shape, gain: float = 1.0, dtype=jnp.float32) -> jax.Array:
  fan_in, fan_out = fans(shape)
  std = gain * math.sqrt(2.0 / (fan_in + fan_out))  # Var[W] = 2/(n_in + n_out), eq. (12)
  return std * jax.random.normal(key, shape, dtype)


def he_normal(key, shape, dtype=jnp.float32) -> jax.Array:
  fan_in, _ = fans(shape)
  return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)  # eq. (10) of 1502.01852


def he_uniform(key, shape, dtype=jnp.float32) -> jax.Array:
  fan_in, _ = fans(shape)
  limit = math.sqrt(6.0 / fan_in)  # uniform on ±a has variance a²/3 = 2/n_in
  return jax.random.uniform(key, shape, dtype, -limit, limit)


INITIALIZERS: dict[str, Callable] = {
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "he_normal": he_normal, "he_uniform": he_uniform,
}
_ACTIVATIONS = {"linear": lambda z: z, "relu": jax.nn.relu, "tanh": jnp.tanh}


def get_initializer(name: str) -> Callable:
  if name not in INITIALIZERS:
    raise errors.unknown_choice("initializer", name, INITIALIZERS)
  return INITIALIZERS[name]


def activation_variances(key: jax.Array, init: str, activation: str, depth: int = 20,
                         width: int = 256, batch: int = 512) -> jax.Array:
  """Var[z_l] of the pre-activations of each layer l = 1..depth for x ~ N(0, I): [depth].

  A bias-free MLP of square layers z_l = o_{l−1} W_l, o_l = φ(z_l), fresh weights per layer.
  """
  if activation not in _ACTIVATIONS:
    raise errors.unknown_choice("activation", activation, _ACTIVATIONS)
  init_fn, phi = get_initializer(init), _ACTIVATIONS[activation]
  key_x, key_w = jax.random.split(key)
  x_BD = jax.random.normal(key_x, (batch, width))

  def layer(o_BD, key_l):
    z_BD = o_BD @ init_fn(key_l, (width, width))
    return phi(z_BD), jnp.var(z_BD)

  _, variances = jax.lax.scan(layer, x_BD, jax.random.split(key_w, depth))
  return variances
