"""Discrete noise schedules for Gaussian diffusion.

DDPM, Ho et al. 2020, arXiv:2006.11239 (linear β, posterior q(x_{t-1}|x_t,x_0), eqs. 6–7);
improved DDPM, Nichol & Dhariwal 2021, arXiv:2102.09672 (cosine schedule, eq. 17).

Indexing convention (used by every module in genfm.diffusion): the paper's timesteps are
t = 1, …, T and the arrays here are indexed by i = t − 1 ∈ {0, …, T−1}. So `betas[0]` is β_1,
`alphas_cumprod[T-1]` is ᾱ_T and `alphas_cumprod[499]` is ᾱ_500. With the linear schedule
this gives ᾱ_T = 4.036e-5 and ᾱ_500 = 0.07859; with the cosine schedule ᾱ_500 = 0.49384
(the values pinned in shared/ANCHORS.md; the 0-based reading, ᾱ at index 500 = 0.07780,
would not round to them, which is how they fix the convention).
`alphas_cumprod_prev[i]` is ᾱ_{t−1}, with ᾱ_0 = 1.

All tables are computed in float64 NumPy and stored as float32 jnp arrays: cumulative
products over 1000 factors lose ~1e-4 relative precision in float32, which the pinned
values would see. Samplers that need 1 − ᾱ_t or 1 − ᾱ_t/ᾱ_s for arbitrary pairs use the
log ᾱ table: near t = 1, 1 − ᾱ ≈ 1e-4 and a float32 ᾱ leaves only ~3 correct digits of it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """β_1..β_T linearly spaced (Sec. 4 of 2006.11239), float64, shape [T]."""
  _check_timesteps(num_timesteps)
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(t: np.ndarray, num_timesteps: int, s: float = 0.008) -> np.ndarray:
  """ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2) — eq. (17) of 2102.09672."""
  f = lambda u: np.cos((u / num_timesteps + s) / (1.0 + s) * np.pi / 2) ** 2
  return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped at 0.999 (Sec. 3.2 of 2102.09672), float64, [T]."""
  _check_timesteps(num_timesteps)
  abar = cosine_alphas_cumprod(np.arange(num_timesteps + 1), num_timesteps, s)  # ᾱ_0..ᾱ_T
  # Clipping prevents β_T = 1 (ᾱ_T = 0), which would make the last step singular.
  return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)


def _check_timesteps(num_timesteps: int) -> None:
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """All per-timestep quantities of a discrete diffusion, each a float32 array of shape [T].

  Index i corresponds to paper timestep t = i + 1 (see the module docstring).
  """
  betas: jax.Array                      # β_t
  alphas: jax.Array                     # α_t = 1 − β_t
  alphas_cumprod: jax.Array             # ᾱ_t = ∏_{s≤t} α_s  — Sec. 2 of 2006.11239
  alphas_cumprod_prev: jax.Array        # ᾱ_{t−1}, ᾱ_0 = 1
  log_alphas_cumprod: jax.Array         # log ᾱ_t: keeps 1 − ᾱ_t/ᾱ_s = −expm1(Δ log ᾱ) exact in fp32
  sqrt_alphas_cumprod: jax.Array        # √ᾱ_t
  sqrt_one_minus_alphas_cumprod: jax.Array  # √(1 − ᾱ_t)
  posterior_variance: jax.Array         # β̃_t — eq. (7) of 2006.11239
  posterior_log_variance_clipped: jax.Array  # log β̃_t with β̃_1 (= 0) replaced by β̃_2
  posterior_mean_coef1: jax.Array       # coefficient of x_0 in μ̃_t — eq. (7)
  posterior_mean_coef2: jax.Array       # coefficient of x_t in μ̃_t — eq. (7)

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """Builds every table from β_1..β_T (float64 math, float32 storage)."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
    raise ValueError(f"betas must be a 1-D array in (0, 1), got shape {betas.shape} "
                     f"and range [{betas.min()}, {betas.max()}].")
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)                       # ᾱ_t = ∏_{s=1}^t α_s
  abar_prev = np.concatenate([[1.0], abar[:-1]])  # ᾱ_{t−1}, ᾱ_0 = 1
  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  — eq. (7) of 2006.11239
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # β̃_1 = 0; log-variance tables copy β̃_2 there (as in the DDPM code) to stay finite.
  post_log_var = np.log(np.concatenate([post_var[1:2], post_var[1:]]))
  # μ̃_t(x_t, x_0) = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t — eq. (7)
  coef1 = np.sqrt(abar_prev) * betas / (1.0 - abar)
  coef2 = np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(abar),
      alphas_cumprod_prev=f32(abar_prev), log_alphas_cumprod=f32(np.cumsum(np.log1p(-betas))),
      sqrt_alphas_cumprod=f32(np.sqrt(abar)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
      posterior_variance=f32(post_var), posterior_log_variance_clipped=f32(post_log_var),
      posterior_mean_coef1=f32(coef1), posterior_mean_coef2=f32(coef2))


def make_schedule(name: str = "linear", num_timesteps: int = 1000, **kwargs) -> Schedule:
  """Named schedule: "linear" (beta_start, beta_end) or "cosine" (s, max_beta)."""
  if name == "linear":
    return schedule_from_betas(linear_betas(num_timesteps, **kwargs))
  if name == "cosine":
    return schedule_from_betas(cosine_betas(num_timesteps, **kwargs))
  raise ValueError(f"Unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}.")


def extract(table: jax.Array, t_B: jax.Array, ndim: int) -> jax.Array:
  """table[t] for integer indices t_B [B], reshaped to [B, 1, …, 1] (rank `ndim`).

  Under an `Explicit` mesh (the launcher's) indices sharded along the batch give values sharded
  the same way: the gather needs its output sharding named, and the table is replicated first.
  """
  s = jax.typeof(t_B).sharding
  if isinstance(s, NamedSharding) and s.mesh.axis_names and not s.mesh.empty:
    table = jax.sharding.reshard(jnp.asarray(table), NamedSharding(s.mesh, P()))
    vals_B = table.at[t_B].get(out_sharding=s)
  else:
    vals_B = jnp.take(table, t_B)
  return vals_B.reshape(vals_B.shape + (1,) * (ndim - vals_B.ndim))
