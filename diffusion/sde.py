"""Score-based SDEs: VP, sub-VP and VE, with marginals and denoising score matching.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", arXiv:2011.13456. Time is continuous, t ∈ [0, 1]. Each SDE is
  dx = f(x, t) dt + g(t) dw                                   (eq. 5)
with a Gaussian perturbation kernel p_0t(x_t | x_0) = N(m(t) x_0, s(t)² I), so
∇ log p_0t(x_t | x_0) = −(x_t − m x_0) / s². The reverse-time SDE (eq. 6) and the
probability-flow ODE (eq. 13) only need f, g and a score; see sde_samplers.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SDE_NAMES = ("vp", "subvp", "ve")


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes a per-example [B] (or scalar) time-dependent value to broadcast against x."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


@dataclasses.dataclass(frozen=True)
class VPSDE:
  """Variance preserving SDE: dx = −½β(t) x dt + √β(t) dw — eq. (11) of 2011.13456.

  β(t) = β_min + t (β_max − β_min), the continuous limit of DDPM's linear schedule with
  N steps (β_i = β(i/N)/N, discretised in `discrete_betas`).
  """
  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000
  T: float = 1.0

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: jax.Array) -> jax.Array:
    # log m(t) = −½ ∫_0^t β(s) ds = −¼ t² (β_max − β_min) − ½ t β_min — Appendix B
    return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def mean_coeff(self, t: jax.Array) -> jax.Array:
    return jnp.exp(self.log_mean_coeff(t))

  def marginal_std(self, t: jax.Array) -> jax.Array:
    # s(t)² = 1 − e^{−∫_0^t β} — Appendix B. expm1 keeps precision for small t.
    return jnp.sqrt(-jnp.expm1(2.0 * self.log_mean_coeff(t)))

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Drift f(x, t) (shape of x) and diffusion g(t) (broadcastable to x)."""
    beta = _bcast(self.beta(t), x)
    return -0.5 * beta * x, jnp.sqrt(beta)

  @property
  def discrete_betas(self) -> np.ndarray:
    """β_i = β_min/N + i/(N−1) (β_max − β_min)/N — DDPM's linear betas for N=1000 (Sec. 3.4)."""
    return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  def prior_std(self) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """sub-VP SDE: dx = −½β x dt + √(β(t)(1 − e^{−2∫_0^t β})) dw — eq. (17) of 2011.13456.

  Same mean as VP; the variance 1 − e^{−∫β} is bounded by the VP one at every t.
  """

  def marginal_std(self, t: jax.Array) -> jax.Array:
    # s(t) = 1 − e^{−∫_0^t β(s) ds} (std, not variance) — Appendix B.
    return -jnp.expm1(2.0 * self.log_mean_coeff(t))

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    beta = _bcast(self.beta(t), x)
    discount = -jnp.expm1(_bcast(4.0 * self.log_mean_coeff(t), x))  # 1 − e^{−2∫β}
    return -0.5 * beta * x, jnp.sqrt(beta * discount)


@dataclasses.dataclass(frozen=True)
class VESDE:
  """Variance exploding SDE: dx = σ(t) √(2 log(σ_max/σ_min)) dw, σ(t) = σ_min (σ_max/σ_min)^t.

  Eq. (9) of 2011.13456 with σ(t) as in its Appendix C. The perturbation kernel is
  N(x_0, (σ(t)² − σ(0)²) I) (Appendix B). Note: the score_sde code uses std σ(t) instead,
  i.e. it treats the data as already carrying σ_min noise; the difference is σ_min² = 1e-4
  in variance. We keep the paper's exact kernel so that the moments test holds exactly.
  """
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = 1000
  T: float = 1.0

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def mean_coeff(self, t: jax.Array) -> jax.Array:
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def marginal_std(self, t: jax.Array) -> jax.Array:
    log_ratio = np.log(self.sigma_max / self.sigma_min)
    # σ(t)² − σ_min² = σ_min² (e^{2 t log(σmax/σmin)} − 1), expm1 for small t — Appendix B
    return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t * log_ratio))

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    g = self.sigma(t) * np.sqrt(2.0 * np.log(self.sigma_max / self.sigma_min))
    return jnp.zeros_like(x), _bcast(g, x)

  @property
  def discrete_sigmas(self) -> np.ndarray:
    """The SMLD noise levels σ_i, geometric from σ_min to σ_max (Sec. 3.4)."""
    return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

  def prior_std(self) -> float:
    return self.sigma_max


SDE = VPSDE | SubVPSDE | VESDE


def make_sde(name: str, **kwargs) -> SDE:
  """"vp" (beta_min, beta_max), "subvp" (same) or "ve" (sigma_min, sigma_max)."""
  if name == "vp":
    return VPSDE(**kwargs)
  if name == "subvp":
    return SubVPSDE(**kwargs)
  if name == "ve":
    return VESDE(**kwargs)
  raise ValueError(f"Unknown SDE {name!r}; valid choices: {', '.join(SDE_NAMES)}.")


def marginal_prob(sde: SDE, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean m(t) x_0 and std s(t) (broadcast to x0) of p_0t(x_t | x_0); t is [B] or scalar."""
  mean = _bcast(sde.mean_coeff(t), x0) * x0
  return mean, jnp.broadcast_to(_bcast(sde.marginal_std(t), x0), x0.shape)


def prior_sample(sde: SDE, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x_T ~ N(0, prior_std² I): N(0, I) for (sub-)VP, N(0, σ_max² I) for VE."""
  return sde.prior_std() * jax.random.normal(key, shape)


def prior_logp(sde: SDE, z: jax.Array) -> jax.Array:
  """log N(z; 0, prior_std² I) summed over all but the batch axis, [B]."""
  s = sde.prior_std()
  d = np.prod(z.shape[1:])
  sq = jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)
  return -0.5 * d * np.log(2 * np.pi * s ** 2) - 0.5 * sq / s ** 2


def dsm_loss(score_fn: Callable[[jax.Array, jax.Array], jax.Array], sde: SDE,
             x0: jax.Array, key: jax.Array, eps: float = 1e-5,
             likelihood_weighting: bool = False) -> jax.Array:
  """Denoising score matching, eq. (7) of 2011.13456, t ~ U(eps, T).

  With λ(t) = s(t)² (default) the per-example loss is ‖s(t) s_θ(x_t, t) + z‖² summed over
  dimensions (x_t = m x_0 + s z), which keeps every t on the same O(1) scale. With
  likelihood_weighting=True, λ(t) = g(t)² (the ELBO weighting of Song et al. 2021b,
  arXiv:2101.09258), i.e. ‖s_θ + z/s‖² g². Returns the batch mean.
  """
  t_key, z_key = jax.random.split(key)
  t_B = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=sde.T)
  z = jax.random.normal(z_key, x0.shape, x0.dtype)
  return dsm_loss_at(score_fn, sde, x0, t_B, z, likelihood_weighting)


def dsm_loss_at(score_fn: Callable[[jax.Array, jax.Array], jax.Array], sde: SDE,
                x0: jax.Array, t_B: jax.Array, z: jax.Array,
                likelihood_weighting: bool = False) -> jax.Array:
  """dsm_loss at given times t_B [B] and noise z [B, ...] (deterministic; for tests)."""
  return jnp.mean(dsm_per_example(score_fn, sde, x0, t_B, z, likelihood_weighting))


def dsm_per_example(score_fn: Callable[[jax.Array, jax.Array], jax.Array], sde: SDE,
                    x0: jax.Array, t_B: jax.Array, z: jax.Array,
                    likelihood_weighting: bool = False) -> jax.Array:
  """[B] λ(t) ‖s_θ(x_t, t) − ∇log p_0t(x_t | x_0)‖² summed over each example's dimensions."""
  mean, std = marginal_prob(sde, x0, t_B)
  xt = mean + std * z
  score = score_fn(xt, t_B).astype(jnp.float32)
  if score.shape != xt.shape:
    raise ValueError(f"score_fn returned shape {score.shape}, expected {xt.shape}.")
  if likelihood_weighting:
    _, g = sde.sde(xt, t_B)
    per_dim = jnp.square(score + z / std) * jnp.square(g)
  else:
    per_dim = jnp.square(score * std + z)   # ∇log p_0t(x_t|x_0) = −z/s; eq. (7) of 2011.13456
  return jnp.sum(per_dim.reshape(x0.shape[0], -1), axis=-1)
