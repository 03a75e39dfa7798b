"""Flow matching and rectified flow: probability paths, CFM loss, ODE sampling, straightness.

Flow matching, Lipman et al. 2022, arXiv:2210.02747 (conditional flow matching loss, eq. 9;
the optimal-transport Gaussian path with σ_min, eqs. 20–23). Rectified flow, Liu et al. 2022,
arXiv:2209.03003 (straight interpolation, eq. 1; straightness, eq. 2 / Def. 3.4; reflow = train
again on the model's own (noise, ODE(noise)) couplings, which is the caller's business: see
experiments/tasks/diffusion2d.py).

Time convention (the one of 2210.02747, 2209.03003 and torchcfm): t ∈ [0, 1], **t = 0 is
noise** x ~ N(0, I) and **t = 1 is data**; sampling integrates dx/dt = v(x, t) from 0 to 1.
(In the DDPM modules "x0" means data; here that name is avoided: `noise`, `data`, `x_t`.)

Paths (x_t = a_t · data + b_t · noise, u_t = d/dt x_t for fixed (noise, data)):
  "fm": a_t = t, b_t = 1 − (1 − σ_min) t,  u_t = data − (1 − σ_min) noise   (eqs. 20–23)
  "rf": a_t = t, b_t = 1 − t,              u_t = data − noise               (eq. 1 of 2209.03003)
"rf" is "fm" with σ_min = 0 (its sigma_min argument is ignored).

velocity_fn(x_t [B, ...], t_B [B] float in [0, 1]) → [B, ...]; networks that take DDPM-style
time labels are fed 999 · t by the caller.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genfm.diffusion import ode

PATHS = ("fm", "rf")
METHODS = ("euler", "heun", "rk45")

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_path(path: str) -> None:
  if path not in PATHS:
    raise ValueError(f"Unknown flow path {path!r}; valid choices: {', '.join(PATHS)}.")


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"Unknown flow sampler {method!r}; valid choices: {', '.join(METHODS)}.")


def _coefs(path: str, t_B: jax.Array, ndim: int, sigma_min: float):
  """(a_t, b_t, ḃ_t) shaped [B, 1, ..., 1] for x_t = a_t data + b_t noise (ȧ_t = 1)."""
  check_path(path)
  s = 0.0 if path == "rf" else float(sigma_min)
  t = jnp.reshape(jnp.asarray(t_B, jnp.float32), (-1,) + (1,) * (ndim - 1))
  return t, 1.0 - (1.0 - s) * t, -(1.0 - s)


def interpolate(path: str, noise: jax.Array, data: jax.Array, t_B: jax.Array,
                sigma_min: float = 0.0) -> jax.Array:
  """x_t = ψ_t(noise | data) = t · data + (1 − (1 − σ_min) t) · noise — eq. (22) of 2210.02747."""
  a, b, _ = _coefs(path, t_B, data.ndim, sigma_min)
  return a * data + b * noise


def target_velocity(path: str, noise: jax.Array, data: jax.Array, t_B: jax.Array,
                    sigma_min: float = 0.0) -> jax.Array:
  """u_t(x_t | data) = data − (1 − σ_min) noise — eq. (23) of 2210.02747 written in the noise
  (for "rf": data − noise, eq. (1) of 2209.03003). Independent of t; t_B fixes the batch."""
  _, _, db = _coefs(path, t_B, data.ndim, sigma_min)
  return data + db * noise


def cfm_per_example(velocity_fn: VelocityFn, path: str, noise: jax.Array, data: jax.Array,
                    t_B: jax.Array, sigma_min: float = 0.0) -> jax.Array:
  """[B] ‖v_θ(x_t, t) − u_t(x_t | data)‖² averaged over each example's dimensions — the CFM
  loss, eq. (9) of 2210.02747 (its minimiser is E[u_t | x_t], the marginal field, Thm. 2)."""
  x_t = interpolate(path, noise, data, t_B, sigma_min)
  pred = velocity_fn(x_t, t_B)
  if pred.shape != x_t.shape:
    raise ValueError(f"velocity_fn returned shape {pred.shape}, expected x_t's shape {x_t.shape}.")
  # Squared error in fp32 even for bf16 models: the loss is a small difference of O(1) terms.
  err = pred.astype(jnp.float32) - target_velocity(path, noise, data, t_B, sigma_min)
  return jnp.mean(jnp.square(err), axis=tuple(range(1, data.ndim)))


def nfe(method: str, num_steps: int) -> int:
  """Network evaluations of one fixed-step run (Euler 1 per step, Heun 2 per step)."""
  check_method(method)
  if method == "rk45":
    raise ValueError("NFE of rk45 is adaptive (see ode.dopri5 stats); use euler or heun.")
  if int(num_steps) < 1:
    raise ValueError(f"NFE < 1: num_steps must be ≥ 1, got {num_steps}.")
  return int(num_steps) * (1 if method == "euler" else 2)


def _field(velocity_fn: VelocityFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """ode.py's f(y, t) with scalar t → velocity_fn(y, t_B)."""
  return lambda x, t: velocity_fn(x, jnp.full(x.shape[:1], t, jnp.float32))


def sample(velocity_fn: VelocityFn, noise: jax.Array, method: str = "euler",
           num_steps: int = 10, rtol: float = 1e-5, atol: float = 1e-5) -> jax.Array:
  """Integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) through genfm.diffusion.ode.

  Traceable (jit around it); num_steps is static. ODE state in fp32: the Euler sum of many small
  increments loses the few-step endpoint in bf16.
  """
  check_method(method)
  if method != "rk45":
    nfe(method, num_steps)   # NFE < 1 check
  return ode.integrate(_field(velocity_fn), noise.astype(jnp.float32), 0.0, 1.0, method=method,
                       num_steps=int(num_steps), rtol=rtol, atol=atol)


def euler_path(velocity_fn: VelocityFn, noise: jax.Array,
               num_steps: int) -> tuple[jax.Array, jax.Array]:
  """Euler trajectory of the learned ODE: (endpoint Z_1, velocities v(Z_{t_k}, t_k) [K, B, ...])."""
  nfe("euler", num_steps)
  h = 1.0 / num_steps

  def step(x, k):
    v = velocity_fn(x, jnp.full(x.shape[:1], k * h, jnp.float32))
    return x + h * v.astype(jnp.float32), v.astype(jnp.float32)

  return jax.lax.scan(step, noise.astype(jnp.float32), jnp.arange(num_steps))


def straightness(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int = 100) -> jax.Array:
  """S(Z) = ∫₀¹ E‖(Z₁ − Z₀) − v(Z_t, t)‖² dt — eq. (2) / Def. 3.4 of 2209.03003, with Z the
  Euler path of the learned ODE from Z₀ = noise (the integral by the same left Riemann sum, so
  Z₁ − Z₀ = mean_k v_k and S = 0 exactly iff every path's velocity is constant)."""
  z1, v_KB = euler_path(velocity_fn, noise, num_steps)
  chord = z1 - noise.astype(jnp.float32)                        # Z₁ − Z₀
  sq = jnp.square(chord[None] - v_KB)
  per_ex = jnp.sum(sq, axis=tuple(range(2, sq.ndim)))          # ‖·‖² over the data dims
  return jnp.mean(per_ex)
