"""Sampling from a language model: greedy, temperature, top-k, and top-p (nucleus; Holtzman et
al. 2019, arXiv:1904.09751), and the generation loop with or without the KV cache.

Every filter reduces to greedy at its limit: temperature → 0, top_k = 1, top_p → 0 (the nucleus
always keeps the most likely token). `generate` decodes with a preallocated KV cache
(`kv_cache.KVCache`) or, as the fp32 reference, by recomputing the whole prefix at each step.
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -jnp.inf  # filtered logits are -inf: categorical() never picks them, and no
# softmax of a fully filtered row is taken (the arg-max token always survives every filter).


def check_sampling_params(temperature: float, top_k: int | None, top_p: float | None,
                          vocab_size: int | None = None) -> None:
  """Raise ValueError for a negative temperature, top_k outside 1..V, top_p outside (0, 1]."""
  if not temperature >= 0.0:  # also rejects NaN
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and (top_k < 1 or (vocab_size is not None and top_k > vocab_size)):
    raise ValueError(f"top_k must be in 1..{vocab_size or 'V'} or None, got {top_k}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_logits(logits_BV: Array, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Array:
  """Logits of the distribution actually sampled from; filtered-out tokens are -inf.

  Order: temperature, then top-k, then top-p on the renormalized top-k distribution (the order
  of HF transformers' warpers). Needs temperature > 0; `sample` handles 0 as greedy.
  """
  V = logits_BV.shape[-1]
  check_sampling_params(temperature, top_k, top_p, V)
  if temperature == 0.0:
    raise ValueError("filter_logits needs temperature > 0; use sample() for greedy (T = 0)")
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k is not None and top_k < V:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, NEG_INF)
  if top_p is not None and top_p < 1.0:
    order_BV = jnp.argsort(-logits_BV, axis=-1)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep token i (in sorted order) when the mass strictly before it is < p: the smallest set
    # whose mass reaches p (sec. 3.1 of 1904.09751); the top token always has mass-before 0.
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_sorted_BV = before_BV < top_p
    keep_BV = jnp.zeros_like(keep_sorted_BV).at[
        jnp.arange(logits_BV.shape[0])[:, None], order_BV].set(keep_sorted_BV)
    logits_BV = jnp.where(keep_BV, logits_BV, NEG_INF)
  return logits_BV


def sample(logits_BV: Array, key: Array | None, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None) -> Array:
  """One token per row, [B] int32. temperature = 0 is greedy (arg-max; `key` may be None)."""
  check_sampling_params(temperature, top_k, top_p, logits_BV.shape[-1])
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  if key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key")
  filtered_BV = filter_logits(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, filtered_BV, axis=-1).astype(jnp.int32)


@nnx.jit
def _forward(model, tokens_BT, positions_BT):
  return model(tokens_BT, positions_BT=positions_BT)


@nnx.jit
def _forward_cached(model, tokens_BT, positions_BT, caches):
  return model(tokens_BT, positions_BT=positions_BT, caches=caches)



def check_prompt(prompt_BT: Array, max_new_tokens: int, *, vocab_size: int, context_len: int,
                 extra: int = 0, extra_text: str = "") -> tuple[int, int]:
  """Validate a [B, T0] prompt of token ids for decoding `max_new_tokens` more; returns (B, T0).

  `extra` positions (named by `extra_text`, e.g. " + gamma (4) - 1") must also fit the context.
  """
  if prompt_BT.ndim != 2 or prompt_BT.shape[1] < 1:
    raise ValueError(f"prompt must be [B, T0] with T0 >= 1, got shape {prompt_BT.shape}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  B, T0 = prompt_BT.shape
  total = T0 + max_new_tokens + extra
  if total > context_len:
    raise ValueError(f"prompt ({T0}) + max_new_tokens ({max_new_tokens}){extra_text} = {total} "
                     f"exceeds context_len={context_len}")
  # Token ids are checked when concrete; under jit (sampling inside a training step, e.g. a policy
  # rollout) they are traced values, and the caller's data pipeline owns their range.
  if isinstance(prompt_BT, jax.core.Tracer):
    return B, T0
  if int(jnp.max(prompt_BT)) >= vocab_size or int(jnp.min(prompt_BT)) < 0:
    raise ValueError(f"prompt holds token ids outside 0..{vocab_size - 1}")
  return B, T0

def generate(model: Any, prompt_BT: Array, max_new_tokens: int, *, key: Array | None = None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             use_cache: bool = True) -> tuple[Array, Array]:
  """Extend every row of `prompt_BT` by `max_new_tokens`; returns (tokens [B, T0 + n],
  logits [B, n, V] that each new token was sampled from).

  `model` follows `gpt.GPT`'s interface. With `use_cache`, the prompt is prefilled once and each
  step feeds one token; otherwise each step recomputes the whole (fixed-size, causally masked)
  buffer, the reference the cache must match. A dropout model should be in eval mode.
  """
  cfg = model.cfg
  B, T0 = check_prompt(prompt_BT, max_new_tokens, vocab_size=cfg.vocab_size,
                       context_len=cfg.context_len)
  total = T0 + max_new_tokens
  check_sampling_params(temperature, top_k, top_p, cfg.vocab_size)
  if temperature > 0.0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key")
  keys = (jax.random.split(key, max_new_tokens) if key is not None else [None] * max_new_tokens)
  prompt_BT = prompt_BT.astype(jnp.int32)
  positions = lambda start, n: jnp.broadcast_to(jnp.arange(start, start + n), (B, n))

  step_logits = []
  if use_cache:
    caches = model.init_cache(B, total)
    logits_BTV, caches = _forward_cached(model, prompt_BT, positions(0, T0), caches)
    last_BV = logits_BTV[:, -1]
    new = []
    for i in range(max_new_tokens):
      tok_B = sample(last_BV, keys[i], temperature=temperature, top_k=top_k, top_p=top_p)
      new.append(tok_B)
      step_logits.append(last_BV)
      if i + 1 < max_new_tokens:
        logits_B1V, caches = _forward_cached(model, tok_B[:, None], positions(T0 + i, 1), caches)
        last_BV = logits_B1V[:, 0]
    tokens_BT = jnp.concatenate([prompt_BT, jnp.stack(new, axis=1)], axis=1)
  else:
    tokens_BT = jnp.zeros((B, total), jnp.int32).at[:, :T0].set(prompt_BT)
    for i in range(max_new_tokens):
      last_BV = _forward(model, tokens_BT, positions(0, total))[:, T0 + i - 1]
      tok_B = sample(last_BV, keys[i], temperature=temperature, top_k=top_k, top_p=top_p)
      step_logits.append(last_BV)
      tokens_BT = tokens_BT.at[:, T0 + i].set(tok_B)
  return tokens_BT, jnp.stack(step_logits, axis=1)
