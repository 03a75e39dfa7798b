"""Exact log-likelihood through the probability-flow ODE.

Song et al. 2021, arXiv:2011.13456, Sec. 4.3 and Appendix D.2: with
dx/dt = f̃(x, t) = f − ½ g² ∇log p_t (eq. 13), the instantaneous change of variables
(Chen et al. 2018, arXiv:1806.07366) gives
  log p_0(x(0)) = log p_T(x(T)) + ∫_0^T ∇·f̃(x(t), t) dt.
The divergence is exact (D Jacobian-vector products, for low dimensions) or the
Skilling–Hutchinson estimate E_v[vᵀ (∂f̃/∂x) v] with Rademacher or Gaussian v, fixed over
the solve (Grathwohl et al. 2019, FFJORD, arXiv:1810.01367). The augmented ODE [x, ∫∇·f̃] is
integrated from eps to T with our Dormand–Prince RK45 (ode.py), as the paper does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genfm.diffusion import ode
from genfm.diffusion import sde as sde_lib
from genfm.diffusion import sde_samplers

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
ESTIMATORS = ("exact", "rademacher", "gaussian")


def exact_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """∇·fn at x [B, ...] per example, [B], from D Jacobian-vector products (one per basis e_d).

  The basis vector is shared by the batch, so this assumes fn treats examples independently
  (true for score models without batch statistics).
  """
  B, D = x.shape[0], int(np.prod(x.shape[1:]))
  basis_DD = jnp.eye(D, dtype=x.dtype)

  def diag_entry(e_D):
    v = jnp.broadcast_to(e_D.reshape(x.shape[1:]), x.shape)
    _, jv = jax.jvp(fn, (x,), (v,))
    return jnp.sum((jv * v).reshape(B, D), axis=-1)   # e_dᵀ J e_d per example

  return jnp.sum(jax.lax.map(diag_entry, basis_DD), axis=0)


def hutchinson_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                          v: jax.Array) -> jax.Array:
  """vᵀ (∂fn/∂x) v per example, [B]; unbiased for ∇·fn when E[v vᵀ] = I."""
  _, jv = jax.jvp(fn, (x,), (v,))
  return jnp.sum((jv * v).reshape(x.shape[0], -1), axis=-1)


def probe(key: jax.Array, shape: tuple[int, ...], estimator: str) -> jax.Array:
  """A Hutchinson probe: Rademacher (±1, lowest variance) or standard Gaussian."""
  if estimator == "rademacher":
    return jax.random.rademacher(key, shape).astype(jnp.float32)
  if estimator == "gaussian":
    return jax.random.normal(key, shape)
  raise ValueError(f"Unknown probe {estimator!r}; valid choices: rademacher, gaussian.")


def log_likelihood(sde: sde_lib.SDE, score_fn: ScoreFn, x0: jax.Array,
                   estimator: str | jax.Array = "exact", key: jax.Array | None = None,
                   eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5,
                   prior_logp: Callable[[jax.Array], jax.Array] | None = None,
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """log p_0(x0) [B] in nats (Appendix D.2 of 2011.13456); returns (logp, z = x(T), stats).

  estimator: "exact", "rademacher" or "gaussian" (the last two need `key`), or an array of
  probes shaped like x0 (Hutchinson with those probes).
  prior_logp(z) → [B] defaults to the SDE's prior N(0, prior_std² I); pass the exact
  marginal p_T to remove the prior-mismatch term (tests do, see analytic.py).
  """
  if not isinstance(estimator, str):
    v = jnp.asarray(estimator)
    if v.shape != x0.shape:
      raise ValueError(f"Probe array has shape {v.shape}, expected x0's shape {x0.shape}.")
    estimator = "probes"
  elif estimator not in ESTIMATORS:
    raise ValueError(f"Unknown trace estimator {estimator!r}; valid choices: "
                     f"{', '.join(ESTIMATORS)}, or a probe array.")
  elif estimator != "exact":
    if key is None:
      raise ValueError(f"estimator={estimator!r} needs a PRNG key.")
    v = probe(key, x0.shape, estimator)

  def aug(state, t):
    x, _ = state
    drift = lambda y: sde_samplers.reverse_drift(sde, score_fn, y, t, probability_flow=True)[0]
    if estimator == "exact":
      div = exact_divergence(drift, x)
    else:
      div = hutchinson_divergence(drift, x, v)
    return drift(x), div                       # d/dt [x, ∫∇·f̃] — Appendix D.2

  state0 = (x0, jnp.zeros((x0.shape[0],), x0.dtype))
  (z, delta), stats = ode.dopri5(aug, state0, eps, sde.T, rtol=rtol, atol=atol)
  prior = sde_lib.prior_logp(sde, z) if prior_logp is None else prior_logp(z)
  return prior + delta, z, stats


def bits_per_dim(logp: jax.Array, x_shape: tuple[int, ...], offset: float = 0.0) -> jax.Array:
  """−log p / (D ln 2) + offset per example; for images scaled from {0..255} to [−1, 1] the
  dequantisation offset is log2(128) = 7 bits (the "+7" of the DDPM/score-SDE code)."""
  d = int(np.prod(x_shape[1:]))
  return -logp / (d * np.log(2.0)) + offset
