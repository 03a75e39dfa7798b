"""On-policy rollouts for RL fine-tuning: ragged prompts, sampled responses, their log-probs.

PPO-RLHF (InstructGPT, arXiv:2203.02155, §3.5) and GRPO (arXiv:2402.03300, Alg. 1) sample
responses from the current policy inside the training step, then score them. Here the sampling
runs through the preallocated KV cache (`kv_cache.py`) in one `lax.scan`, so it compiles once
per shape and never leaves the device.

Layout. Prompts of different lengths are right-padded to [B, P]; row b's response is written
from position len_b on, so every row reads as one contiguous text at positions 0, 1, ... (no
left padding, no position offsets):

    tokens_BS[b] = prompt_b (len_b) · response_b (N) · padding        S = P + N

The prefill reads all P slots; the pad slots beyond len_b are overwritten by the decoding steps
before any query can see them (the cache's mask is slot ≤ position), so each row's response
depends on its own prompt only (tested against decoding each row alone). The response mask is 1
up to and including the first `end_id`; later tokens are `end_id` and weigh 0.

Log-probs. `logprobs_BN` are the sampled tokens' log-probs under softmax(logits / temperature),
the behaviour policy of importance ratios; `response_logprobs` recomputes the same numbers by one
causal forward over `tokens_BS` (the training-time path; equal to 1e-5, tested). top-k / top-p
truncation is not part of these log-probs (as in TRL and verl); RL here samples at T = 1, unfiltered.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from genfm.transformers import preference, sampling

Array = jax.Array


@flax.struct.dataclass
class Rollout:
  tokens_BS: Array       # prompt · response · padding, int32 [B, P + N]
  lengths_B: Array       # prompt lengths, int32 [B]
  response_BN: Array     # sampled tokens, int32 [B, N]; `end_id` after the end
  mask_BN: Array         # 1.0 up to and including the first end_id, float32 [B, N]
  logprobs_BN: Array     # behaviour log-probs of the sampled tokens, float32 [B, N]

  @property
  def response_lengths_B(self) -> Array:
    return jnp.sum(self.mask_BN, axis=1)


def response_index(lengths_B: Array, num_new: int) -> Array:
  """[B, N] index of the position whose *output* predicts response token j: len_b + j − 1."""
  return lengths_B[:, None].astype(jnp.int32) + jnp.arange(num_new)[None] - 1


def gather_response(x_BS: Array, lengths_B: Array, num_new: int) -> Array:
  """x at the positions that predict the response tokens: [B, S, ...] → [B, N, ...]."""
  idx_BN = response_index(lengths_B, num_new)
  idx = idx_BN.reshape(idx_BN.shape + (1,) * (x_BS.ndim - 2))
  return jnp.take_along_axis(x_BS, idx, axis=1)


def _token_logprobs(logits_BNV: Array, tokens_BN: Array, temperature: float) -> Array:
  # fp32 (in token_logprobs): ratios exp(logp − old_logp) of nearly equal numbers need it.
  t = temperature if temperature > 0 else 1.0
  return preference.token_logprobs(logits_BNV.astype(jnp.float32) / t, tokens_BN)


def response_logprobs(model: nnx.Module, tokens_BS: Array, lengths_B: Array, num_new: int, *,
                      temperature: float = 1.0) -> Array:
  """log π(response token j | prompt, earlier response) [B, N] by one causal forward."""
  logits_BSV = model(tokens_BS)
  resp_BN = jnp.take_along_axis(tokens_BS, response_index(lengths_B, num_new) + 1, axis=1)
  return _token_logprobs(gather_response(logits_BSV, lengths_B, num_new), resp_BN, temperature)


def sample_responses(model: nnx.Module, prompts_BP: Array, lengths_B: Array, num_new: int,
                     key: Array | None, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, end_id: int | None = None) -> Rollout:
  """Sample `num_new` tokens after each row's prompt (its first `lengths_B[b]` tokens) with the
  KV cache; temperature 0 is greedy. Runs under `jit` (prompts may be traced)."""
  cfg = model.cfg
  B, P = prompts_BP.shape
  S = P + num_new
  sampling.check_sampling_params(temperature, top_k, top_p, cfg.vocab_size)
  if num_new < 1:
    raise ValueError(f"num_new must be >= 1, got {num_new}")
  if S > cfg.context_len:
    raise ValueError(f"prompts padded to {P} + {num_new} new tokens = {S} > context_len="
                     f"{cfg.context_len}; shorten the prompts or the responses")
  if temperature > 0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key")
  if model.num_virtual_tokens:
    raise ValueError("rollouts use the KV cache, which soft prompts and prefixes do not support")
  graphdef, state = nnx.split(model)
  forward = lambda tok, pos, caches: nnx.merge(graphdef, state)(tok, positions_BT=pos,
                                                                caches=caches)
  lengths_B = lengths_B.astype(jnp.int32)
  prompts_BP = prompts_BP.astype(jnp.int32)
  logits_BPV, caches = forward(prompts_BP, jnp.broadcast_to(jnp.arange(P), (B, P)),
                               model.init_cache(B, S))
  last_BV = jnp.take_along_axis(logits_BPV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  keys = (jax.random.split(key, num_new) if key is not None
          else jnp.zeros((num_new, 2), jnp.uint32))
  fill = 0 if end_id is None else end_id

  def step(carry, key_i):
    caches, last_BV, pos_B, done_B = carry
    k = key_i if key is not None else None
    tok_B = sampling.sample(last_BV, k, temperature=temperature, top_k=top_k, top_p=top_p)
    logp_B = _token_logprobs(last_BV, tok_B, temperature)
    live_B = ~done_B
    tok_B = jnp.where(live_B, tok_B, fill)
    if end_id is not None:
      done_B = done_B | (tok_B == end_id)
    logits_B1V, caches = forward(tok_B[:, None], pos_B[:, None], caches)
    return (caches, logits_B1V[:, 0], pos_B + 1, done_B), (tok_B, logp_B,
                                                           live_B.astype(jnp.float32))

  init = (caches, last_BV, lengths_B, jnp.zeros((B,), bool))
  _, (tok_NB, logp_NB, mask_NB) = jax.lax.scan(step, init, keys)
  response_BN, mask_BN = tok_NB.T, mask_NB.T
  logprobs_BN = logp_NB.T * mask_BN
  buf_BS = jnp.zeros((B, S), jnp.int32).at[:, :P].set(
      jnp.where(jnp.arange(P)[None] < lengths_B[:, None], prompts_BP, 0))
  cols_BN = lengths_B[:, None] + jnp.arange(num_new)[None]
  tokens_BS = buf_BS.at[jnp.arange(B)[:, None], cols_BN].set(response_BN)
  return Rollout(tokens_BS, lengths_B, response_BN, mask_BN, logprobs_BN)
