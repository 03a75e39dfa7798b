"""T5: an encoder–decoder transformer (Raffel et al. 2019, arXiv:1910.10683; the encoder–decoder
of Vaswani et al. 2017, arXiv:1706.03762, fig. 1).

The encoder is a stack of pre-norm blocks (`block.Block`) with bidirectional self-attention
that masks the encoder's padding. Each decoder layer has three sublayers (sec. 3.1 of
1706.03762): causal self-attention, cross-attention whose queries come from the decoder and
whose keys/values are the encoder outputs (padding masked), and the FFN. As in T5 (sec. 2.1 of
1910.10683): norms are RMSNorm-style (scale only, no bias), no biases anywhere, one embedding
table shared by encoder input, decoder input and (tied) output, with the decoder output scaled by
D^-1/2 before the tied projection, and positions are learned relative biases on the attention
logits (`RelativePositionBias`; one table per stack, shared by its layers; none on
cross-attention). `positions="learned"` swaps in absolute learned embeddings instead.

Deviation: T5's FFN is ReLU(x W1) W2; we reuse `ffn.py` (GELU MLP or SwiGLU; T5 v1.1 uses a gated
GELU). The GELU MLP without biases has T5's shapes, so the defaults (t5-small: L = 6 + 6,
D = 512, N = 8, F = 2048, 32,128 tokens) have t5-small's 60,506,624 parameters.

`greedy_decode` decodes with a preallocated `kv_cache.KVCache` per decoder layer (the encoder
output is computed once) or, as the reference, by recomputing the whole prefix at every step.
"""

import dataclasses
import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp

from genfm.transformers import attention, block, ffn, kv_cache, norms, positions

Array = jax.Array
POSITIONS = ("relative", "learned")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Defaults are t5-small; `num_decoder_layers=None` means as many as the encoder."""

  vocab_size: int = 32128
  num_layers: int = 6
  num_decoder_layers: int | None = None
  d_model: int = 512
  num_heads: int = 8
  head_dim: int | None = None  # None = d_model // num_heads
  d_ff: int = 2048
  ffn: str = "gelu"
  norm: str = "rmsnorm"
  norm_eps: float = 1e-6
  positions: str = "relative"
  num_buckets: int = 32  # relative-position buckets (T5: 32, max distance 128)
  max_distance: int = 128
  max_len: int = 512  # positions="learned" only: size of each absolute table
  dropout: float = 0.0
  embed_init_std: float = 1.0  # T5 initialises its embedding with unit variance

  def __post_init__(self):
    for what, got, valid in (("positions", self.positions, POSITIONS),
                             ("ffn", self.ffn, ffn.FFNS), ("norm", self.norm, norms.NORMS)):
      if got not in valid:
        raise ValueError(f"unknown {what} {got!r}; valid choices: {', '.join(valid)}")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                       "set head_dim")
    if self.positions == "relative" and (self.num_buckets < 4 or self.num_buckets % 2
                                         or self.max_distance < self.num_buckets):
      raise ValueError(f"relative positions need an even num_buckets >= 4 and max_distance >= "
                       f"num_buckets, got {self.num_buckets}, {self.max_distance}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim


def param_count(cfg: T5Config) -> int:
  """Parameters by hand: shared embedding, per-stack position tables, bias-free layers."""
  D, F, NH = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.head_size
  attn = 4 * D * NH  # q, k, v, o
  mlp = (2 if cfg.ffn == "gelu" else 3) * D * F
  norm = D  # a scale only: RMSNorm, or LayerNorm built without its bias (T5 has no biases)
  pos = (cfg.num_buckets * cfg.num_heads if cfg.positions == "relative"
         else cfg.max_len * D)  # one table per stack
  encoder = cfg.num_layers * (attn + mlp + 2 * norm) + norm + pos
  decoder = cfg.decoder_layers * (2 * attn + mlp + 3 * norm) + norm + pos
  return cfg.vocab_size * D + encoder + decoder


def relative_position_bucket(rel_pos: Array, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> Array:
  """T5's bucket of a relative position k − q (sec. 2.1 of 1910.10683).

  Half the buckets (per direction, when bidirectional) hold the distances 0, 1, ... exactly;
  the rest cover the distances up to `max_distance` logarithmically, and every larger distance
  shares the last bucket. Bidirectional: keys after the query use the upper half of the
  buckets. Causal (decoder): keys after the query cannot be seen; they map to bucket 0.
  """
  n = -rel_pos  # distance back from the query: q − k
  bucket = jnp.zeros_like(rel_pos)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(rel_pos.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  # log-spaced: max_exact + ⌊log(n / max_exact) / log(max_distance / max_exact) · (nb − max_exact)⌋
  # (n ≥ max_exact here; the max(n, 1) only keeps log finite on the branch `where` discards).
  log_ratio = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
               / math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(rel_pos.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(n < max_exact, n, large)


class RelativePositionBias(nnx.Module):
  """A learned scalar per (bucket, head) added to the attention logits; returns [B, N, T, S]."""

  def __init__(self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32,
               max_distance: int = 128, rngs: nnx.Rngs):
    self.bidirectional, self.num_buckets, self.max_distance = (
        bidirectional, num_buckets, max_distance)
    self.table = nnx.Embed(num_buckets, num_heads, embedding_init=nnx.initializers.normal(1.0),
                           rngs=rngs)  # [buckets, N]

  def __call__(self, q_pos_BT: Array, k_pos_BS: Array) -> Array:
    rel_BTS = k_pos_BS[:, None, :] - q_pos_BT[:, :, None]  # memory position − query position
    bucket_BTS = relative_position_bucket(
        rel_BTS.astype(jnp.int32), bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    return jnp.transpose(self.table(bucket_BTS), (0, 3, 1, 2)).astype(jnp.float32)


class CrossAttention(attention.MultiHeadAttention):
  """Queries from the decoder x [B, T, D], keys/values from the encoder memory [B, S, D]
  ("encoder-decoder attention", sec. 3.2.3 of 1706.03762); `memory_valid_BS` masks padding."""

  def __call__(self, x_BTD: Array, memory_BSD: Array, *,  # pylint: disable=arguments-differ
               memory_valid_BS: Array | None = None) -> Array:
    q_BTNH = self.q_proj(x_BTD)
    k_BSKH = self.k_proj(memory_BSD)
    v_BSKH = self.v_proj(memory_BSD)
    extra = {}
    if memory_valid_BS is not None:
      extra["mask"] = memory_valid_BS.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    out_BTNH = self.attention_fn(q_BTNH, k_BSKH, v_BSKH, is_causal=False, **extra)
    return self.o_proj(out_BTNH)


class DecoderBlock(nnx.Module):
  """Pre-norm decoder layer: x + SelfAttn(Norm x), + CrossAttn(Norm x, memory), + FFN(Norm x)."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    D, N, H = cfg.d_model, cfg.num_heads, cfg.head_size
    make_norm = functools.partial(norms.make_norm, cfg.norm, D, epsilon=cfg.norm_eps,
                                  use_bias=False, rngs=rngs)
    self.self_attn = attention.MultiHeadAttention(D, N, head_dim=H, rngs=rngs)
    self.cross_attn = CrossAttention(D, N, head_dim=H, rngs=rngs)
    self.ffn = ffn.make_ffn(cfg.ffn, D, cfg.d_ff, use_bias=False, rngs=rngs)
    self.norm_self, self.norm_cross, self.norm_ffn = make_norm(), make_norm(), make_norm()
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x_BTD: Array, memory_BSD: Array, *, memory_valid_BS: Array | None,
               positions_BT: Array, bias: Array | None, cache=None):
    kwargs = dict(positions_BT=positions_BT, is_causal=True)
    if bias is not None:
      kwargs["bias"] = bias
    if cache is None:
      a_BTD, new_cache = self.self_attn(self.norm_self(x_BTD), **kwargs), None
    else:
      a_BTD, new_cache = self.self_attn(self.norm_self(x_BTD), cache=cache, **kwargs)
    x_BTD = x_BTD + self.dropout(a_BTD)
    c_BTD = self.cross_attn(self.norm_cross(x_BTD), memory_BSD, memory_valid_BS=memory_valid_BS)
    x_BTD = x_BTD + self.dropout(c_BTD)
    x_BTD = x_BTD + self.dropout(self.ffn(self.norm_ffn(x_BTD)))
    return x_BTD, new_cache


def _check_tokens(name: str, tokens: Array) -> None:
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array [B, T], got {tokens.dtype}{tokens.shape}")


class T5(nnx.Module):
  """(encoder tokens [B, S], decoder tokens [B, T]) → logits [B, T, V] (fp32)."""

  # Logical axes of every parameter (`genfm.foundations.partitioning`; GSPMD, 2105.04663).
  # Megatron split (1909.08053 sec. 3) in self- and cross-attention alike: q/k/v [D, N, H] and
  # FFN up/gate [D, F] column-parallel (output on `model`), out-projection [N, H, D] and FFN
  # down [F, D] row-parallel (input on `model`). `embed` (FSDP, 1910.02054) is the width D. The
  # shared (tied) table is split by vocabulary rows. The relative-position bias [buckets, N] is
  # split by head, as the logits it is added to are; RMSNorm scales are replicated.
  PARAM_AXES = (
      (r"attn/(q|k|v)_proj/kernel$", ("embed", "heads", None)),
      (r"attn/o_proj/kernel$", ("heads", None, "embed")),
      (r"ffn/(up|gate)/kernel$", ("embed", "mlp")),
      (r"ffn/down/kernel$", ("mlp", "embed")),
      (r"^embed/embedding$", ("vocab", "embed")),
      (r"_pos/table/embedding$", (None, "heads")),  # relative: [buckets, N]
      (r"_pos/embed/embedding$", (None, "embed")),  # positions="learned": [max_len, D]
      (r"(scale|bias)$", (None,)),
  )

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D = cfg.d_model
    make_norm = functools.partial(norms.make_norm, cfg.norm, D, epsilon=cfg.norm_eps,
                                  use_bias=False, rngs=rngs)
    self.embed = nnx.Embed(cfg.vocab_size, D,
                           embedding_init=nnx.initializers.normal(cfg.embed_init_std), rngs=rngs)
    if cfg.positions == "relative":
      rel = functools.partial(RelativePositionBias, cfg.num_heads, num_buckets=cfg.num_buckets,
                              max_distance=cfg.max_distance, rngs=rngs)
      self.enc_pos, self.dec_pos = rel(bidirectional=True), rel(bidirectional=False)
    else:
      learned = functools.partial(positions.LearnedPositions, cfg.max_len, D, rngs=rngs)
      self.enc_pos, self.dec_pos = learned(), learned()
    enc = []
    for _ in range(cfg.num_layers):
      attn = attention.MultiHeadAttention(D, cfg.num_heads, head_dim=cfg.head_size, rngs=rngs)
      mlp = ffn.make_ffn(cfg.ffn, D, cfg.d_ff, use_bias=False, rngs=rngs)
      enc.append(block.Block(attn, mlp, make_norm(), make_norm(), placement="pre",
                             dropout_rate=cfg.dropout, rngs=rngs))
    self.encoder = nnx.List(enc)
    self.enc_norm = make_norm()
    self.decoder = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.decoder_layers)])
    self.dec_norm = make_norm()
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def _check_len(self, what: str, n: int) -> None:
    if self.cfg.positions == "learned" and n > self.cfg.max_len:
      raise ValueError(f"{what} of {n} tokens exceeds max_len={self.cfg.max_len}")

  def encode(self, tokens_BS: Array, valid_BS: Array | None = None) -> Array:
    """Encoder output [B, S, D]; `valid_BS` (bool, True = real token) masks padded keys."""
    _check_tokens("encoder tokens", tokens_BS)
    B, S = tokens_BS.shape
    self._check_len("encoder input", S)
    if valid_BS is not None and valid_BS.shape != (B, S):
      raise ValueError(f"valid_BS must have the encoder tokens' shape {(B, S)}, got "
                       f"{valid_BS.shape}")
    pos_BS = jnp.broadcast_to(jnp.arange(S), (B, S))
    x_BSD = self.embed(tokens_BS)
    kwargs = {"is_causal": False}
    if valid_BS is not None:
      kwargs["mask"] = valid_BS.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    if self.cfg.positions == "relative":
      kwargs["bias"] = self.enc_pos(pos_BS, pos_BS)  # shared by every encoder layer
    else:
      x_BSD = x_BSD + self.enc_pos(pos_BS)
    x_BSD = self.dropout(x_BSD)
    for layer in self.encoder:
      x_BSD, _, _ = layer(x_BSD, **kwargs)
    return self.dropout(self.enc_norm(x_BSD))

  def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> list:
    """One `KVCache` [B, max_len, N, H] per decoder layer (for the self-attention)."""
    self._check_len("cache", max_len)
    cfg = self.cfg
    return [kv_cache.KVCache.init(batch, max_len, cfg.num_heads, cfg.head_size, dtype)
            for _ in range(cfg.decoder_layers)]

  def decode(self, tokens_BT: Array, memory_BSD: Array, memory_valid_BS: Array | None = None, *,
             positions_BT: Array | None = None, caches: list | None = None):
    """Decoder logits [B, T, V]; with `caches` (and explicit positions), (logits, caches)."""
    _check_tokens("decoder tokens", tokens_BT)
    cfg = self.cfg
    B, T = tokens_BT.shape
    if memory_BSD.ndim != 3 or memory_BSD.shape[0] != B:
      raise ValueError(f"memory must be [B={B}, S, D], got {memory_BSD.shape}")
    if positions_BT is None:
      if caches is not None:
        raise ValueError("decoding with caches needs explicit positions_BT")
      self._check_len("decoder input", T)
      positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD = self.embed(tokens_BT)
    bias = None
    if cfg.positions == "relative":
      # With a cache the keys are the cache slots 0..S_max−1 (the mask hides the unwritten).
      k_pos_BS = (positions_BT if caches is None else
                  jnp.broadcast_to(jnp.arange(caches[0].max_len), (B, caches[0].max_len)))
      bias = self.dec_pos(positions_BT, k_pos_BS)
    else:
      x_BTD = x_BTD + self.dec_pos(positions_BT)
    x_BTD = self.dropout(x_BTD)
    new_caches = []
    for i, layer in enumerate(self.decoder):
      x_BTD, c = layer(x_BTD, memory_BSD, memory_valid_BS=memory_valid_BS,
                       positions_BT=positions_BT, bias=bias,
                       cache=None if caches is None else caches[i])
      new_caches.append(c)
    x_BTD = self.dropout(self.dec_norm(x_BTD))
    # Tied output: rescale by D^-1/2 first (T5), so unit-variance embeddings give O(1) logits.
    logits_BTV = self.embed.attend(x_BTD * cfg.d_model ** -0.5).astype(jnp.float32)
    return logits_BTV if caches is None else (logits_BTV, new_caches)

  def __call__(self, enc_tokens_BS: Array, dec_tokens_BT: Array,
               enc_valid_BS: Array | None = None) -> Array:
    """Teacher forcing: decoder input = the target shifted right (start token first)."""
    memory_BSD = self.encode(enc_tokens_BS, enc_valid_BS)
    return self.decode(dec_tokens_BT, memory_BSD, enc_valid_BS)


def greedy_decode(model: T5, enc_tokens_BS: Array, num_steps: int, *, start_id: int,
                  enc_valid_BS: Array | None = None, use_cache: bool = True):
  """Greedy decoding of `num_steps` tokens; returns (tokens [B, n] int32, logits [B, n, V]).

  Logits row t is the distribution token t was the arg-max of. With `use_cache`, each step feeds
  one token and the decoder's self-attention reads the `KVCache` (a `lax.scan` over steps);
  otherwise each step recomputes the whole prefix (the fp32 reference the cache must match; a
  Python loop). The model must be in eval mode (no dropout RNG inside the scan). No early stop
  at an end token: callers cut at their end token.
  """
  _check_tokens("encoder tokens", enc_tokens_BS)
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0 <= start_id < model.cfg.vocab_size:
    raise ValueError(f"start_id={start_id} is outside the vocabulary 0..{model.cfg.vocab_size - 1}")
  B = enc_tokens_BS.shape[0]
  memory_BSD = model.encode(enc_tokens_BS, enc_valid_BS)  # once, for every step
  start_B = jnp.full((B,), start_id, jnp.int32)
  if use_cache:
    # One fixed-shape step, scanned: compiled once whatever num_steps is.
    def step(carry, t):
      tok_B, caches = carry
      logits_B1V, caches = model.decode(tok_B[:, None], memory_BSD, enc_valid_BS,
                                        positions_BT=jnp.full((B, 1), t, jnp.int32),
                                        caches=caches)
      last_BV = logits_B1V[:, 0]
      new_B = jnp.argmax(last_BV, axis=-1).astype(jnp.int32)
      return (new_B, caches), (new_B, last_BV)

    caches = model.init_cache(B, num_steps, memory_BSD.dtype)
    _, (tokens_NB, logits_NBV) = jax.lax.scan(step, (start_B, caches), jnp.arange(num_steps))
    return tokens_NB.T, jnp.transpose(logits_NBV, (1, 0, 2))
  prefix_BT = start_B[:, None]
  logits, tokens = [], []
  for _ in range(num_steps):  # the reference: the whole prefix again at every step
    last_BV = model.decode(prefix_BT, memory_BSD, enc_valid_BS)[:, -1]
    tok_B = jnp.argmax(last_BV, axis=-1).astype(jnp.int32)
    logits.append(last_BV)
    tokens.append(tok_B)
    prefix_BT = jnp.concatenate([prefix_BT, tok_B[:, None]], axis=1)
  return jnp.stack(tokens, axis=1), jnp.stack(logits, axis=1)
