"""Samplers for score SDEs: reverse-time Euler–Maruyama, predictor–corrector with Langevin
correction, and the probability-flow ODE (Euler, Heun, adaptive RK45).

Song et al. 2021, arXiv:2011.13456: reverse SDE (eq. 6), PC sampling (Algorithm 1 and
Appendix G), probability-flow ODE (eq. 13). score_fn(x [B, ...], t [B] float) → ∇ log p_t(x);
time runs from sde.T down to `eps` (score networks are not trained at t = 0).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genfm.diffusion import ode
from genfm.diffusion import sde as sde_lib

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _tvec(x: jax.Array, t: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, x.dtype)


def reverse_drift(sde: sde_lib.SDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
                  probability_flow: bool = False) -> tuple[jax.Array, jax.Array]:
  """Drift and diffusion of the reverse-time SDE (eq. 6) or of the probability-flow ODE (eq. 13).

  Reverse SDE:  dx = [f − g² ∇log p_t] dt + g dw̄.   ODE:  dx/dt = f − ½ g² ∇log p_t.
  """
  tv = _tvec(x, t)
  f, g = sde.sde(x, tv)
  score = score_fn(x, tv)
  if score.shape != x.shape:
    raise ValueError(f"score_fn returned shape {score.shape}, expected {x.shape}.")
  w = 0.5 if probability_flow else 1.0
  return f - w * jnp.square(g) * score, (jnp.zeros_like(g) if probability_flow else g)


def _check_steps(num_steps: int) -> None:
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")


def _langevin_alpha(sde: sde_lib.SDE, t: jax.Array) -> jax.Array:
  """α_i of Algorithms 4–5: 1 − β_i for (sub-)VP with β_i ≈ β(t)/N, 1 for VE."""
  if isinstance(sde, sde_lib.VPSDE):
    return 1.0 - sde.beta(t) / sde.N
  return jnp.ones_like(t)


def langevin_correct(sde: sde_lib.SDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
                     key: jax.Array, snr: float, n_steps: int = 1) -> jax.Array:
  """Langevin corrector, Algorithms 4 (VE) and 5 (VP) of 2011.13456 (Appendix G).

  ε = 2 α (r ‖z‖ / ‖s_θ‖)², x ← x + ε s_θ + √(2ε) z, with r the signal-to-noise ratio.
  Norms are per example over all non-batch axes, then averaged over the batch (as in the
  score_sde code), which keeps ε stable for low-dimensional data.
  """
  alpha = _langevin_alpha(sde, t)
  for k in jax.random.split(key, n_steps):
    grad = score_fn(x, _tvec(x, t))
    z = jax.random.normal(k, x.shape, x.dtype)
    per_ex = lambda v: jnp.mean(jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), -1)))
    step = 2.0 * alpha * jnp.square(snr * per_ex(z) / per_ex(grad))
    x = x + step * grad + jnp.sqrt(2.0 * step) * z
  return x


def pc_sample(sde: sde_lib.SDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...],
              num_steps: int = 1000, eps: float = 1e-3, corrector_steps: int = 0,
              snr: float = 0.16, x_T: jax.Array | None = None) -> jax.Array:
  """Predictor–corrector sampling (Algorithm 1 of 2011.13456).

  Predictor: Euler–Maruyama on the reverse SDE, x ← x − [f − g² s] Δt + g √Δt z with
  Δt = (T − eps)/num_steps. Corrector: `corrector_steps` Langevin steps (0 = plain
  reverse-SDE Euler–Maruyama). The last predictor step returns its mean (no noise).
  """
  _check_steps(num_steps)
  init_key, key = jax.random.split(key)
  if x_T is not None and tuple(x_T.shape) != tuple(shape):
    raise ValueError(f"x_T has shape {x_T.shape}, expected {shape}.")
  x = sde_lib.prior_sample(sde, init_key, shape) if x_T is None else x_T
  ts = jnp.linspace(sde.T, eps, num_steps + 1)[:-1]
  dt = (sde.T - eps) / num_steps

  def step(x, inp):
    t, k = inp
    kc, kp = jax.random.split(k)
    if corrector_steps:
      x = langevin_correct(sde, score_fn, x, t, kc, snr, corrector_steps)
    drift, g = reverse_drift(sde, score_fn, x, t)
    x_mean = x - drift * dt                       # reverse time: t → t − Δt
    x = x_mean + g * jnp.sqrt(dt) * jax.random.normal(kp, x.shape, x.dtype)
    return x, x_mean

  x, means = jax.lax.scan(step, x, (ts, jax.random.split(key, num_steps)))
  return means[-1]


def euler_maruyama_sample(sde: sde_lib.SDE, score_fn: ScoreFn, key: jax.Array,
                          shape: tuple[int, ...], num_steps: int = 1000, eps: float = 1e-3,
                          x_T: jax.Array | None = None) -> jax.Array:
  """Reverse-time SDE with Euler–Maruyama only (PC with no corrector)."""
  return pc_sample(sde, score_fn, key, shape, num_steps, eps, corrector_steps=0, x_T=x_T)


def probability_flow_sample(sde: sde_lib.SDE, score_fn: ScoreFn, x_T: jax.Array,
                            method: str = "rk45", num_steps: int = 100, eps: float = 1e-3,
                            rtol: float = 1e-5, atol: float = 1e-5) -> jax.Array:
  """Integrates the probability-flow ODE (eq. 13) from sde.T down to eps.

  method: "euler" / "heun" (num_steps) or "rk45" (adaptive Dormand–Prince, rtol/atol).
  """
  f = lambda x, t: reverse_drift(sde, score_fn, x, t, probability_flow=True)[0]
  return ode.integrate(f, x_T, sde.T, eps, method, num_steps, rtol, atol)
