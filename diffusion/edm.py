"""EDM: the design space of diffusion models, Karras et al. 2022, arXiv:2206.00364.

Convention (shared with `consistency.py`): noise level σ ∈ [σ_min, σ_max], data at σ → 0,
    x_σ = data + σ · noise,   noise ~ N(0, I)
(the variance-exploding form of Sec. 2 with s(t) = 1, σ(t) = t). A *denoiser* D(x [B, ...],
σ [B]) → [B, ...] estimates the data; the probability-flow ODE is then
    dx/dσ = (x − D(x, σ)) / σ                                          — eq. (3) of 2206.00364.

Pieces:
  precondition      c_skip, c_out, c_in, c_noise of Table 1 (EDM column), and `preconditioned`
                    D = c_skip x + c_out F(c_in x, c_noise) — eq. (7)
  karras_sigmas     the σ grid with ρ = 7, eq. (5), ending with σ_N = 0
  heun_sample       Algorithm 1 (deterministic, 2N − 1 evaluations), with Algorithm 2's churn
                    as an option; `euler_sample` is its first-order half (the DDIM step)
  loss_weight, lognormal_sigmas, edm_per_example    the training objective of Table 1 / eq. (8)
  ddpm_denoiser     our discrete DDPM ε-network (`unet.py`, `schedules.py`) as an EDM denoiser
                    (the VP column of Table 1 with the discrete ᾱ table, App. C.1):
                    ᾱ = 1 / (1 + σ²), the network sees x_vp = x / √(1 + σ²) = √ᾱ · x at the
                    fractional timestep index t(σ), and D = x − σ · ε̂.
Why this wrapper is exact for DDIM: with x̃ = x_vp / √ᾱ and σ_t = √((1 − ᾱ_t)/ᾱ_t), DDIM's η = 0
step (eq. 12 of 2010.02502) reads x̃_prev = x̃ + (σ_prev − σ_t) ε̂, which is Euler on the ODE
above. So `euler_sample` on the σ's of DDIM's timesteps reproduces DDIM, and Heun at many steps
converges to the same ODE solution (tests/diffusion/test_diffusion_edm.py).

Numerics: σ's are built in float64 NumPy and handed over as float32 (ρ-th powers of 0.002
lose digits in float32); σ(t) of the DDPM table comes from log ᾱ (1 − ᾱ is −expm1(log ᾱ)),
exact where ᾱ ≈ 1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genfm.diffusion import gaussian
from genfm.diffusion import schedules

SIGMA_DATA = 0.5
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]     # D(x [B, ...], σ [B]) → [B, ...]


def _bcast(v_B: jax.Array, x: jax.Array) -> jax.Array:
  """[B] → [B, 1, ..., 1] to broadcast against x [B, ...]."""
  v_B = jnp.asarray(v_B, x.dtype)
  return v_B.reshape(v_B.shape + (1,) * (x.ndim - v_B.ndim))


def precondition(sigma, sigma_data: float = SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) at σ — Table 1 of 2206.00364, "ours" column.

  c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ.
  At σ → 0: c_skip → 1, c_out → 0, so D(x, σ) → x whatever the network says.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  var = sigma ** 2 + sigma_data ** 2
  c_skip = sigma_data ** 2 / var
  c_out = sigma * sigma_data * jax.lax.rsqrt(var)
  c_in = jax.lax.rsqrt(var)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def preconditioned(raw_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   sigma_data: float = SIGMA_DATA) -> Denoiser:
  """D(x, σ) = c_skip x + c_out F(c_in x, c_noise) — eq. (7) of 2206.00364, from the raw
  network raw_fn(x_in [B, ...], c_noise [B]) → F [B, ...]."""

  def denoiser(x, sigma_B):
    c_skip, c_out, c_in, c_noise = precondition(sigma_B, sigma_data)
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * raw_fn(_bcast(c_in, x) * x, c_noise)

  return denoiser


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> jax.Array:
  """[n + 1] decreasing σ's: σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for
  i < n, and σ_n = 0 — eq. (5) of 2206.00364. n = 1 gives [σ_max, 0] (one Euler step)."""
  if int(n) != n or n < 1:
    raise ValueError(f"the Karras grid needs n ≥ 1 noise levels (NFE ≥ 1), got {n!r}.")
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
  if n == 1:
    return jnp.asarray([sigma_max, 0.0], jnp.float32)
  i = np.arange(n, dtype=np.float64)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  sig = (hi + i / (n - 1) * (lo - hi)) ** rho
  sig[0], sig[-1] = sigma_max, sigma_min           # exact endpoints, not (x^{1/ρ})^ρ
  return jnp.asarray(np.append(sig, 0.0), jnp.float32)


def _denoise(denoiser: Denoiser, x: jax.Array, sigma) -> jax.Array:
  out = denoiser(x, jnp.full((x.shape[0],), sigma, jnp.float32))
  if out.shape != x.shape:
    raise ValueError(f"the denoiser returned shape {out.shape}, expected x's shape {x.shape}.")
  return out


def ode_step(denoiser: Denoiser, x: jax.Array, sigma, sigma_next, method: str = "heun"):
  """One step of the PF-ODE dx/dσ = (x − D)/σ from σ to σ_next ([B] or scalars), Euler or
  Heun (Alg. 1 lines 4–8 of 2206.00364; Heun needs σ_next > 0)."""
  sigma, sigma_next = jnp.broadcast_to(sigma, x.shape[:1]), jnp.broadcast_to(sigma_next,
                                                                             x.shape[:1])
  d = (x - denoiser(x, sigma)) / _bcast(sigma, x)                              # eq. (3)
  x_next = x + _bcast(sigma_next - sigma, x) * d
  if method == "euler":
    return x_next
  if method != "heun":
    raise ValueError(f"Unknown ODE step {method!r}; valid choices: euler, heun.")
  d_next = (x_next - denoiser(x_next, sigma_next)) / _bcast(sigma_next, x)
  return x + _bcast(sigma_next - sigma, x) * (0.5 * d + 0.5 * d_next)          # Alg. 1 line 8


def euler_sample(denoiser: Denoiser, x_T: jax.Array, sigmas: jax.Array) -> jax.Array:
  """Euler along the decreasing grid `sigmas` (last may be 0): n − 1 evaluations."""
  sigmas = jnp.asarray(sigmas, jnp.float32)

  def step(x, pair):
    s, s_next = pair
    return x + (s_next - s) * (x - _denoise(denoiser, x, s)) / s, None

  x, _ = jax.lax.scan(step, x_T, (sigmas[:-1], sigmas[1:]))
  return x


def heun_sample(denoiser: Denoiser, x_T: jax.Array, sigmas: jax.Array, *,
                churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0, key: jax.Array | None = None) -> jax.Array:
  """Algorithm 1 of 2206.00364 (deterministic; `churn` = S_churn > 0 gives Algorithm 2).

  `sigmas` decreasing and ending with 0 (`karras_sigmas`); x_T = σ_0 · noise. Every step but
  the last is Heun (2 evaluations); the step to σ = 0 is Euler (Alg. 1 line 7): 2N − 1 in all.
  Churn: γ_i = min(S_churn/N, √2 − 1) for σ_i ∈ [S_tmin, S_tmax], σ̂ = σ_i (1 + γ_i), and
  x̂ = x + √(σ̂² − σ_i²) S_noise z before the step (Alg. 2 lines 4–6).
  """
  sigmas = jnp.asarray(sigmas, jnp.float32)
  n = sigmas.shape[0] - 1
  if churn > 0 and key is None:
    raise ValueError("heun_sample with churn > 0 needs a PRNG key.")
  keys = jax.random.split(key if key is not None else jax.random.key(0), max(n, 1))
  gamma_max = min(churn / max(n, 1), np.sqrt(2.0) - 1.0)

  def step(x, inp):
    s, s_next, k = inp
    if churn > 0:
      gamma = jnp.where((s >= s_tmin) & (s <= s_tmax), gamma_max, 0.0)
      s_hat = s * (1.0 + gamma)
      x = x + jnp.sqrt(s_hat ** 2 - s ** 2) * s_noise * jax.random.normal(k, x.shape, x.dtype)
      s = s_hat
    d = (x - _denoise(denoiser, x, s)) / s
    x_next = x + (s_next - s) * d
    # Heun's correction unless σ_{i+1} = 0 (Alg. 1 line 7); σ_next of 0 is guarded out of the
    # division, and the result discarded by the where.
    safe = jnp.where(s_next > 0, s_next, 1.0)
    d2 = (x_next - _denoise(denoiser, x_next, safe)) / safe
    return jnp.where(s_next > 0, x + (s_next - s) * 0.5 * (d + d2), x_next), None

  # The last step (to σ = 0) is Euler only: run it outside the scan, saving one evaluation.
  x, _ = jax.lax.scan(step, x_T, (sigmas[:-2], sigmas[1:-1], keys[:-1]))
  last = lambda x, s: x + (sigmas[-1] - s) * (x - _denoise(denoiser, x, s)) / s
  if churn > 0:
    s = sigmas[-2]
    gamma = jnp.where((s >= s_tmin) & (s <= s_tmax), gamma_max, 0.0)
    s_hat = s * (1.0 + gamma)
    x = x + jnp.sqrt(s_hat ** 2 - s ** 2) * s_noise * jax.random.normal(keys[-1], x.shape)
    return last(x, s_hat)
  return last(x, sigmas[-2])


def heun_nfe(num_sigmas: int) -> int:
  """Network evaluations of `heun_sample` on a grid of n noise levels (+ the final 0): 2n − 1."""
  return 2 * num_sigmas - 1


# --- training objective ---------------------------------------------------------------------


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
  """λ(σ) = (σ² + σ_d²)/(σ σ_d)² — Table 1 of 2206.00364 (makes the effective weight of F's
  loss λ c_out² = 1 at every σ)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def lognormal_sigmas(key: jax.Array, shape, p_mean: float = -1.2, p_std: float = 1.2):
  """ln σ ~ N(P_mean, P_std²) — Table 1 of 2206.00364 (P_mean = −1.2, P_std = 1.2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, jnp.float32))


def edm_per_example(denoiser: Denoiser, data: jax.Array, sigma_B: jax.Array,
                    noise: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """[B] λ(σ) ‖D(data + σ n, σ) − data‖², averaged over the non-batch dims — eq. (8)."""
  x = data + _bcast(sigma_B, data) * noise
  err = jnp.square(denoiser(x, sigma_B) - data)
  return loss_weight(sigma_B, sigma_data) * jnp.mean(err.reshape(err.shape[0], -1), axis=1)


# --- a discrete DDPM ε-network as an EDM denoiser ---------------------------------------------


def vp_sigmas(sched: schedules.Schedule) -> jax.Array:
  """[T] σ_t = √((1 − ᾱ_t)/ᾱ_t) of the discrete schedule, increasing in t (App. C.1)."""
  return jnp.sqrt(jnp.expm1(-sched.log_alphas_cumprod))


def sigma_to_t(sigma, sched: schedules.Schedule) -> jax.Array:
  """The fractional code index t(σ) ∈ [0, T − 1]: linear interpolation of the index in ln σ
  over the table (exact at the table's σ's), clamped outside [σ_1, σ_T] (σ = 0 → 0)."""
  log_table = jnp.log(vp_sigmas(sched))
  idx = jnp.arange(sched.num_timesteps, dtype=jnp.float32)
  return jnp.interp(jnp.log(jnp.asarray(sigma, jnp.float32)), log_table, idx)


def ddpm_denoiser(model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                  sched: schedules.Schedule, prediction_type: str = "eps") -> Denoiser:
  """D(x, σ) from a DDPM network model_fn(x_vp [B, ...], t [B] float code index) → prediction.

  ᾱ(σ) = 1/(1 + σ²), x_vp = √ᾱ x, ε̂ from the prediction (ε, x₀ or v, `gaussian.to_eps`),
  D = x − σ ε̂ (Table 1 of 2206.00364, VP column: c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1),
  c_noise = t(σ), the DDPM timestep of that noise level).
  """
  gaussian.check_prediction_type(prediction_type)

  def denoiser(x, sigma_B):
    sigma_B = jnp.asarray(sigma_B, jnp.float32)
    a_B = jax.lax.rsqrt(1.0 + sigma_B ** 2)              # √ᾱ
    x_vp = _bcast(a_B, x) * x
    pred = model_fn(x_vp, sigma_to_t(sigma_B, sched))
    eps = gaussian.to_eps(pred, x_vp, _bcast(a_B, x), _bcast(sigma_B * a_B, x), prediction_type)
    return x - _bcast(sigma_B, x) * eps

  return denoiser
