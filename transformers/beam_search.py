"""Beam search with the KV cache (Graves 2012, arXiv:1211.3711, sec. 2; as used for NMT in
Sutskever et al. 2014, arXiv:1409.3215, sec. 3.1 and Wu et al. 2016, arXiv:1609.08144, sec. 7).

At every step each of the W live hypotheses is extended by every token, the W·V candidates are
scored by their summed log-probability log p(y_1..y_t | x) = Σ_i log p(y_i | x, y_<i), and the W
best survive. The cache rows follow their hypotheses: row (b, w) is re-gathered from the row of
its parent beam before the next token is fed.

Length normalisation: there is no end-of-sequence token here, so every hypothesis has exactly
`max_new_tokens` tokens and any length penalty (e.g. GNMT's ((5 + |Y|) / 6)^α, eq. (14) of
1609.08144) divides all scores by the same number and cannot change the ranking. We therefore
rank and return raw summed log-probabilities; `length_normalized_scores` gives the GNMT-divided
scores for callers that compare beams of different lengths.

Shapes: B prompts, W beams, V vocabulary, T prompt + generated positions; flattened rows are
B·W, beam-major inside a prompt (row b·W + w).
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from genfm.transformers import sampling

Array = jax.Array


def _expand(scores_BW: Array, logits_BWV: Array, beam_width: int):
  """Top-W of the W·V one-token extensions: (new scores [B, W], parent [B, W], token [B, W])."""
  B, W, V = logits_BWV.shape
  # log-softmax in fp32: candidate scores are sums over steps and must not lose the small ones.
  logp_BWV = jax.nn.log_softmax(logits_BWV.astype(jnp.float32), axis=-1)
  cand_BX = (scores_BW[:, :, None] + logp_BWV).reshape(B, W * V)  # X = W·V candidates
  new_scores_BW, idx_BW = jax.lax.top_k(cand_BX, beam_width)
  return new_scores_BW, idx_BW // V, (idx_BW % V).astype(jnp.int32)


def _gather_beams(x, parent_BW: Array):
  """Reorder an array whose leading axis is the B·W flat rows so row (b, w) holds its parent."""
  B, W = parent_BW.shape
  rows_X = (jnp.arange(B)[:, None] * W + parent_BW).reshape(-1)  # flat row of each parent
  return x[rows_X]


@nnx.jit(static_argnames=("beam_width",))
def _prefill(model, prompt_BT: Array, caches, *, beam_width: int):
  B, T0 = prompt_BT.shape
  pos_BT = jnp.broadcast_to(jnp.arange(T0), (B, T0))
  logits_BTV, caches = model(prompt_BT, positions_BT=pos_BT, caches=caches)
  # Every beam starts as a copy of its prompt: repeat cache rows W times (row b·W + w).
  caches = jax.tree.map(lambda c: jnp.repeat(c, beam_width, axis=0), caches)
  last_BWV = jnp.repeat(logits_BTV[:, -1:], beam_width, axis=1)
  # Only beam 0 is live at the start: the others are -inf so the first top-W draws W distinct
  # tokens from one beam rather than W copies of the same token.
  scores_BW = jnp.full((B, beam_width), -jnp.inf).at[:, 0].set(0.0)
  return scores_BW, last_BWV, caches


@nnx.jit
def _step(model, scores_BW, last_BWV, hist_BWT, caches, t: Array, pos: Array):
  """Choose generated token t (history slot t) and feed it through the model at `pos`."""
  B, W, _ = last_BWV.shape
  scores_BW, parent_BW, tok_BW = _expand(scores_BW, last_BWV, W)
  hist_BWT = jnp.take_along_axis(hist_BWT, parent_BW[:, :, None], axis=1)
  hist_BWT = jax.lax.dynamic_update_slice_in_dim(hist_BWT, tok_BW[:, :, None], t, axis=2)
  caches = jax.tree.map(lambda c: _gather_beams(c, parent_BW), caches)
  pos_X1 = jnp.full((B * W, 1), pos, jnp.int32)
  logits_X1V, caches = model(tok_BW.reshape(B * W, 1), positions_BT=pos_X1, caches=caches)
  return scores_BW, logits_X1V.reshape(B, W, -1), hist_BWT, caches


def beam_search(model: Any, prompt_BT: Array, max_new_tokens: int, *,
                beam_width: int) -> tuple[Array, Array]:
  """Returns (tokens [B, W, T0 + n], scores [B, W]), beams sorted best first.

  `scores` are summed token log-probabilities of the n generated tokens (no length penalty; see
  the module docstring). `model` follows `gpt.GPT`'s interface and should be in eval mode.
  Beam width 1 is greedy decoding; width V^n is exhaustive search.
  """
  cfg = model.cfg
  V = cfg.vocab_size
  B, T0 = sampling.check_prompt(prompt_BT, max_new_tokens, vocab_size=V,
                                context_len=cfg.context_len)
  total = T0 + max_new_tokens
  reachable = V ** max_new_tokens  # distinct continuations; more beams would be -inf copies
  if not isinstance(beam_width, int) or not 1 <= beam_width <= reachable:
    raise ValueError(f"beam_width must be in 1..{min(reachable, 10**9)} (V^max_new_tokens = "
                     f"{V}^{max_new_tokens}), got {beam_width}")
  prompt_BT = prompt_BT.astype(jnp.int32)

  caches = model.init_cache(B, total)
  scores_BW, last_BWV, caches = _prefill(model, prompt_BT, caches, beam_width=beam_width)
  hist_BWT = jnp.zeros((B, beam_width, max_new_tokens), jnp.int32)
  for t in range(max_new_tokens):
    if t + 1 < max_new_tokens:
      scores_BW, last_BWV, hist_BWT, caches = _step(
          model, scores_BW, last_BWV, hist_BWT, caches, jnp.int32(t), jnp.int32(T0 + t))
    else:  # last token: no forward pass needed after choosing it
      scores_BW, parent_BW, tok_BW = _expand(scores_BW, last_BWV, beam_width)
      hist_BWT = jnp.take_along_axis(hist_BWT, parent_BW[:, :, None], axis=1)
      hist_BWT = hist_BWT.at[:, :, t].set(tok_BW)
  prompt_BWT = jnp.broadcast_to(prompt_BT[:, None], (B, beam_width, T0))
  return jnp.concatenate([prompt_BWT, hist_BWT], axis=2), scores_BW


def length_normalized_scores(scores: Array, length: int | Array, alpha: float = 0.6) -> Array:
  """GNMT length penalty: s / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α — eq. (14) of 1609.08144."""
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}")
  return scores / ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha
