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


# apply_fn(x [B, ...], t [B], context [B, S, D], mask [B, S] | None) → prediction shaped like x.
ContextFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def _full_batch(a: jax.Array | None, B: int, what: str) -> jax.Array | None:
  """`a` with batch B: a batch of 1 (one prompt for every sample) is broadcast."""
  if a is None:
    return None
  a = jnp.asarray(a)
  if a.shape[0] not in (1, B):
    raise ValueError(f"{what} has batch {a.shape[0]}; expected {B} (one per sample) or 1")
  return jnp.broadcast_to(a, (B,) + a.shape[1:])


def guided_context_model(apply_fn: ContextFn, context_BSD: jax.Array, mask_BS: jax.Array | None,
                         uncond_context_BSD: jax.Array, uncond_mask_BS: jax.Array | None,
                         scale: float | jax.Array = 1.0
                         ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """model_fn(x, t) for the samplers: classifier-free guidance on text (eq. 6 of 2207.12598),

      ε̃ = s · ε(x, t, τ(prompt)) + (1 − s) · ε(x, t, τ(u)),

  where u is the empty prompt (plain CFG: the model trained with prompt dropout to the empty
  prompt) or a NEGATIVE prompt — the same formula with the unconditional branch conditioned on
  the text to steer away from. So a negative prompt equal to the empty prompt is plain CFG,
  bit for bit. Contexts (and masks, True = real token) are [B, S, D] / [B, S]; a batch of 1 is
  broadcast to every sample; both sides must share S (pad to the same text length). Both
  passes run as one batch of 2B; with a Python scale of exactly 1.0 only the prompt's pass runs.
  """
  if uncond_context_BSD is None:
    raise ValueError("text guidance needs the unconditional context: the empty prompt's states "
                     "(or a negative prompt's)")
  if jnp.ndim(context_BSD) != 3 or jnp.ndim(uncond_context_BSD) != 3:
    raise ValueError(f"contexts must be [B, S, D], got {jnp.shape(context_BSD)} and "
                     f"{jnp.shape(uncond_context_BSD)}")
  if jnp.shape(context_BSD)[1:] != jnp.shape(uncond_context_BSD)[1:]:
    raise ValueError(f"prompt context {jnp.shape(context_BSD)} and unconditional context "
                     f"{jnp.shape(uncond_context_BSD)} differ in [S, D]; encode both at the "
                     "same text length")
  if (mask_BS is None) != (uncond_mask_BS is None):
    raise ValueError("give masks for both contexts or for neither")

  def model_fn(x: jax.Array, t_B: jax.Array) -> jax.Array:
    B = x.shape[0]
    ctx = _full_batch(context_BSD, B, "the prompt context")
    mask = _full_batch(mask_BS, B, "the prompt mask")
    if isinstance(scale, (int, float)) and scale == 1.0:
      return apply_fn(x, t_B, ctx, mask)
    un_ctx = _full_batch(uncond_context_BSD, B, "the unconditional context")
    un_mask = _full_batch(uncond_mask_BS, B, "the unconditional mask")
    both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]),
                    jnp.concatenate([ctx, un_ctx]),
                    None if mask is None else jnp.concatenate([mask, un_mask]))
    cond, uncond = jnp.split(both, 2)
    return combine(cond, uncond, scale)     # eq. (6): (1 + w) ε(c) − w ε(u), s = 1 + w

  return model_fn
