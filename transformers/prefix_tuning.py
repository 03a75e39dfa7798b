"""Prefix tuning: trainable per-layer key/value prefixes, Li & Liang 2021, arXiv:2101.00190.

Every attention layer of the frozen model attends to P extra key/value pairs before the sequence,

    h_i = P_θ[i, :]            if i ∈ P_idx (the prefix)                       — eq. (5)
    h_i = LM_φ(z_i, h_<i)      otherwise,

so the prefix acts like P earlier tokens whose activations are free parameters; only P_θ trains.
Optimising P_θ directly is unstable, so it is reparametrised by an MLP of a smaller matrix,
P_θ[i, :] = MLP_θ(P'_θ[i, :])  (§4.3), and after training only P_θ is kept (`materialize`).

Here P_θ holds, for each of the L layers, keys and values [P, K, H] (the activations a decoder's
attention reads). With `reparam` the MLP is Linear(D' → F) · tanh · Linear(F → L·2·K·H) as in the
paper's code; its last layer starts at W = 0 with the bias holding the initial prefix, so at step
0 the prefix is exactly its init and gradients reach the MLP and P' from the first update on.
The init is the keys and values the base model computes for a text (`init_tokens`; the paper's
§7.2 finds real-word activations a better init than random): prefix-tuned with that init, the
model is exactly the base model reading that text as a hard prompt (tested). The real tokens
then sit at positions P.. (`gpt.GPT` shifts them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.transformers import prompt_tuning

Array = jax.Array


class PrefixParam(nnx.Param):
  """Prefix-tuning parameters (the prefix itself, or its reparametrisation MLP)."""


class Prefix(nnx.Module):
  """Per-layer key/value prefixes: `__call__(B)` → L × (k, v), each [B, P, K, H]."""

  def __init__(self, init_LCPKH: Array, *, reparam: bool = False, reparam_dim: int = 64,
               reparam_hidden: int = 256, rngs: nnx.Rngs | None = None):
    L, C, P, K, H = init_LCPKH.shape
    if C != 2 or P < 1:
      raise ValueError(f"prefix init must be [L, 2 (k, v), P >= 1, K, H], got {init_LCPKH.shape}")
    self.length, self.shape = P, (L, C, P, K, H)
    self.reparam = reparam
    init_LCPKH = jnp.asarray(init_LCPKH, jnp.float32)
    if not reparam:
      self.kv = PrefixParam(init_LCPKH)
      return
    if rngs is None:
      raise ValueError("the MLP reparametrisation needs rngs")
    n_out = L * C * K * H
    normal = lambda key, shape, fan_in: jax.random.normal(key, shape) / math.sqrt(fan_in)
    self.embed = PrefixParam(jax.random.normal(rngs.params(), (P, reparam_dim)))     # P'_θ
    self.w1 = PrefixParam(normal(rngs.params(), (reparam_dim, reparam_hidden), reparam_dim))
    self.b1 = PrefixParam(jnp.zeros((reparam_hidden,)))
    self.w2 = PrefixParam(jnp.zeros((reparam_hidden, n_out)))          # W = 0: P_θ = init at 0
    self.b2 = PrefixParam(jnp.einsum("LCPKH->PLCKH", init_LCPKH).reshape(P, n_out))

  def materialize(self) -> Array:
    """P_θ as [L, 2, P, K, H] (fp32): the MLP's output when reparametrised (§4.3)."""
    if not self.reparam:
      return self.kv[...]
    L, C, P, K, H = self.shape
    h_PF = jnp.tanh(self.embed[...] @ self.w1[...] + self.b1[...])
    out = h_PF @ self.w2[...] + self.b2[...]                          # MLP_θ(P'_θ[i, :])
    return jnp.einsum("PLCKH->LCPKH", out.reshape(P, L, C, K, H))

  def __call__(self, batch: int) -> list[tuple[Array, Array]]:
    kv_LCPKH = self.materialize()
    _, _, P, K, H = self.shape
    full = lambda x: jnp.broadcast_to(x[None], (batch, P, K, H))
    return [(full(kv[0]), full(kv[1])) for kv in kv_LCPKH]


def token_activations(model, tokens_P: Array) -> Array:
  """The keys and values [L, 2, P, K, H] that `model` computes for the text `tokens_P`."""
  P = tokens_P.shape[0]
  caches = model.init_cache(1, P, dtype=jnp.float32)
  _, caches = model(jnp.asarray(tokens_P, jnp.int32)[None], positions_BT=jnp.arange(P)[None],
                    caches=caches)
  return jnp.stack([jnp.stack([c.k[0], c.v[0]]) for c in caches])


def add_prefix(model, length: int, *, init_tokens: Array | None = None, reparam: bool = False,
               reparam_dim: int = 64, reparam_hidden: int = 256,
               rngs: nnx.Rngs | None = None) -> Prefix:
  """Install a prefix of `length` positions in `model` (a `gpt.GPT`), in place, initialised to
  the base model's activations for `init_tokens` (int [length]) or for `length` random ids."""
  cfg = model.cfg
  if cfg.positions == "alibi" or cfg.attention_window or cfg.attention_impl == "pallas":
    raise ValueError("prefix tuning needs plain causal attention (no ALiBi, no window, "
                     "attention_impl 'reference' or 'xla')")
  init_tokens = prompt_tuning.virtual_tokens(model, length, init_tokens, rngs, "prefix")
  init = token_activations(model, init_tokens)
  model.prefix = Prefix(init, reparam=reparam, reparam_dim=reparam_dim,
                        reparam_hidden=reparam_hidden, rngs=rngs)
  return model.prefix
