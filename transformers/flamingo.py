"""Flamingo's bridge from a vision encoder into a frozen LM, Alayrac et al. 2022, arXiv:2204.14198.

`PerceiverResampler` (§2.1): a fixed number M of learned latents cross-attend to the vision
features, whatever their number, through a few layers whose keys/values are the concatenation
[media; latents] (the paper's pseudo-code: `attention_i(q=x, kv=concat([x_f, x]))`), each
followed by a FFN; its output [B, M, C] is what the LM reads.

`GatedCrossAttention` (§2.2, Fig. 4, "GATED XATTN-DENSE"): queries from the text, keys/values
from the media, then a FFN, each residual scaled by tanh(α) with its own scalar α initialised at
0, so at init the block is exactly the identity and the LM keeps its text-only behaviour. The
blocks sit before LM layers (every k-th) in `gpt.GPT`'s `cross_attn` slot
(`add_cross_attention`); only they and the resampler train, the LM stays frozen.

One image per sequence here, so every text token attends to all of its media tokens (the
paper's per-image masking, §2.3, is for interleaved sequences).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.transformers import attention, ffn, norms

Array = jax.Array


class GateParam(nnx.Param):
  """A tanh gate's α (one scalar per gated residual)."""


class CrossAttention(nnx.Module):
  """Multi-head attention with queries from x [B, T, D] and keys/values from y [B, S, C], no
  biases (as Flamingo's), no mask: every query sees every key."""

  def __init__(self, q_dim: int, kv_dim: int, num_heads: int, head_dim: int, *,
               rngs: nnx.Rngs):
    N, H = num_heads, head_dim
    init = nnx.initializers.normal(0.02)  # GPT-2's init, as the LM's own attention
    proj = lambda spec, shape: nnx.Einsum(spec, shape, kernel_init=init, rngs=rngs)
    self.q_proj = proj("BTD,DNH->BTNH", (q_dim, N, H))
    self.k_proj = proj("BSC,CNH->BSNH", (kv_dim, N, H))
    self.v_proj = proj("BSC,CNH->BSNH", (kv_dim, N, H))
    self.o_proj = proj("BTNH,NHD->BTD", (N, H, q_dim))

  def __call__(self, x_BTD: Array, y_BSC: Array) -> Array:
    out_BTNH = attention.dot_product_attention(
        self.q_proj(x_BTD), self.k_proj(y_BSC), self.v_proj(y_BSC), is_causal=False)
    return self.o_proj(out_BTNH)


def _attn_params(q_dim, kv_dim, num_heads, head_dim):
  return 2 * q_dim * num_heads * head_dim + 2 * kv_dim * num_heads * head_dim


class GatedCrossAttention(nnx.Module):
  """y = x + tanh(α_xattn)·XAttn(LN(x), media); y + tanh(α_dense)·FFN(LN(y)) (Fig. 4 of
  2204.14198). Text width D, media width C."""

  def __init__(self, d_model: int, media_dim: int, num_heads: int, *, d_ff: int | None = None,
               rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    self.media_dim = media_dim
    self.norm_attn = norms.LayerNorm(d_model, rngs=rngs)
    self.attn = CrossAttention(d_model, media_dim, num_heads, d_model // num_heads, rngs=rngs)
    self.norm_ffn = norms.LayerNorm(d_model, rngs=rngs)
    self.ffn = ffn.GeluMLP(d_model, d_ff or 4 * d_model, rngs=rngs)
    # α = 0 ⇒ tanh(α) = 0: the block starts as the identity (§2.2, "tanh-gating").
    self.alpha_attn = GateParam(jnp.zeros((), jnp.float32))
    self.alpha_ffn = GateParam(jnp.zeros((), jnp.float32))

  def __call__(self, x_BTD: Array, media_BMC: Array) -> Array:
    if media_BMC.shape[-1] != self.media_dim:
      raise ValueError(f"media width {media_BMC.shape[-1]} != the cross-attention's media_dim "
                       f"{self.media_dim}")
    a_BTD = self.attn(self.norm_attn(x_BTD), media_BMC.astype(x_BTD.dtype))
    x_BTD = x_BTD + jnp.tanh(self.alpha_attn[...]).astype(x_BTD.dtype) * a_BTD
    f_BTD = self.ffn(self.norm_ffn(x_BTD))
    return x_BTD + jnp.tanh(self.alpha_ffn[...]).astype(x_BTD.dtype) * f_BTD


def gated_xattn_param_count(d_model: int, media_dim: int, d_ff: int | None = None) -> int:
  """By hand: 2 LayerNorms, q/o D·D and k/v C·D (no biases), the GELU MLP, 2 gates."""
  D, C, F = d_model, media_dim, d_ff or 4 * d_model
  return 2 * 2 * D + 2 * D * D + 2 * C * D + (2 * D * F + F + D) + 2


class PerceiverLayer(nnx.Module):
  """x ← x + Attn(q=LN(x), kv=[LN(media); LN(x)]); x ← x + FFN(LN(x))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    self.norm_media = norms.LayerNorm(dim, rngs=rngs)
    self.norm_latents = norms.LayerNorm(dim, rngs=rngs)
    self.attn = CrossAttention(dim, dim, num_heads, dim // num_heads, rngs=rngs)
    self.norm_ffn = norms.LayerNorm(dim, rngs=rngs)
    self.ffn = ffn.GeluMLP(dim, 4 * dim, rngs=rngs)

  def __call__(self, x_BMC: Array, media_BSC: Array) -> Array:
    lat_BMC = self.norm_latents(x_BMC)
    kv_BSC = jnp.concatenate([self.norm_media(media_BSC), lat_BMC], axis=1)  # concat([x_f, x])
    x_BMC = x_BMC + self.attn(lat_BMC, kv_BSC)
    return x_BMC + self.ffn(self.norm_ffn(x_BMC))


class PerceiverResampler(nnx.Module):
  """media [B, S, C] (any S) → M latents [B, M, C] (§2.1 of 2204.14198)."""

  def __init__(self, dim: int, *, num_latents: int = 8, num_layers: int = 2, num_heads: int = 4,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"resampler dim={dim} is not divisible by num_heads={num_heads}")
    self.dim = dim
    self.latents = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (num_latents, dim)))
    self.layers = nnx.List([PerceiverLayer(dim, num_heads, rngs=rngs)
                            for _ in range(num_layers)])
    self.norm = norms.LayerNorm(dim, rngs=rngs)

  def __call__(self, media_BSC: Array) -> Array:
    if media_BSC.ndim != 3 or media_BSC.shape[-1] != self.dim:
      raise ValueError(f"image features {list(media_BSC.shape)} do not fit the resampler: it "
                       f"expects [B, S, {self.dim}] (the vision tower's width)")
    B = media_BSC.shape[0]
    x_BMC = jnp.broadcast_to(self.latents[...][None], (B,) + self.latents.shape)
    for layer in self.layers:
      x_BMC = layer(x_BMC, media_BSC)
    return self.norm(x_BMC)


def resampler_param_count(dim: int, num_latents: int, num_layers: int) -> int:
  """By hand: latents M·C; per layer 3 LayerNorms, q/k/v/o C·C, GELU MLP C→4C→C; final LN."""
  C = dim
  layer = 3 * 2 * C + 4 * C * C + (2 * C * 4 * C + 4 * C + C)
  return num_latents * C + num_layers * layer + 2 * C


def add_cross_attention(lm, media_dim: int, *, every: int = 1, num_heads: int | None = None,
                        rngs: nnx.Rngs) -> nnx.List:
  """Fills `lm.cross_attn` (a `gpt.GPT`) with a gated block before every `every`-th layer
  (layers every-1, 2·every-1, ...; Flamingo inserts them every few LM layers, §2.2); in place."""
  cfg = lm.cfg
  if not isinstance(every, int) or not 1 <= every <= cfg.num_layers:
    raise ValueError(f"cross-attention every={every!r} must be in 1..num_layers={cfg.num_layers}")
  if lm.cross_attn is not None:
    raise ValueError("the LM already has cross-attention layers")
  heads = num_heads or cfg.num_heads
  lm.cross_attn = nnx.List([
      GatedCrossAttention(cfg.d_model, media_dim, heads, rngs=rngs)
      if (i + 1) % every == 0 else None for i in range(cfg.num_layers)])
  return lm.cross_attn


class Flamingo(nnx.Module):
  """Resampler + a GPT whose `cross_attn` slot is filled. `__call__(z_BSC, tokens_BT)` →
  logits [B, T, V]; the text stays causal (the LM's own mask), the image enters only through
  the gated cross-attention."""

  def __init__(self, lm, resampler: PerceiverResampler):
    if lm.cross_attn is None:
      raise ValueError("the LM has no cross-attention layers; call add_cross_attention first")
    self.resampler, self.lm = resampler, lm

  def __call__(self, z_BSC: Array, tokens_BT: Array, prompt_len_B: Array | None = None) -> Array:
    del prompt_len_B  # causal text, as the paper's LM (the argument matches `vlm.LLaVA`)
    return self.lm(tokens_BT, media_BMD=self.resampler(z_BSC))
