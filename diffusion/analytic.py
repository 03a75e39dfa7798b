"""Exact denoisers and scores for Gaussian data — the no-network reference for samplers.

If x_0 ~ N(μ, s² I) and x_t = m x_0 + σ z, then x_t ~ N(m μ, (m² s² + σ²) I), so
  ∇ log p_t(x) = −(x − m μ) / (m² s² + σ²),
  E[ε | x_t] = −σ ∇ log p_t(x_t)           (Tweedie; eq. (11) of 2006.11239 is its model).
These are the minimisers of the DDPM / DSM losses (2006.11239, 2011.13456), so samplers
driven by them must reproduce N(μ, s²) up to discretisation error only.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genfm.diffusion import gaussian
from genfm.diffusion import schedules
from genfm.diffusion import sde as sde_lib


def discrete_model(sched: schedules.Schedule, mu: float, std: float,
                   prediction_type: str = "eps") -> Callable[[jax.Array, jax.Array], jax.Array]:
  """model_fn(x_t [B, ...], t [B] int) → optimal eps / x0 / v prediction for N(μ, std²) data."""
  gaussian.check_prediction_type(prediction_type)

  def model_fn(xt: jax.Array, t_B: jax.Array) -> jax.Array:
    t_B = jnp.broadcast_to(t_B, xt.shape[:1])
    a = schedules.extract(sched.sqrt_alphas_cumprod, t_B, xt.ndim)
    s = schedules.extract(sched.sqrt_one_minus_alphas_cumprod, t_B, xt.ndim)
    var = a ** 2 * std ** 2 + s ** 2
    eps = s * (xt - a * mu) / var     # E[ε | x_t] = −σ ∇log p_t
    return gaussian.convert(eps, xt, a, s, "eps", prediction_type)

  return model_fn


def score(sde: sde_lib.SDE, mu: float, std: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """score_fn(x [B, ...], t [B] or scalar) = ∇ log p_t(x) for N(μ, std²) data under `sde`."""

  def score_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    m = sde_lib._bcast(sde.mean_coeff(t), x)
    s = sde_lib._bcast(sde.marginal_std(t), x)
    return -(x - m * mu) / (m ** 2 * std ** 2 + s ** 2)

  return score_fn


def marginal_logp(sde: sde_lib.SDE, mu: float, std: float, x: jax.Array,
                  t: float) -> jax.Array:
  """log p_t(x) summed over non-batch axes, [B] — the exact prior for likelihood tests."""
  m = sde.mean_coeff(jnp.float32(t))
  s = sde.marginal_std(jnp.float32(t))
  var = m ** 2 * std ** 2 + s ** 2
  d = np.prod(x.shape[1:])
  sq = jnp.sum(jnp.square(x - m * mu).reshape(x.shape[0], -1), axis=-1)
  return -0.5 * d * jnp.log(2 * np.pi * var) - 0.5 * sq / var
