"""Class conditioning with label dropout, and classifier-free guidance.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598. Training
(Algorithm 1) replaces the label by the null token ∅ with probability p_uncond, so one network
learns both ε_θ(z, c) and ε_θ(z) = ε_θ(z, ∅). Sampling (eq. 6) uses
  ε̃ = (1 + w) ε_θ(z, c) − w ε_θ(z).
Parametrisation used here: a guidance *scale* s = 1 + w, i.e.
  ε̃ = s ε_θ(z, c) + (1 − s) ε_θ(z),
so s = 1 (w = 0) is exactly the conditional model, s = 0 (w = −1) exactly the unconditional
one, and s > 1 extrapolates away from the unconditional prediction (the paper's w > 0;
e.g. its w = 0.3 is s = 1.3). Written as a convex-combination form, both endpoints are exact
in floating point (0 · a = 0), unlike u + s (c − u). The combination is linear, so it applies
equally to ε-, x₀- or v-predictions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# apply_fn(x [B, ...], t [B], labels [B] int32) → prediction shaped like x.
CondFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def drop_labels(key: jax.Array, labels_B: jax.Array, p_uncond: float,
                null_label: int) -> jax.Array:
  """Replaces each label by `null_label` with probability p_uncond (Algorithm 1, 2207.12598)."""
  if not 0.0 <= p_uncond <= 1.0:
    raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}.")
  drop_B = jax.random.bernoulli(key, p_uncond, labels_B.shape)
  return jnp.where(drop_B, jnp.asarray(null_label, labels_B.dtype), labels_B)


def combine(pred_cond: jax.Array, pred_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """s · cond + (1 − s) · uncond  ≡ (1 + w) cond − w uncond with w = s − 1 (eq. 6)."""
  return scale * pred_cond + (1.0 - scale) * pred_uncond


def guided_model(apply_fn: CondFn | None, labels_B: jax.Array | None, null_label: int | None,
                 scale: float | jax.Array = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """model_fn(x, t) for the samplers: classifier-free guided prediction at scale s.

  Runs the conditional and unconditional passes as one batch of 2B. With a Python scale of
  exactly 1.0 only the conditional pass runs (same result, half the cost).
  """
  if apply_fn is None or labels_B is None or null_label is None:
    raise ValueError("Classifier-free guidance needs a class-conditional model: pass apply_fn, "
                     "labels and the null label (the model's num_classes).")
  labels_B = jnp.asarray(labels_B, jnp.int32)

  def model_fn(x: jax.Array, t_B: jax.Array) -> jax.Array:
    if labels_B.shape != x.shape[:1]:
      raise ValueError(f"labels have shape {labels_B.shape}, expected ({x.shape[0]},).")
    if isinstance(scale, (int, float)) and scale == 1.0:
      return apply_fn(x, t_B, labels_B)
    both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]),
                    jnp.concatenate([labels_B, jnp.full_like(labels_B, null_label)]))
    cond, uncond = jnp.split(both, 2)
    return combine(cond, uncond, scale)

  return model_fn
