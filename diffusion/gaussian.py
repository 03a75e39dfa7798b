"""Gaussian forward process, prediction-type conversions and training losses.

DDPM, Ho et al. 2020, arXiv:2006.11239: q(x_t | x_0) (eq. 4), posterior (eqs. 6–7),
ε-prediction loss L_simple (eq. 14). v-prediction from progressive distillation,
Salimans & Ho 2022, arXiv:2202.00512 (Sec. 4 and Appendix D).

Notation: α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t) (the 2202.00512 "α, σ"), so that
x_t = α_t x_0 + σ_t ε and α_t² + σ_t² = 1. The three targets are related by
  ε  = (x_t − α_t x_0) / σ_t,
  x_0 = (x_t − σ_t ε) / α_t,
  v  = α_t ε − σ_t x_0,    x_0 = α_t x_t − σ_t v,    ε = σ_t x_t + α_t v.
Every conversion is linear in the prediction for fixed x_t, which is why the three losses
share their minimiser (the posterior mean of the target; see the tests).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genfm.diffusion import schedules

PREDICTION_TYPES = ("eps", "x0", "v")


def check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"Unknown prediction type {prediction_type!r}; valid choices: "
                     f"{', '.join(PREDICTION_TYPES)}.")


def q_sample(sched: schedules.Schedule, x0: jax.Array, t_B: jax.Array,
             noise: jax.Array) -> jax.Array:
  """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε — eq. (4) of 2006.11239. x0, noise: [B, ...]."""
  a = schedules.extract(sched.sqrt_alphas_cumprod, t_B, x0.ndim)
  s = schedules.extract(sched.sqrt_one_minus_alphas_cumprod, t_B, x0.ndim)
  return a * x0 + s * noise


def q_mean_variance(sched: schedules.Schedule, x0: jax.Array,
                    t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean √ᾱ_t x_0 and variance 1 − ᾱ_t of q(x_t | x_0) — eq. (4)."""
  a = schedules.extract(sched.sqrt_alphas_cumprod, t_B, x0.ndim)
  var = schedules.extract(1.0 - sched.alphas_cumprod, t_B, x0.ndim)
  return a * x0, jnp.broadcast_to(var, x0.shape)


def q_posterior(sched: schedules.Schedule, x0: jax.Array, xt: jax.Array,
                t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean μ̃_t(x_t, x_0) and variance β̃_t of q(x_{t−1} | x_t, x_0) — eqs. (6)–(7)."""
  c1 = schedules.extract(sched.posterior_mean_coef1, t_B, xt.ndim)
  c2 = schedules.extract(sched.posterior_mean_coef2, t_B, xt.ndim)
  var = schedules.extract(sched.posterior_variance, t_B, xt.ndim)
  return c1 * x0 + c2 * xt, jnp.broadcast_to(var, xt.shape)


def to_x0(pred: jax.Array, xt: jax.Array, alpha: jax.Array, sigma: jax.Array,
          prediction_type: str) -> jax.Array:
  """x̂_0 from a prediction of type eps / x0 / v (alpha, sigma broadcast against xt)."""
  check_prediction_type(prediction_type)
  if prediction_type == "eps":
    return (xt - sigma * pred) / alpha    # inverse of eq. (4)
  if prediction_type == "v":
    return alpha * xt - sigma * pred      # Appendix D of 2202.00512
  return pred


def to_eps(pred: jax.Array, xt: jax.Array, alpha: jax.Array, sigma: jax.Array,
           prediction_type: str) -> jax.Array:
  """ε̂ from a prediction of type eps / x0 / v."""
  check_prediction_type(prediction_type)
  if prediction_type == "x0":
    return (xt - alpha * pred) / sigma
  if prediction_type == "v":
    return sigma * xt + alpha * pred      # Appendix D of 2202.00512
  return pred


def to_v(pred: jax.Array, xt: jax.Array, alpha: jax.Array, sigma: jax.Array,
         prediction_type: str) -> jax.Array:
  """v̂ = α ε̂ − σ x̂_0 (Sec. 4 of 2202.00512) from a prediction of type eps / x0 / v."""
  check_prediction_type(prediction_type)
  if prediction_type == "v":
    return pred
  if prediction_type == "eps":
    return (pred - sigma * xt) / alpha    # solves ε = σ x_t + α v for v
  return (alpha * xt - pred) / sigma      # solves x_0 = α x_t − σ v for v


def convert(pred: jax.Array, xt: jax.Array, alpha: jax.Array, sigma: jax.Array,
            from_type: str, to_type: str) -> jax.Array:
  """Converts a prediction between "eps", "x0" and "v"."""
  check_prediction_type(to_type)
  fn = {"eps": to_eps, "x0": to_x0, "v": to_v}[to_type]
  return fn(pred, xt, alpha, sigma, from_type)


def target(x0: jax.Array, noise: jax.Array, alpha: jax.Array, sigma: jax.Array,
           prediction_type: str) -> jax.Array:
  """Regression target for each prediction type."""
  check_prediction_type(prediction_type)
  if prediction_type == "eps":
    return noise
  if prediction_type == "v":
    return alpha * noise - sigma * x0     # v ≡ α ε − σ x_0 — Sec. 4 of 2202.00512
  return x0


def diffusion_loss(model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   sched: schedules.Schedule, x0: jax.Array, key: jax.Array,
                   prediction_type: str = "eps") -> jax.Array:
  """Monte-Carlo training loss E_{t, ε} ‖target − model(x_t, t)‖², mean over all axes.

  With prediction_type="eps" this is L_simple, eq. (14) of 2006.11239 (t uniform on 1..T).
  model_fn maps (x_t [B, ...], t [B] int32 code indices) to a prediction shaped like x_t.
  """
  check_prediction_type(prediction_type)
  t_key, n_key = jax.random.split(key)
  t_B = jax.random.randint(t_key, (x0.shape[0],), 0, sched.num_timesteps)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  return diffusion_loss_at(model_fn, sched, x0, t_B, noise, prediction_type)


def diffusion_loss_at(model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                      sched: schedules.Schedule, x0: jax.Array, t_B: jax.Array,
                      noise: jax.Array, prediction_type: str = "eps") -> jax.Array:
  """The loss for given timesteps t_B [B] and noise [B, ...] (deterministic; for tests)."""
  return jnp.mean(per_example_loss(model_fn, sched, x0, t_B, noise, prediction_type))


def per_example_loss(model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                     sched: schedules.Schedule, x0: jax.Array, t_B: jax.Array,
                     noise: jax.Array, prediction_type: str = "eps") -> jax.Array:
  """[B] squared error ‖target − model(x_t, t)‖² averaged over each example's dimensions, at
  given t_B and noise: what the training loop and held-out evals average (with masks)."""
  check_prediction_type(prediction_type)
  alpha = schedules.extract(sched.sqrt_alphas_cumprod, t_B, x0.ndim)
  sigma = schedules.extract(sched.sqrt_one_minus_alphas_cumprod, t_B, x0.ndim)
  xt = alpha * x0 + sigma * noise         # eq. (4)
  pred = model_fn(xt, t_B)
  if pred.shape != xt.shape:
    raise ValueError(f"model_fn returned shape {pred.shape}, expected x_t's shape {xt.shape}.")
  # Squared error in fp32 even for bf16 models: the loss is a small difference of O(1) terms.
  err = pred.astype(jnp.float32) - target(x0, noise, alpha, sigma, prediction_type)
  return jnp.mean(jnp.square(err), axis=tuple(range(1, x0.ndim)))   # eq. (14), L_simple
