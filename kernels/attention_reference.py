"""Pure-jnp fp32 attention: the reference every fast attention path is tested against.

Softmax attention of "Attention Is All You Need" (arXiv 1706.03762, eq. (1)) with grouped-query
heads (GQA, arXiv 2305.13245): query head n reads key/value head n // G. Conventions shared with
``flash_attention.py``:

* causal is top-left aligned like ``jax.nn.dot_product_attention``: query t sees keys s <= t;
* segment ids: query t sees key s only when their ids are equal (packed sequences);
* a query row that sees no key at all returns zeros (not NaN, not the mean of V).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(t: int, s: int, *, is_causal: bool, q_segment_ids=None,
                   kv_segment_ids=None) -> jax.Array | None:
  """Boolean mask [B or 1, T, S] (True = attend), or None when nothing is masked."""
  mask_BTS = None
  if is_causal:
    mask_BTS = jnp.tril(jnp.ones((t, s), dtype=bool))[None]  # [1, T, S]
  if q_segment_ids is not None:
    seg_BTS = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask_BTS = seg_BTS if mask_BTS is None else mask_BTS & seg_BTS
  return mask_BTS


def mha_reference(query: jax.Array, key: jax.Array, value: jax.Array, *,
                  scale: float | None = None, is_causal: bool = False,
                  q_segment_ids: jax.Array | None = None,
                  kv_segment_ids: jax.Array | None = None) -> jax.Array:
  """fp32 attention; query [B, T, N, H], key/value [B, S, K, H] -> [B, T, N, H] float32."""
  b, t, n, h = query.shape
  s, k = key.shape[1], key.shape[2]
  g = n // k
  scale = h ** -0.5 if scale is None else scale
  q_BTKGH = query.astype(jnp.float32).reshape(b, t, k, g, h)
  k_BSKH = key.astype(jnp.float32)
  v_BSKH = value.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # a reference must not run in TF32/bf16 passes on GPU/TPU
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, precision=hi) * scale
  mask_BTS = attention_mask(t, s, is_causal=is_causal, q_segment_ids=q_segment_ids,
                            kv_segment_ids=kv_segment_ids)
  if mask_BTS is not None:
    mask_B11TS = mask_BTS[:, None, None]
    logits_BKGTS = jnp.where(mask_B11TS, logits_BKGTS, -jnp.inf)
  # eq. (1) of 1706.03762: softmax(Q Kᵀ · scale) V, with the row max subtracted for stability.
  row_max = jnp.max(logits_BKGTS, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked row: avoid inf - inf
  row_max = jax.lax.stop_gradient(row_max)  # softmax is shift-invariant; no gradient path
  p_BKGTS = jnp.exp(logits_BKGTS - row_max)
  denom = jnp.sum(p_BKGTS, axis=-1, keepdims=True)
  p_BKGTS = p_BKGTS / jnp.where(denom == 0.0, 1.0, denom)  # fully masked row -> zeros
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", p_BKGTS, v_BSKH, precision=hi)
  return out_BTKGH.reshape(b, t, n, h)
