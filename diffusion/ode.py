"""ODE integrators for the probability-flow ODE: Euler, Heun and adaptive Dormand–Prince.

Dormand & Prince 1980, "A family of embedded Runge–Kutta formulae" (RK5(4), the "RK45" that
score SDE, arXiv:2011.13456 Sec. 4.3, uses through scipy.integrate.solve_ivp). Written in
JAX (lax.while_loop) so it runs under jit on any backend; the step-size controller follows
scipy's RK45 (Hairer, Nørsett & Wanner, "Solving ODEs I", II.4) so results can be checked
against solve_ivp. Heun's method is the second-order step of EDM, arXiv:2206.00364 (Alg. 1).

f(y, t) → dy/dt; y may be any pytree of float arrays (e.g. (x, log-det) in likelihood.py).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Fn = Callable[[Any, jax.Array], Any]

# Dormand–Prince RK5(4)7M tableau. Row 6 of A is the 5th-order weights b: the 7th stage is
# evaluated at y_new itself, which is what makes the method "first same as last" (FSAL).
_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1], np.float64)
_A = np.zeros((7, 7), np.float64)
_A[1, :1] = [1 / 5]
_A[2, :2] = [3 / 40, 9 / 40]
_A[3, :3] = [44 / 45, -56 / 15, 32 / 9]
_A[4, :4] = [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]
_A[5, :5] = [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]
_A[6, :6] = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
# Error weights E = b − b̂ (5th minus embedded 4th order).
_E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40],
              np.float64)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def _axpy(y, h, ks, coefs):
  """y + h Σ_i coefs_i k_i over pytrees (skipping zero coefficients)."""
  out = y
  for c, k in zip(coefs, ks):
    if c != 0:
      out = jax.tree.map(lambda o, ki, c=c: o + (h * c) * ki, out, k)
  return out


def euler(f: Fn, y0: Any, t0: float, t1: float, num_steps: int) -> Any:
  """Fixed-step explicit Euler from t0 to t1 (t1 < t0 integrates backward)."""
  ts = jnp.linspace(t0, t1, num_steps + 1)

  def step(y, i):
    h = ts[i + 1] - ts[i]
    return _axpy(y, h, [f(y, ts[i])], [1.0]), None

  y, _ = jax.lax.scan(step, y0, jnp.arange(num_steps))
  return y


def heun(f: Fn, y0: Any, t0: float, t1: float, num_steps: int) -> Any:
  """Fixed-step Heun (explicit trapezoid, 2nd order): 2 evaluations per step."""
  ts = jnp.linspace(t0, t1, num_steps + 1)

  def step(y, i):
    h = ts[i + 1] - ts[i]
    k1 = f(y, ts[i])
    k2 = f(_axpy(y, h, [k1], [1.0]), ts[i + 1])
    return _axpy(y, h, [k1, k2], [0.5, 0.5]), None

  y, _ = jax.lax.scan(step, y0, jnp.arange(num_steps))
  return y


def dopri5(f: Fn, y0: Any, t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 10_000) -> tuple[Any, dict[str, jax.Array]]:
  """Adaptive Dormand–Prince RK5(4) from t0 to t1; returns (y(t1), stats).

  Local error control as in scipy's RK45: the step is accepted when the RMS norm of
  err / (atol + rtol · max(|y|, |y_new|)) is ≤ 1, and h is rescaled by
  clip(0.9 · err^(−1/5), 0.2, 10). stats: nfev (f evaluations), nsteps (accepted),
  nreject, and `failed` (max_steps reached before t1).
  """
  flat0, unravel = ravel_pytree(y0)
  dtype = flat0.dtype
  fv = lambda y, t: ravel_pytree(f(unravel(y), t))[0]
  t0 = jnp.asarray(t0, dtype)
  t1 = jnp.asarray(t1, dtype)
  direction = jnp.sign(t1 - t0)
  span = jnp.abs(t1 - t0)
  rms = lambda v: jnp.sqrt(jnp.mean(jnp.square(v)))

  # Initial step — Hairer et al. II.4 (scipy's select_initial_step), 1 extra evaluation.
  f0 = fv(flat0, t0)
  scale = atol + jnp.abs(flat0) * rtol
  d0, d1 = rms(flat0 / scale), rms(f0 / scale)
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
  h0 = jnp.minimum(h0, span)
  f1 = fv(flat0 + h0 * direction * f0, t0 + h0 * direction)
  d2 = rms((f1 - f0) / scale) / h0
  h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(d1, d2)) ** (1 / 5))
  h_init = jnp.minimum(jnp.minimum(100 * h0, h1), span)

  def cond(state):
    t, _, _, _, _, nsteps, nrej = state
    return (direction * (t1 - t) > 0) & (nsteps + nrej < max_steps)

  A, C, E = (jnp.asarray(v, dtype) for v in (_A, _C, _E))

  def body(state):
    t, y, fy, h_abs, nfev, nsteps, nrej = state
    h_abs = jnp.minimum(h_abs, jnp.abs(t1 - t))
    h = h_abs * direction
    t_end = jnp.where(h_abs >= jnp.abs(t1 - t), t1, t + h)   # land exactly on t1

    # Stages 1..6 as a scan over the tableau rows, so f is traced (and compiled) once
    # instead of six times — compile time dominates on CPU for small states.
    def stage(K_7P, i):
      y_i = y + h * (A[i] @ K_7P)
      t_i = jnp.where(i == 6, t_end, t + C[i] * h)
      return K_7P.at[i].set(fv(y_i, t_i)), None

    K_7P = jnp.zeros((7,) + y.shape, dtype).at[0].set(fy)
    K_7P, _ = jax.lax.scan(stage, K_7P, jnp.arange(1, 7))
    y_new = y + h * (A[6] @ K_7P)                            # 5th-order solution
    err = h * (E @ K_7P)
    err_norm = rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))))
    accept = err_norm <= 1.0
    factor = jnp.where(err_norm == 0, _MAX_FACTOR, _SAFETY * err_norm ** (-1 / 5))
    factor = jnp.clip(factor, _MIN_FACTOR, _MAX_FACTOR)
    return (jnp.where(accept, t_end, t), jnp.where(accept, y_new, y),
            jnp.where(accept, K_7P[6], fy), h_abs * factor, nfev + 6,
            nsteps + accept.astype(jnp.int32), nrej + (~accept).astype(jnp.int32))

  init = (t0, flat0, f0, h_init, jnp.int32(2), jnp.int32(0), jnp.int32(0))
  t, y, _, _, nfev, nsteps, nrej = jax.lax.while_loop(cond, body, init)
  stats = {"nfev": nfev, "nsteps": nsteps, "nreject": nrej,
           "failed": direction * (t1 - t) > 0}
  return unravel(y), stats


ODE_METHODS = ("euler", "heun", "rk45")


def integrate(f: Fn, y0: Any, t0: float, t1: float, method: str = "rk45",
              num_steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5) -> Any:
  """Integrates with "euler" / "heun" (num_steps) or "rk45" (rtol, atol); returns y(t1)."""
  if method == "euler":
    return euler(f, y0, t0, t1, num_steps)
  if method == "heun":
    return heun(f, y0, t0, t1, num_steps)
  if method == "rk45":
    return dopri5(f, y0, t0, t1, rtol=rtol, atol=atol)[0]
  raise ValueError(f"Unknown ODE method {method!r}; valid choices: {', '.join(ODE_METHODS)}.")
