"""Continuous normalising flows: the instantaneous change of variables and FFJORD's trace estimate.

Chen et al. 2018, arXiv:1806.07366, Theorem 1: if dz/dt = f(z(t), t), then
    d log p(z(t)) / dt = −tr(∂f/∂z(t)).
Grathwohl et al. 2018, FFJORD, arXiv:1810.01367: the trace is estimated without the Jacobian by
Hutchinson's estimator, tr(A) = E_ε[εᵀ A ε] for E[ε] = 0, Cov(ε) = I, with ε (Gaussian or
Rademacher) drawn once per solve and held fixed over it (eq. (7)); one vector–Jacobian (here
Jacobian–vector) product per evaluation instead of D. For low D the exact trace (D JVPs) is an
option, and what evaluation uses.

Time convention (used throughout): data at t = 0, base N(0, I) at t = T. The state integrated
is [z(t), Δ(t)] with Δ(t) = log p(z(t)) − log p(z(0)), so dΔ/dt = −tr(∂f/∂z) and
    log p_x(x) = log N(z(T); 0, I) − Δ(T),        z(0) = x        (Sec. 2 of 1810.01367).
`log_prob` integrates 0 → T; `sample` integrates z from T back to 0. Both go through
`neural_ode.odeint_adjoint`, so the training gradient of log p is the adjoint's (O(1) memory).
The per-example divergences come from `genfm.diffusion.likelihood` (the same estimators as the
probability-flow ODE likelihood), which assume the field treats examples independently.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genfm.diffusion import likelihood
from genfm.foundations import neural_ode

ESTIMATORS = ("exact", "rademacher", "gaussian")


def standard_normal_logp(z_BD: jax.Array) -> jax.Array:
  """log N(z; 0, I) per row, [B]."""
  d = z_BD.shape[-1]
  return -0.5 * jnp.sum(jnp.square(z_BD), axis=-1) - 0.5 * d * np.log(2 * np.pi)


def divergence(field: neural_ode.Field, z_BD: jax.Array, t: jax.Array, params: Any,
               estimator: str, eps_BD: jax.Array | None = None) -> jax.Array:
  """tr(∂f/∂z) per row [B]: exact (D JVPs) or Hutchinson εᵀ(∂f/∂z)ε with the given probes."""
  fn = lambda z: field(z, t, params)
  if estimator == "exact":
    return likelihood.exact_divergence(fn, z_BD)
  return likelihood.hutchinson_divergence(fn, z_BD, eps_BD)      # eq. (7) of 1810.01367


def draw_probes(key: jax.Array, shape: tuple[int, ...], estimator: str,
                out_sharding=None) -> jax.Array:
  """Hutchinson probes ε [B, D] with E[ε] = 0, Cov(ε) = I: Rademacher (±1) or standard Gaussian.
  With A_s = (A + Aᵀ)/2, Var[εᵀAε] is 2(‖A_s‖_F² − Σ_i A_ii²) for Rademacher and 2‖A_s‖_F² for
  Gaussian probes, so Rademacher is never worse. `out_sharding` lays them out like the batch."""
  if estimator == "rademacher":
    return jax.random.rademacher(key, shape, jnp.float32, out_sharding=out_sharding)
  if estimator == "gaussian":
    return jax.random.normal(key, shape, jnp.float32, out_sharding=out_sharding)
  raise ValueError(f"Unknown probe {estimator!r}; valid choices: rademacher, gaussian.")


def _probes(estimator: str, key, probes, x_BD: jax.Array):
  if estimator not in ESTIMATORS:
    raise ValueError(f"Unknown trace estimator {estimator!r}; valid choices: "
                     f"{', '.join(ESTIMATORS)}.")
  if estimator == "exact":
    return None
  if probes is not None:
    if probes.shape != x_BD.shape:
      raise ValueError(f"probes have shape {probes.shape}, expected x's shape {x_BD.shape}.")
    return probes.astype(x_BD.dtype)
  if key is None:
    raise ValueError(f"estimator={estimator!r} needs a PRNG key (the probe ε, fixed per solve).")
  return draw_probes(key, x_BD.shape, estimator).astype(x_BD.dtype)


def augmented_field(field: neural_ode.Field, estimator: str = "exact",
                    eps_BD: jax.Array | None = None) -> neural_ode.Field:
  """d/dt [z, Δ] = [f(z, t), −tr(∂f/∂z)] (exact, or Hutchinson with the fixed probes eps_BD)."""
  def aug(state, t, p):
    z_BD, _ = state
    dz_BD = field(z_BD, t, p)
    return dz_BD, -divergence(field, z_BD, t, p, estimator, eps_BD)   # Theorem 1 of 1806.07366
  return aug


def log_prob(field: neural_ode.Field, params: Any, x_BD: jax.Array, *, T: float = 1.0,
             estimator: str = "exact", key: jax.Array | None = None,
             probes: jax.Array | None = None, rtol: float = 1e-5,
             atol: float = 1e-5) -> tuple[jax.Array, jax.Array, dict]:
  """log p(x) [B] in nats under the flow x = z(0) ← z(T) ~ N(0, I); returns (logp, z(T), stats).

  field(z [B, D], t, params) → dz/dt [B, D]. estimator "exact" or "rademacher" / "gaussian"
  (Hutchinson, one probe per row drawn from `key`, or the given `probes` [B, D], fixed over the
  solve). Differentiable in params and x by the adjoint method.
  """
  if x_BD.ndim != 2:
    raise ValueError(f"log_prob expects points [B, D], got shape {x_BD.shape}.")
  eps_BD = _probes(estimator, key, probes, x_BD)
  state0 = (x_BD, jnp.zeros(x_BD.shape[:1], x_BD.dtype))
  (z_BD, delta_B), stats = neural_ode.odeint_adjoint(
      augmented_field(field, estimator, eps_BD), state0, 0.0, T, params, rtol=rtol, atol=atol)
  return standard_normal_logp(z_BD) - delta_B, z_BD, stats      # log p(x) = log N(z(T)) − Δ(T)


def sample(field: neural_ode.Field, params: Any, z_BD: jax.Array, *, T: float = 1.0,
           rtol: float = 1e-5, atol: float = 1e-5) -> tuple[jax.Array, dict]:
  """x = z(0) from base points z(T) = z_BD (draw them from N(0, I)); returns (x [B, D], stats)."""
  if z_BD.ndim != 2:
    raise ValueError(f"sample expects base points [B, D], got shape {z_BD.shape}.")
  return neural_ode.odeint_adjoint(field, z_BD, T, 0.0, params, rtol=rtol, atol=atol)
