"""GPT-style decoder-only transformer (Radford et al. 2018/2019, GPT-2), one config for every
choice: positions (learned / sinusoidal / RoPE / ALiBi / none), norm (LayerNorm / RMSNorm) and
its placement (pre / post), FFN (GELU MLP / SwiGLU), attention (MHA / GQA / MQA, sliding
window) and dense vs Mixture-of-Experts FFNs.

Vision–language slots (empty unless used; without them the model is bit-identical): per-example
`prefix_embeds_BPD` before the tokens (LLaVA's projected image tokens, 2304.08485 §4.1),
`bidirectional_len_B` for the prefix-LM mask (image + prompt attended fully, the rest causal, as
PaliGemma 2407.07726), and the `cross_attn` slot that `flamingo.py` fills with tanh-gated
cross-attention blocks reading `media_BMD` (2204.14198 §2.2).

FLOPs per token follow PaLM (Chowdhery et al. 2022, arXiv:2204.02311, appendix B):
6N + 12·L·D·T, where the appendix's H·Q (heads × head dim) is our N·H, = D for standard widths.
"""

import dataclasses
import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from genfm.foundations import remat as remat_lib
from genfm.transformers import attention, block, ffn, kv_cache, moe, norms, positions

Array = jax.Array
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
ATTENTION_IMPLS = ("reference", "reference_vjp", "xla", "cudnn", "pallas")
DTYPES = ("float32", "bfloat16")


def _check_choice(what: str, got, valid) -> None:
  if got not in valid:
    raise ValueError(f"unknown {what} {got!r}; valid choices: {', '.join(map(str, valid))}")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Defaults are GPT-2 small (124M); `GPTConfig(**overrides)` switches each choice."""

  vocab_size: int = 50257
  context_len: int = 1024
  num_layers: int = 12
  d_model: int = 768
  num_heads: int = 12
  num_kv_heads: int | None = None  # None = num_heads (MHA); 1 = MQA; else GQA
  head_dim: int | None = None  # None = d_model // num_heads
  d_ff: int | None = None  # None = 4·D (gelu) or round(8·D/3) (swiglu, ≈ equal params)
  positions: str = "learned"
  rope_base: float = 10_000.0
  norm: str = "layernorm"
  norm_placement: str = "pre"
  norm_eps: float = 1e-5
  ffn: str = "gelu"
  use_bias: bool = True  # biases in attention/MLP projections and LayerNorm (GPT-2: True)
  attention_window: int | None = None  # a query sees itself and this many previous tokens
  # "reference_vjp": the pure-jnp reference forward with FlashAttention-2's closed-form
  # backward (attention.py; half the attention time of autodiff's on XLA:CPU, issue #15);
  # "reference" differentiates the same forward by autodiff (and supports jax.jvp).
  attention_impl: str = "reference_vjp"
  num_experts: int = 0  # 0 = dense FFN everywhere
  top_k: int = 2
  capacity_factor: float = 1.25
  moe_every: int = 1  # layer i is MoE when (i + 1) % moe_every == 0
  tie_embeddings: bool = True
  dropout: float = 0.0
  init_std: float = 0.02
  # Compute dtype of activations and matmuls. Parameters, optimizer state, norms' statistics,
  # attention softmax, router and logits stay fp32 (mixed precision, 1710.03740).
  dtype: str = "float32"
  # Activation checkpointing per transformer block (`foundations/remat.py`, 1604.06174):
  # "none" | "full" (keep only each block's input, recompute it in the backward pass) |
  # "dots" (keep the matmul outputs, recompute the rest). Training only: decoding with the KV
  # cache never rematerialises.
  remat: str = "none"

  def __post_init__(self):
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("remat", self.remat, remat_lib.POLICIES)
    _check_choice("positions", self.positions, POSITIONS)
    _check_choice("norm", self.norm, norms.NORMS)
    _check_choice("norm_placement", self.norm_placement, block.PLACEMENTS)
    _check_choice("ffn", self.ffn, ffn.FFNS)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                       "set head_dim")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads="
                       f"{self.kv_heads}")
    if self.positions == "rope" and self.head_size % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_size}")
    if self.num_experts < 0 or (self.num_experts and not 1 <= self.top_k <= self.num_experts):
      raise ValueError(f"need num_experts >= 0 and 1 <= top_k <= num_experts, got "
                       f"num_experts={self.num_experts}, top_k={self.top_k}")
    if self.moe_every < 1:
      raise ValueError(f"moe_every must be >= 1, got {self.moe_every}")
    if self.attention_impl == "pallas" and (self.positions == "alibi" or self.attention_window):
      raise ValueError("attention_impl='pallas' (genfm.kernels flash attention) supports causal "
                       "attention only: no ALiBi bias, no attention_window; use 'reference' or "
                       "'xla' for those")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def ffn_dim(self) -> int:
    if self.d_ff is not None:
      return self.d_ff
    return 4 * self.d_model if self.ffn == "gelu" else round(8 * self.d_model / 3)

  def is_moe_layer(self, i: int) -> bool:
    return self.num_experts > 0 and (i + 1) % self.moe_every == 0


def param_count(cfg: GPTConfig, *, active: bool = False) -> int:
  """Parameters by hand; `active=True` counts only the top-k experts of each MoE layer."""
  D, V, F, L = cfg.d_model, cfg.vocab_size, cfg.ffn_dim, cfg.num_layers
  N, K, H = cfg.num_heads, cfg.kv_heads, cfg.head_size
  b = cfg.use_bias
  attn = D * N * H + 2 * D * K * H + N * H * D + b * (N * H + 2 * K * H + D)
  norm = D * (1 + (cfg.norm == "layernorm" and b))
  dense = 2 * D * F + b * (F + D) if cfg.ffn == "gelu" else 3 * D * F
  expert = (2 if cfg.ffn == "gelu" else 3) * D * F
  n_exp = cfg.top_k if active else cfg.num_experts
  total = V * D + (cfg.context_len * D if cfg.positions == "learned" else 0)
  for i in range(L):
    moe_ffn = D * cfg.num_experts + n_exp * expert  # router + experts (no biases)
    total += attn + 2 * norm + (moe_ffn if cfg.is_moe_layer(i) else dense)
  total += norm if cfg.norm_placement == "pre" else 0  # final norm
  total += 0 if cfg.tie_embeddings else D * V
  return total


def flops_per_token(cfg: GPTConfig) -> int:
  """Training FLOPs per token, 6N + 12·L·(N·H)·T (PaLM, 2204.02311 app. B).

  N = active parameters doing matmuls: without the learned position table (a lookup) and, when
  untied, without the input embedding (also a lookup); the tied embedding counts once, as the
  output projection. The attention term counts the full T×T score matrix (no causal halving),
  as PaLM and nanoGPT do, with T = context_len.
  """
  n = param_count(cfg, active=True)
  n -= cfg.context_len * cfg.d_model if cfg.positions == "learned" else 0
  n -= 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
  return 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.head_size * cfg.context_len


@functools.cache  # one object per choice: it is static module state, so a fresh partial per
def _attention_fn(impl: str):  # model would give each model its own jit cache entry
  if impl == "pallas":  # imported lazily: the kernels area is optional for CPU users
    from genfm.kernels import flash_attention  # pylint: disable=g-import-not-at-top
    return functools.partial(flash_attention.dot_product_attention, implementation="pallas")
  return functools.partial(attention.dot_product_attention, implementation=impl)


class GPT(nnx.Module):
  """tokens [B, T] → logits [B, T, V] (fp32). See `GPTConfig`."""

  # Logical axes of every parameter, read by `genfm.foundations.partitioning` (regex searched in
  # the path 'layers/0/attn/q_proj/kernel'; first match wins; one name or None per dim).
  # Megatron TP (1909.08053 sec. 3): q/k/v and FFN up/gate are column-parallel (output dim on
  # heads/mlp), o_proj and FFN down row-parallel (input dim), so each block needs one all-reduce
  # per sublayer; FSDP (1910.02054) shards the width dim `embed` of every matrix. k/v are
  # `kv_heads` (= heads when K = N). MoE experts [E, D, F] split F like a dense FFN.
  PARAM_AXES = (
      (r"pos_embed/embed/embedding$", (None, "embed")),        # [context, D]
      (r"^embed/embedding$", ("vocab", "embed")),              # [V, D], also the tied head
      (r"^lm_head/kernel$", ("embed", "vocab")),               # [D, V] (untied)
      (r"attn/q_proj/kernel$", ("embed", "heads", None)),      # [D, N, H] column-parallel
      (r"attn/(k|v)_proj/kernel$", ("embed", "kv_heads", None)),  # [D, K, H]
      (r"attn/o_proj/kernel$", ("heads", None, "embed")),      # [N, H, D] row-parallel
      (r"attn/(q|k|v)_proj/bias$", (None, None)),              # [N, H] / [K, H]
      (r"ffn/(up|gate)/kernel$", ("embed", "mlp")),            # [D, F] column-parallel
      (r"ffn/down/kernel$", ("mlp", "embed")),                 # [F, D] row-parallel
      (r"ffn/router/kernel$", ("embed", None)),                # [D, E]
      (r"ffn/w_(up|gate)$", (None, "embed", "mlp")),           # [E, D, F]
      (r"ffn/w_down$", (None, "mlp", "embed")),                # [E, F, D]
      (r"^soft_prompt/embedding$", (None, "embed")),           # [P, D] (prompt tuning)
      (r"^prefix/kv$", (None, None, None, None, None)),        # [L, 2, P, K, H] (prefix tuning)
      (r"^prefix/b1$", (None,)),
      (r"^prefix/(embed|w1|w2|b2)$", (None, None)),
      (r"(scale|bias)$", (None,)),                             # norms, o_proj / FFN biases
  )

  def __init__(self, cfg: GPTConfig, *, attention_fn: attention.AttentionFn | None = None,
               rngs: nnx.Rngs):
    self.cfg = cfg
    D, L = cfg.d_model, cfg.num_layers
    init = nnx.initializers.normal(cfg.init_std)
    # GPT-2: residual-output projections scaled by 1/√(2L) so the residual stream's variance
    # does not grow with depth (two residual adds per layer).
    out_init = nnx.initializers.normal(cfg.init_std / math.sqrt(2 * L))
    # dtype=bf16 casts the fp32 tables and kernels at each use (nnx's promote_dtype), so every
    # matmul runs in bf16 while the parameters the optimizer updates remain fp32.
    dtype = cfg.compute_dtype
    self.embed = nnx.Embed(cfg.vocab_size, D, embedding_init=init, dtype=dtype, rngs=rngs)
    self.pos_embed = (positions.LearnedPositions(cfg.context_len, D, embedding_init=init,
                                                 dtype=dtype, rngs=rngs)
                      if cfg.positions == "learned" else None)
    fn = attention_fn or _attention_fn(cfg.attention_impl)
    layers = []
    for i in range(L):
      attn = attention.MultiHeadAttention(
          D, cfg.num_heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.head_size,
          use_bias=cfg.use_bias, attention_fn=fn, kernel_init=init, out_kernel_init=out_init,
          dtype=dtype, rngs=rngs)
      if cfg.is_moe_layer(i):
        mlp = moe.MoE(D, cfg.ffn_dim, cfg.num_experts, top_k=cfg.top_k,
                      capacity_factor=cfg.capacity_factor, ffn=cfg.ffn, kernel_init=init,
                      out_kernel_init=out_init, rngs=rngs)
      else:
        mlp = ffn.make_ffn(cfg.ffn, D, cfg.ffn_dim, use_bias=cfg.use_bias, kernel_init=init,
                           out_kernel_init=out_init, dtype=dtype, rngs=rngs)
      make_norm = functools.partial(norms.make_norm, cfg.norm, D, epsilon=cfg.norm_eps,
                                    use_bias=cfg.use_bias, rngs=rngs)
      layers.append(block.Block(attn, mlp, make_norm(), make_norm(),
                                placement=cfg.norm_placement, dropout_rate=cfg.dropout, rngs=rngs))
    self.layers = nnx.List(layers)
    # Post-norm blocks already end in a norm; pre-norm needs one before the head (GPT-2 ln_f).
    self.final_norm = (norms.make_norm(cfg.norm, D, epsilon=cfg.norm_eps, use_bias=cfg.use_bias,
                                       rngs=rngs) if cfg.norm_placement == "pre" else None)
    self.lm_head = (None if cfg.tie_embeddings else
                    nnx.Linear(D, cfg.vocab_size, use_bias=False, kernel_init=init, dtype=dtype,
                               rngs=rngs))
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
    # Parameter-efficient fine-tuning slots, empty by default: a soft prompt of P trainable
    # embeddings before the tokens (`prompt_tuning`, 2104.08691) and per-layer key/value prefixes
    # (`prefix_tuning`, 2101.00190). Both are P virtual tokens at positions 0..P-1; the real
    # tokens then sit at positions P.., as after a hard prompt of P tokens.
    self.soft_prompt = nnx.data(None)
    self.prefix = nnx.data(None)
    # Flamingo slot (`flamingo.add_cross_attention`, 2204.14198): an nnx.List of L entries, a
    # gated cross-attention block before layer i or None; read only when `media_BMD` is given.
    self.cross_attn = nnx.data(None)

  @property
  def num_virtual_tokens(self) -> int:
    """P: positions taken by a soft prompt or a prefix before the first real token."""
    return sum(m.length for m in (self.soft_prompt, self.prefix) if m is not None)

  def init_cache(self, batch: int, max_len: int | None = None, dtype=None):
    """One preallocated `KVCache` per layer, [B, max_len, K, H] each (default: compute dtype)."""
    cfg = self.cfg
    dtype = cfg.compute_dtype if dtype is None else dtype
    max_len = cfg.context_len if max_len is None else max_len
    if max_len > cfg.context_len:
      raise ValueError(f"cache length {max_len} exceeds context_len={cfg.context_len}")
    return [kv_cache.KVCache.init(batch, max_len, cfg.kv_heads, cfg.head_size, dtype)
            for _ in range(cfg.num_layers)]

  def hidden_states(self, tokens_BT: Array, *, positions_BT: Array | None = None,
                    segment_ids_BT: Array | None = None, prefix_embeds_BPD: Array | None = None,
                    bidirectional_len_B: Array | None = None,
                    media_BMD: Array | None = None,
                    input_embeds_BTD: Array | None = None) -> Array:
    """The final (normed) residual stream [B, T, D] that the LM head reads: what a reward or
    value head (`transformers/reward_model.py`) reads too. Arguments as in `__call__`.

    `input_embeds_BTD` [B, T, D] replaces the token embeddings `embed(tokens_BT)` (the tokens
    still give the shape and positions): textual inversion's learned word embedding
    (2208.01618) substituted at its placeholder's positions."""
    return self._trunk(tokens_BT, positions_BT, segment_ids_BT, None, prefix_embeds_BPD,
                       bidirectional_len_B, media_BMD, input_embeds_BTD=input_embeds_BTD)[0]

  def _check_vl(self, B, T, prefix_embeds_BPD, bidirectional_len_B, media_BMD, segment_ids_BT,
                caches) -> int:
    """Validates the vision–language arguments; returns the number of prefix embeddings P."""
    cfg = self.cfg
    P = 0
    if prefix_embeds_BPD is not None:
      if prefix_embeds_BPD.ndim != 3 or prefix_embeds_BPD.shape[0] != B or \
         prefix_embeds_BPD.shape[2] != cfg.d_model:
        raise ValueError(f"prefix_embeds_BPD must be [B={B}, P, D={cfg.d_model}], got "
                         f"{list(prefix_embeds_BPD.shape)}")
      if self.soft_prompt is not None or self.prefix is not None:
        raise ValueError("prefix_embeds_BPD cannot be combined with a soft prompt or prefix "
                         "(both take positions 0..P-1)")
      P = prefix_embeds_BPD.shape[1]
    if (P or bidirectional_len_B is not None or media_BMD is not None) and caches is not None:
      raise ValueError("prefix_embeds_BPD / bidirectional_len_B / media_BMD are not supported "
                       "with the KV cache; decode without it")
    if bidirectional_len_B is not None:
      if jnp.shape(bidirectional_len_B) != (B,):
        raise ValueError(f"bidirectional_len_B must be [B={B}], got "
                         f"{list(jnp.shape(bidirectional_len_B))}")
      if segment_ids_BT is not None or cfg.attention_window is not None or \
         cfg.attention_impl == "pallas":
        raise ValueError("bidirectional_len_B (prefix-LM mask) works without segment_ids, an "
                         "attention_window or attention_impl='pallas'")
    if media_BMD is not None:
      if self.cross_attn is None:
        raise ValueError("media_BMD given but the model has no cross-attention layers; add "
                         "them with flamingo.add_cross_attention")
      if media_BMD.ndim != 3 or media_BMD.shape[0] != B:
        raise ValueError(f"media_BMD must be [B={B}, M, D_media], got {list(media_BMD.shape)}")
    return P

  def _trunk(self, tokens_BT, positions_BT, segment_ids_BT, caches, prefix_embeds_BPD=None,
             bidirectional_len_B=None, media_BMD=None, *, input_embeds_BTD=None):
    """(hidden [B, T, D] after the final norm, new caches, summed MoE losses)."""
    cfg = self.cfg
    if tokens_BT.ndim != 2 or not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
      raise ValueError(
          f"tokens must be an integer array [B, T], got {tokens_BT.dtype}{tokens_BT.shape}")
    B, T = tokens_BT.shape
    if input_embeds_BTD is not None and tuple(jnp.shape(input_embeds_BTD)) != (B, T, cfg.d_model):
      raise ValueError(f"input_embeds_BTD must be [B={B}, T={T}, D={cfg.d_model}] like the "
                       f"tokens, got {list(jnp.shape(input_embeds_BTD))}")
    P_img = self._check_vl(B, T, prefix_embeds_BPD, bidirectional_len_B, media_BMD,
                           segment_ids_BT, caches)
    P = self.num_virtual_tokens + P_img
    if T + P > cfg.context_len:
      raise ValueError(f"sequence of {T} tokens" + (f" after {P} virtual tokens" if P else "")
                       + f" exceeds context_len={cfg.context_len}")
    if P and caches is not None:
      raise ValueError("a soft prompt or prefix is not supported with the KV cache; decode "
                       "without it (sampling.generate(..., use_cache=False))")
    if self.soft_prompt is not None and segment_ids_BT is not None:
      raise ValueError("a soft prompt cannot be packed (segment_ids): each example needs its own "
                       "copy of the prompt; batch the examples unpacked")
    if positions_BT is None:
      if caches is not None:
        raise ValueError("decoding with caches needs explicit positions_BT")
      positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    positions_BT = positions_BT + P
    x_BTD = (self.embed(tokens_BT) if input_embeds_BTD is None else
             input_embeds_BTD.astype(cfg.compute_dtype))
    if self.soft_prompt is not None:  # [prompt; tokens]: the prompt takes positions 0..P-1
      x_BTD = jnp.concatenate([self.soft_prompt(B).astype(x_BTD.dtype), x_BTD], axis=1)
      positions_BT = jnp.concatenate(
          [jnp.broadcast_to(jnp.arange(P), (B, P)), positions_BT], axis=1)
    if P_img:  # [image embeddings; tokens], the same layout as a soft prompt, but per example
      x_BTD = jnp.concatenate([prefix_embeds_BPD.astype(x_BTD.dtype), x_BTD], axis=1)
      positions_BT = jnp.concatenate(
          [jnp.broadcast_to(jnp.arange(P), (B, P)), positions_BT], axis=1)
    if cfg.positions == "learned":
      x_BTD = x_BTD + self.pos_embed(positions_BT)
    elif cfg.positions == "sinusoidal":
      x_BTD = x_BTD + positions.sinusoidal(positions_BT, cfg.d_model).astype(x_BTD.dtype)
    x_BTD = self.dropout(x_BTD)

    attn_kwargs = {}
    if cfg.positions == "rope":
      attn_kwargs["rope"] = functools.partial(positions.apply_rope, base=cfg.rope_base)
    if cfg.positions == "alibi":
      k_pos_BS = (positions_BT if caches is None else
                  jnp.broadcast_to(jnp.arange(caches[0].max_len), (B, caches[0].max_len)))
      attn_kwargs["bias"] = positions.alibi_bias(
          positions.alibi_slopes(cfg.num_heads), positions_BT, k_pos_BS)
    if cfg.attention_window is not None:
      attn_kwargs["local_window_size"] = (cfg.attention_window, 0)

    if segment_ids_BT is not None:
      if cfg.attention_impl == "pallas":  # the flash kernel masks by segment ids itself
        attn_kwargs["segment_ids"] = segment_ids_BT
      else:                               # same segment, and causal (is_causal) on top
        attn_kwargs["mask"] = segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :]
    if bidirectional_len_B is not None:
      # Prefix-LM (PaliGemma's mask): query t sees key s iff s <= t or s < n_b, i.e. the first
      # n_b positions (of [prefix embeddings; tokens]) see each other, the rest is causal.
      S = x_BTD.shape[1]
      t_1T1, s_11S = jnp.arange(S)[None, :, None], jnp.arange(S)[None, None, :]
      n_B11 = jnp.asarray(bidirectional_len_B)[:, None, None]
      attn_kwargs["mask"] = ((s_11S <= t_1T1) | (s_11S < n_B11))[:, None]  # [B, 1, S, S]
      attn_kwargs["is_causal"] = False
    kv_prefix = self.prefix(B) if self.prefix is not None else None  # L × (k, v) [B, P, K, H]

    aux_sum: dict[str, Array] = {}
    new_caches = []
    for i, layer in enumerate(self.layers):
      cache = None if caches is None else caches[i]
      if kv_prefix is not None:
        attn_kwargs["kv_prefix"] = kv_prefix[i]
      if media_BMD is not None and self.cross_attn[i] is not None:  # GATED XATTN-DENSE, then
        x_BTD = self.cross_attn[i](x_BTD, media_BMD)                 # the LM layer (Fig. 4)
      if caches is None:  # the block's non-array arguments (rope, window) stay in the closure
        run = _block_runner(positions_BT, dict(attn_kwargs))
        x_BTD, aux, new_cache = remat_lib.remat(run, cfg.remat)(layer, x_BTD)
      else:
        x_BTD, aux, new_cache = layer(x_BTD, positions_BT=positions_BT, cache=cache,
                                      **attn_kwargs)
      new_caches.append(new_cache)
      for name, val in aux.items():
        aux_sum[name] = aux_sum.get(name, 0.0) + val
    if self.soft_prompt is not None or P_img:
      x_BTD = x_BTD[:, -T:]  # logits for the real tokens only
    if self.final_norm is not None:
      x_BTD = self.final_norm(x_BTD)
    return x_BTD, new_caches, aux_sum

  def __call__(self, tokens_BT: Array, *, positions_BT: Array | None = None,
               segment_ids_BT: Array | None = None, caches: list | None = None,
               return_aux: bool = False, prefix_embeds_BPD: Array | None = None,
               bidirectional_len_B: Array | None = None, media_BMD: Array | None = None):
    """Returns logits [B, T, V]; with `caches`, (logits, new_caches); with `return_aux`, the
    MoE losses (mean over MoE layers; zeros when dense) are appended: (..., aux).

    `segment_ids_BT` (int [B, T]) packs several examples in one row: a token attends only to
    earlier tokens of its own segment (give each example's positions from 0 in `positions_BT`).
    With a soft prompt or prefix of P virtual tokens, positions count from the first real token
    and are shifted by P here.

    Vision–language inputs (none of them with `caches`):
      `prefix_embeds_BPD` [B, P, D]: per-example embeddings (projected image tokens) before the
        tokens, at positions 0..P-1; the tokens then sit at P.. and logits come for them only.
      `bidirectional_len_B` int [B]: the prefix-LM mask; n_b counts positions of the whole
        [prefix embeddings; tokens] sequence: positions < n_b attend to each other in both
        directions, later ones causally (to everything before them).
      `media_BMD` [B, M, D_media]: what the `cross_attn` slot's gated blocks attend to.
    """
    cfg = self.cfg
    x_BTD, new_caches, aux_sum = self._trunk(tokens_BT, positions_BT, segment_ids_BT, caches,
                                             prefix_embeds_BPD, bidirectional_len_B, media_BMD)
    # Logits in fp32: the softmax cross-entropy over V classes needs the range.
    if self.lm_head is None:
      logits_BTV = self.embed.attend(x_BTD).astype(jnp.float32)
    else:
      logits_BTV = self.lm_head(x_BTD).astype(jnp.float32)
    out = (logits_BTV,) if caches is None else (logits_BTV, new_caches)
    if return_aux:
      n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
      names = ("load_balance", "router_z", "dropped_fraction")
      out += ({k: aux_sum.get(k, jnp.zeros(())) / max(n_moe, 1) for k in names},)
    return out[0] if len(out) == 1 else out


def _block_runner(positions_BT: Array, kwargs: dict):
  """(block, x_BTD) → block(x_BTD, ...) without a cache: the unit `GPTConfig.remat`
  checkpoints. Only the module and x are arguments of the checkpointed function; positions,
  masks and the rope/window options are closed over (constants of its trace)."""
  def run(layer: block.Block, x_BTD: Array):
    return layer(x_BTD, positions_BT=positions_BT, **kwargs)
  return run


def lm_loss(logits_BTV: Array, targets_BT: Array, mask_BT: Array | None = None) -> Array:
  """Mean next-token cross-entropy in nats (masked positions excluded)."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), targets_BT)
  if mask_BT is None:
    return jnp.mean(ce_BT)
  mask_BT = mask_BT.astype(jnp.float32)
  return jnp.sum(ce_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)
