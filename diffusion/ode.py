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

# Dormand–Prince RK5(4)7M tableau (c, A, 5th-order b, error weights E = b − b̂).
_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1], np.float64)
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
]
_B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84], np.float64)
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

  def body(state):
    t, y, fy, h_abs, nfev, nsteps, nrej = state
    h_abs = jnp.minimum(h_abs, jnp.abs(t1 - t))
    h = h_abs * direction
    ks = [fy]
    for i in range(1, 6):
      ks.append(fv(_axpy(y, h, ks, _A[i]), t + _C[i] * h))
    y_new = _axpy(y, h, ks, _B)
    t_new = jnp.where(h_abs >= jnp.abs(t1 - t), t1, t + h)   # land exactly on t1
    f_new = fv(y_new, t_new)                                 # FSAL: k7 = f(y_new)
    err = h * sum(e * k for e, k in zip(_E, ks + [f_new]) if e != 0)
    err_norm = rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))))
    accept = err_norm <= 1.0
    factor = jnp.where(err_norm == 0, _MAX_FACTOR, _SAFETY * err_norm ** (-1 / 5))
    factor = jnp.clip(factor, _MIN_FACTOR, _MAX_FACTOR)
    return (jnp.where(accept, t_new, t), jnp.where(accept, y_new, y),
            jnp.where(accept, f_new, fy), h_abs * factor, nfev + 6,
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
