"""Explicit regularisers: L1/L2 penalties, inverted dropout, early stopping.

  L2 (weight decay): R(w) = (λ/2)‖w‖², ∇R = λw, so an SGD step on L + R is
    w ← (1 − ηλ) w − η∇L  (Krogh & Hertz, NIPS 1991; the SGD equivalence is Prop. 1 of 1711.05101,
    which does not hold for Adam — see `optimizers.adamw`).
  L1 (lasso, Tibshirani 1996): R(w) = λ‖w‖₁; its proximal step is soft-thresholding
    prox(w) = sign(w) max(|w| − ηλ, 0) (ISTA, Beck & Teboulle 2009, eq. (1.4)), which sets small
    weights exactly to 0 — the sparsity L1 is used for.
  Inverted dropout (Srivastava et al., JMLR 2014, eq. (1)–(2); "inverted" = scaling by 1/(1 − p) at
    train time instead of p at test time): y = m ⊙ x / (1 − p), m_i ~ Bernoulli(1 − p), so
    E[y] = x and evaluation is the identity.
  Early stopping (Prechelt 1998, "Early stopping — but when?"): stop after `patience` evaluations
    without an improvement of at least `min_delta`, and keep the best step.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


def l2_penalty(params, weight: float) -> jax.Array:
  """(λ/2) Σ w² over every leaf (pass only the kernels to leave biases undecayed)."""
  return 0.5 * weight * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def l1_penalty(params, weight: float) -> jax.Array:
  """λ Σ |w| over every leaf."""
  return weight * sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))


def prox_l1(params, threshold: float):
  """Soft-thresholding, the proximal map of threshold·‖w‖₁ (ISTA step with threshold = ηλ)."""
  return jax.tree.map(lambda w: jnp.sign(w) * jnp.maximum(jnp.abs(w) - threshold, 0.0), params)


def dropout(key: jax.Array, x: jax.Array, rate: float, deterministic: bool = False) -> jax.Array:
  """Inverted dropout: zero each entry with probability `rate`, scale survivors by 1/(1 − rate)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  if deterministic or rate == 0.0:
    return x  # evaluation: the 1/(1 − p) training scale already makes E[train output] = x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, x.shape)  # m_i ~ Bernoulli(1 − p)
  return jnp.where(mask, x / keep, 0.0)


@dataclasses.dataclass
class EarlyStopping:
  """Host-side patience counter; call `update(metric)` once per evaluation (lower is better)."""
  patience: int
  min_delta: float = 0.0
  best: float = math.inf
  best_step: int = -1
  bad_evals: int = 0
  step: int = -1

  def __post_init__(self):
    if self.patience < 1:
      raise ValueError(f"patience must be >= 1, got {self.patience}")

  def update(self, metric: float) -> bool:
    """Records one evaluation; returns True when training should stop."""
    self.step += 1
    if not math.isfinite(metric):
      return True  # a NaN/Inf validation loss never recovers on its own
    if metric < self.best - self.min_delta:
      self.best, self.best_step, self.bad_evals = metric, self.step, 0
    else:
      self.bad_evals += 1
    return self.bad_evals >= self.patience
