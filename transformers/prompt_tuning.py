"""Prompt tuning: a trainable soft prompt before the input, Lester et al. 2021, arXiv:2104.08691.

The frozen model reads [P_e; X_e]: P trainable embeddings P_e ∈ R^{P×D} concatenated before the
embedded input X_e ∈ R^{T×D} (§2, "the soft-prompt is prepended to the embedded input"), and only
P_e is trained. `add_soft_prompt` installs one in `gpt.GPT`'s `soft_prompt` slot; the model then
places it at positions 0..P-1 and the tokens at P.., and returns logits for the tokens only.

Initialisation (§3.2 compares random, sampled-vocabulary and class-label inits): from the token
embeddings of a text (`init_tokens`, e.g. an instruction written out), or of P vocabulary ids
drawn at random ("sampled vocab"). Initialised from the embeddings of a text, the prompted model
is exactly the base model reading that text as a hard prompt (tested), a reference point that
random inits lack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class PromptParam(nnx.Param):
  """The soft prompt's embeddings (the only trained parameters of prompt tuning)."""


class SoftPrompt(nnx.Module):
  """P trainable embeddings [P, D] (fp32), broadcast over the batch."""

  def __init__(self, embeddings_PD: Array):
    if embeddings_PD.ndim != 2 or embeddings_PD.shape[0] < 1:
      raise ValueError(f"a soft prompt is [P, D] with P >= 1, got {embeddings_PD.shape}")
    self.length = int(embeddings_PD.shape[0])
    self.embedding = PromptParam(jnp.asarray(embeddings_PD, jnp.float32))

  def __call__(self, batch: int) -> Array:
    P, D = self.embedding.shape
    return jnp.broadcast_to(self.embedding[...][None], (batch, P, D))  # [B, P, D]


def virtual_tokens(model, length: int, init_tokens: Array | None, rngs: nnx.Rngs | None,
                   what: str) -> Array:
  """Checks for a new soft prompt / prefix of `length` on `model` (one of them, at most, and
  room in the context); returns its init ids: `init_tokens`, or `length` ids drawn uniformly
  from the vocabulary with `rngs`."""
  cfg = model.cfg
  if not isinstance(length, int) or not 1 <= length < cfg.context_len:
    raise ValueError(f"{what} length must be in 1..context_len-1={cfg.context_len - 1}, "
                     f"got {length!r}")
  if model.prefix is not None or model.soft_prompt is not None:
    raise ValueError("the model already has a prefix or soft prompt (one at a time: both take "
                     "positions 0..P-1)")
  if init_tokens is None:
    if rngs is None:
      raise ValueError(f"give init_tokens or rngs (to draw the {what}'s init ids)")
    init_tokens = jax.random.randint(rngs.params(), (length,), 0, cfg.vocab_size)
  init_tokens = jnp.asarray(init_tokens, jnp.int32)
  if init_tokens.shape != (length,):
    raise ValueError(f"init_tokens must be [{length}], got {list(init_tokens.shape)}")
  return init_tokens


def add_soft_prompt(model, length: int, *, init_tokens: Array | None = None,
                    rngs: nnx.Rngs | None = None) -> SoftPrompt:
  """Install a soft prompt of `length` embeddings in `model` (a `gpt.GPT`), in place.

  `init_tokens` (int [length]) copies those tokens' embeddings; otherwise `length` ids are drawn
  uniformly from the vocabulary with `rngs` (the paper's sampled-vocabulary init)."""
  init_tokens = virtual_tokens(model, length, init_tokens, rngs, "soft prompt")
  table_VD = model.embed.embedding[...]
  model.soft_prompt = SoftPrompt(table_VD[init_tokens])
  return model.soft_prompt
