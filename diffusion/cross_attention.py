"""Cross-attention from image features to text tokens, Rombach et al. 2022 (latent diffusion),
arXiv:2112.10752, sec. 3.3 and eq. (3):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) · V,
    Q = W_Q · φ(z_t),  K = W_K · τ(y),  V = W_V · τ(y),

with φ(z_t) the denoiser's (normalised) intermediate features, one query per image position T
(H·W pixels of a U-Net level, or the DiT's patches), and τ(y) [B, S, D_ctx] the text encoder's
per-token states, one key/value per text token S. As the LDM code's `CrossAttention`, W_Q, W_K,
W_V have no bias and the output projection W_O (with bias) is ZERO-initialised, so the residual
block x + W_O·Attn(…) is exactly the identity at init: a conditioned model starts as the
unconditioned one and the text's influence grows from zero. (The LDM code zero-initialises the
whole SpatialTransformer's `proj_out`; PixArt-α, 2310.00426, zeroes its cross-attention `proj`.)

Padding: `mask_BS` (True = a real token) sets the logits of PAD keys to a large finite negative
(−1e30, not −inf: a fully masked row stays finite) before the softmax, so a PAD key gets weight
exactly 0 and a prompt's output does not depend on how many PADs follow it.

Normalisation of the queries, `norm`: "group" (GroupNorm, the U-Net's SpatialTransformer
input norm), "layer" (LayerNorm), or "none" (PixArt-α's DiT blocks: `x + cross_attn(x, y)`
straight on the residual stream). The text states are used as they are (the frozen text tower
already ends in its final LayerNorm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
NORMS = ("group", "layer", "none")
MASK_VALUE = -1e30     # finite: an all-masked row gives a uniform softmax, not NaN
_zeros = nnx.initializers.zeros_init()


def param_count(query_dim: int, context_dim: int, norm: str = "group") -> int:
  """W_Q [D, D], W_K and W_V [D_ctx, D] (no biases), W_O [D, D] + bias, and the norm's scale
  and bias (none for "none")."""
  D, C = query_dim, context_dim
  return D * D + 2 * C * D + D * D + D + (2 * D if norm != "none" else 0)


class CrossAttention(nnx.Module):
  """x + W_O · MHA(Q = W_Q norm(x), K = W_K c, V = W_V c): eq. (3) of 2112.10752, residual.

  x is [B, H, W, D] (U-Net; the H·W positions are the T queries) or [B, T, D] (DiT); context
  [B, S, D_ctx]; mask [B, S] (True/1 = attend) or None (every key is real).
  """

  def __init__(self, query_dim: int, context_dim: int, *, num_heads: int = 1,
               num_groups: int = 8, norm: str = "group", rngs: nnx.Rngs):
    if query_dim % num_heads:
      raise ValueError(f"cross-attention width {query_dim} must be divisible by "
                       f"num_heads={num_heads}")
    if norm not in NORMS:
      raise ValueError(f"unknown cross-attention norm {norm!r}; valid choices: "
                       f"{', '.join(NORMS)}")
    self.num_heads, self.query_dim, self.context_dim = num_heads, query_dim, context_dim
    if norm == "group":
      self.norm = nnx.GroupNorm(query_dim, num_groups, rngs=rngs)
    elif norm == "layer":
      self.norm = nnx.LayerNorm(query_dim, rngs=rngs)
    else:
      self.norm = nnx.data(None)
    self.q = nnx.Linear(query_dim, query_dim, use_bias=False, rngs=rngs)
    self.k = nnx.Linear(context_dim, query_dim, use_bias=False, rngs=rngs)
    self.v = nnx.Linear(context_dim, query_dim, use_bias=False, rngs=rngs)
    # Zero-initialised output projection: the block is exactly the identity at init.
    self.out = nnx.Linear(query_dim, query_dim, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)
    # True: every call also sows its weights [B, N, T, S] as `nnx.Intermediate` "weights" (read
    # back with nnx.capture, for the per-token maps); off in training: the state stays params.
    self.record = False

  def _check(self, x: Array, context_BSD: Array, mask_BS: Array | None) -> None:
    if x.ndim not in (3, 4) or x.shape[-1] != self.query_dim:
      raise ValueError(f"cross-attention queries must be [B, T, {self.query_dim}] or "
                       f"[B, H, W, {self.query_dim}], got {tuple(x.shape)}")
    if (context_BSD.ndim != 3 or context_BSD.shape[0] != x.shape[0]
        or context_BSD.shape[-1] != self.context_dim):
      raise ValueError(f"context must be [B={x.shape[0]}, S, {self.context_dim}] (the text "
                       f"encoder's per-token states), got {tuple(context_BSD.shape)}")
    if mask_BS is not None and tuple(mask_BS.shape) != tuple(context_BSD.shape[:2]):
      raise ValueError(f"context mask must be [B, S] = {tuple(context_BSD.shape[:2])}, got "
                       f"{tuple(mask_BS.shape)}")

  def _logits(self, x: Array, context_BSD: Array, mask_BS: Array | None):
    """(logits [B, N, T, S] in fp32, v [B, S, N, K]) for queries x flattened to [B, T, D]."""
    self._check(x, context_BSD, mask_BS)
    B, D, N = x.shape[0], self.query_dim, self.num_heads
    h = self.norm(x) if self.norm is not None else x
    q_BTNK = self.q(h.reshape(B, -1, D)).reshape(B, -1, N, D // N)
    k_BSNK = self.k(context_BSD).reshape(B, -1, N, D // N)
    v_BSNK = self.v(context_BSD).reshape(B, -1, N, D // N)
    # Q Kᵀ / √d of eq. (3), in fp32 whatever the compute dtype: bf16 loses the max-subtraction.
    logits_BNTS = jnp.einsum("BTNK,BSNK->BNTS", q_BTNK, k_BSNK,
                             preferred_element_type=jnp.float32) / np.sqrt(D // N)
    if mask_BS is not None:
      logits_BNTS = jnp.where(jnp.asarray(mask_BS, bool)[:, None, None, :], logits_BNTS,
                              MASK_VALUE)
    return logits_BNTS, v_BSNK

  def probs(self, x: Array, context_BSD: Array, mask_BS: Array | None = None) -> Array:
    """The attention weights [B, N, T, S] (rows sum to 1; PAD keys exactly 0): per text token,
    where in the image it is read (the per-token maps of the t2i figure)."""
    logits_BNTS, _ = self._logits(x, context_BSD, mask_BS)
    return jax.nn.softmax(logits_BNTS, axis=-1)

  def __call__(self, x: Array, context_BSD: Array, mask_BS: Array | None = None) -> Array:
    logits_BNTS, v_BSNK = self._logits(x, context_BSD, mask_BS)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if self.record:
      self.sow(nnx.Intermediate, "weights", probs_BNTS)
    probs_BNTS = probs_BNTS.astype(v_BSNK.dtype)
    out_BTNK = jnp.einsum("BNTS,BSNK->BTNK", probs_BNTS, v_BSNK)     # softmax(QKᵀ/√d) V
    return x + self.out(out_BTNK.reshape(x.shape))
