"""BERT: a bidirectional transformer encoder trained as a masked language model (Devlin et al.
2018, arXiv:1810.04805).

Embeddings are token + learned position (+ segment, when `type_vocab_size` > 0), then LayerNorm
(sec. 3, fig. 2 of 1810.04805); the encoder is a stack of post-norm blocks (`block.Block`, the
original Transformer placement BERT kept) whose attention is *not* causal: every position sees
every real (non-padded) position. The MLM head is BERT's: dense D → D, GELU, LayerNorm, then
logits against the input embedding table (tied) plus a per-token bias. Masking follows sec. 3.1
(`mask_tokens`): 15 % of the positions are predicted; of those 80 % become [MASK], 10 % a random
token, 10 % stay unchanged. No next-sentence head and no pooler: the MLM objective only.

Defaults are BERT-base with its 30,522-token vocabulary: 109,514,298 parameters, the count of
HF `BertForMaskedLM` (bert-base-uncased), which has the same layout.
"""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from genfm.transformers import attention, block, ffn, norms, positions

Array = jax.Array
POSITIONS = ("learned", "sinusoidal", "alibi")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Defaults are BERT-base (L = 12, D = 768, N = 12, F = 3072, 512 positions, 2 segments)."""

  vocab_size: int = 30522
  max_len: int = 512
  # "learned": BERT's table. "sinusoidal": fixed, sec. 3.5 of 1706.03762. "alibi": no table, a
  # bias −m_n·|i − j| on the logits (2108.12409; MosaicBERT, 2312.17482, trains BERT with it).
  positions: str = "learned"
  type_vocab_size: int = 2  # segment (sentence A/B) embeddings; 0 = none
  num_layers: int = 12
  d_model: int = 768
  num_heads: int = 12
  d_ff: int | None = None  # None = 4·D
  norm_placement: str = "post"  # BERT is post-norm; "pre" adds a final LayerNorm
  norm_eps: float = 1e-12  # BERT's LayerNorm epsilon
  dropout: float = 0.1
  init_std: float = 0.02

  def __post_init__(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"unknown positions {self.positions!r}; valid choices: "
                       f"{', '.join(POSITIONS)}")
    if self.positions == "sinusoidal" and self.d_model % 2:
      raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
    if self.norm_placement not in block.PLACEMENTS:
      raise ValueError(f"unknown norm_placement {self.norm_placement!r}; valid choices: "
                       f"{', '.join(block.PLACEMENTS)}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if min(self.vocab_size, self.max_len, self.num_layers, self.d_model) < 1:
      raise ValueError("vocab_size, max_len, num_layers and d_model must be >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def ffn_dim(self) -> int:
    return 4 * self.d_model if self.d_ff is None else self.d_ff


def param_count(cfg: BertConfig) -> int:
  """Parameters by hand (all matrices have biases, all norms are LayerNorms with a bias)."""
  D, F, V = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
  table = cfg.max_len if cfg.positions == "learned" else 0
  embed = (V + table + cfg.type_vocab_size) * D + 2 * D  # tables + embedding LayerNorm
  layer = (4 * D * D + 4 * D) + (2 * D * F + F + D) + 2 * 2 * D  # attention, FFN, 2 LayerNorms
  final = 2 * D if cfg.norm_placement == "pre" else 0
  head = (D * D + D) + 2 * D + V  # transform dense + LayerNorm + output bias (decoder is tied)
  return embed + cfg.num_layers * layer + final + head


class Bert(nnx.Module):
  """tokens [B, T] → MLM logits [B, T, V] (fp32); `encode` gives the hidden states [B, T, D]."""

  # Logical axes of every parameter (`genfm.foundations.partitioning`; GSPMD, 2105.04663).
  # Megatron split (1909.08053 sec. 3): q/k/v [D, N, H] and FFN up [D, F] are column-parallel
  # (their output heads / hidden units on `model`), the out-projection [N, H, D] and FFN down
  # [F, D] row-parallel (their input on `model`): one all-reduce per sublayer. `embed` (FSDP,
  # 1910.02054) is the width D of every matrix. The tied table is split by vocabulary rows, so
  # the MLM logits come out vocabulary-parallel. Biases and LayerNorms are replicated.
  PARAM_AXES = (
      (r"attn/(q|k|v)_proj/kernel$", ("embed", "heads", None)),
      (r"attn/o_proj/kernel$", ("heads", None, "embed")),
      (r"attn/(q|k|v)_proj/bias$", (None, None)),  # [N, H]
      (r"ffn/up/kernel$", ("embed", "mlp")),
      (r"ffn/down/kernel$", ("mlp", "embed")),
      (r"^embed/embedding$", ("vocab", "embed")),
      (r"^(pos_embed/embed|type_embed)/embedding$", (None, "embed")),  # positions, segments
      (r"^head_dense/kernel$", ("embed", None)),  # D → D transform of the MLM head
      (r"(scale|bias)$", (None,)),  # LayerNorms, biases, the MLM head's output bias [V]
  )

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D = cfg.d_model
    init = nnx.initializers.normal(cfg.init_std)
    make_norm = functools.partial(norms.LayerNorm, D, epsilon=cfg.norm_eps, rngs=rngs)
    self.embed = nnx.Embed(cfg.vocab_size, D, embedding_init=init, rngs=rngs)
    self.pos_embed = (positions.LearnedPositions(cfg.max_len, D, embedding_init=init, rngs=rngs)
                      if cfg.positions == "learned" else None)
    self.type_embed = (nnx.Embed(cfg.type_vocab_size, D, embedding_init=init, rngs=rngs)
                       if cfg.type_vocab_size else None)
    self.embed_norm = make_norm()
    layers = []
    for _ in range(cfg.num_layers):
      attn = attention.MultiHeadAttention(D, cfg.num_heads, use_bias=True, kernel_init=init,
                                          rngs=rngs)
      mlp = ffn.GeluMLP(D, cfg.ffn_dim, use_bias=True, kernel_init=init, rngs=rngs)
      layers.append(block.Block(attn, mlp, make_norm(), make_norm(),
                                placement=cfg.norm_placement, dropout_rate=cfg.dropout, rngs=rngs))
    self.layers = nnx.List(layers)
    self.final_norm = make_norm() if cfg.norm_placement == "pre" else None
    # MLM head ("cls.predictions" of the reference code): transform, then the tied decoder.
    self.head_dense = nnx.Linear(D, D, kernel_init=init, rngs=rngs)
    self.head_norm = make_norm()
    self.head_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def _check(self, tokens_BT: Array, valid_BT: Array | None, segments_BT: Array | None):
    cfg = self.cfg
    if tokens_BT.ndim != 2 or not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
      raise ValueError(
          f"tokens must be an integer array [B, T], got {tokens_BT.dtype}{tokens_BT.shape}")
    if tokens_BT.shape[1] > cfg.max_len:
      raise ValueError(f"sequence of {tokens_BT.shape[1]} tokens exceeds max_len={cfg.max_len}")
    for name, arr in (("valid_BT", valid_BT), ("segments_BT", segments_BT)):
      if arr is not None and arr.shape != tokens_BT.shape:
        raise ValueError(f"{name} must have the tokens' shape {tokens_BT.shape}, got {arr.shape}")
    if segments_BT is not None and self.type_embed is None:
      raise ValueError("segments_BT given but the config has type_vocab_size=0")

  def encode(self, tokens_BT: Array, *, valid_BT: Array | None = None,
             segments_BT: Array | None = None) -> Array:
    """Hidden states [B, T, D]. `valid_BT` (bool, True = real token) masks padded keys."""
    self._check(tokens_BT, valid_BT, segments_BT)
    cfg = self.cfg
    B, T = tokens_BT.shape
    pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD = self.embed(tokens_BT)
    if self.pos_embed is not None:
      x_BTD = x_BTD + self.pos_embed(pos_BT)
    elif cfg.positions == "sinusoidal":  # p_{t+k} is a rotation of p_t: offsets are linear
      x_BTD = x_BTD + positions.sinusoidal(pos_BT, cfg.d_model).astype(x_BTD.dtype)
    if self.type_embed is not None:  # segment A (0) when not given
      x_BTD = x_BTD + self.type_embed(
          jnp.zeros_like(tokens_BT) if segments_BT is None else segments_BT)
    x_BTD = self.dropout(self.embed_norm(x_BTD))  # sum of the three embeddings, fig. 2
    # Padded keys are masked for every query; a padded query still computes something (from
    # the real keys), which callers ignore. Bidirectional: is_causal=False.
    kwargs = {"is_causal": False}
    if valid_BT is not None:
      kwargs["mask"] = valid_BT.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    if cfg.positions == "alibi":  # local from the first step: attention need not learn locality
      kwargs["bias"] = positions.alibi_bias(positions.alibi_slopes(cfg.num_heads), pos_BT, pos_BT)
    for layer in self.layers:
      x_BTD, _, _ = layer(x_BTD, **kwargs)
    if self.final_norm is not None:
      x_BTD = self.final_norm(x_BTD)
    return x_BTD

  def mlm_logits(self, h_BTD: Array) -> Array:
    """BERT's MLM head: LayerNorm(GELU(h W + b)) Eᵀ + b_V, in fp32 (softmax over V)."""
    z_BTD = self.head_norm(jax.nn.gelu(self.head_dense(h_BTD), approximate=False))
    return self.embed.attend(z_BTD).astype(jnp.float32) + self.head_bias[...]

  def __call__(self, tokens_BT: Array, *, valid_BT: Array | None = None,
               segments_BT: Array | None = None) -> Array:
    return self.mlm_logits(self.encode(tokens_BT, valid_BT=valid_BT, segments_BT=segments_BT))


def mask_tokens(key: Array, tokens_BT: Array, *, mask_id: int, num_random: int,
                valid_BT: Array | None = None, mask_rate: float = 0.15,
                probs: tuple[float, float, float] = (0.8, 0.1, 0.1)):
  """BERT's masking (sec. 3.1 and appendix A.1 of 1810.04805); returns (inputs, targets, weights).

  Each row predicts n = max(1, round(mask_rate · #real tokens)) positions chosen uniformly among
  its real tokens (the count rule of the reference `create_pretraining_data.py`). A chosen
  position becomes `mask_id` with probability probs[0], a token drawn uniformly from
  0..num_random−1 with probs[1], and stays unchanged with probs[2]. `targets` are the original
  tokens; `weights` [B, T] float32 is 1 at the chosen positions, 0 elsewhere (and at padding).
  """
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens must be [B, T], got shape {tokens_BT.shape}")
  if not 0.0 < mask_rate <= 1.0:
    raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
  if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
    raise ValueError(f"probs = (mask, random, keep) must be 3 non-negative numbers summing to 1, "
                     f"got {probs}")
  if num_random < 1:
    raise ValueError(f"num_random must be >= 1, got {num_random}")
  B, T = tokens_BT.shape
  valid_BT = jnp.ones((B, T), bool) if valid_BT is None else valid_BT.astype(bool)
  k_pick, k_how, k_rand = jax.random.split(key, 3)
  # A uniformly random subset of n real positions: the n smallest of i.i.d. uniform scores
  # (padding scores 2 > any uniform, so it is never picked while a real token is left).
  score_BT = jnp.where(valid_BT, jax.random.uniform(k_pick, (B, T)), 2.0)
  rank_BT = jnp.argsort(jnp.argsort(score_BT, axis=1), axis=1)
  n_real_B = jnp.sum(valid_BT, axis=1)
  n_B = jnp.maximum(1, jnp.round(mask_rate * n_real_B)).astype(jnp.int32)
  chosen_BT = (rank_BT < n_B[:, None]) & valid_BT
  u_BT = jax.random.uniform(k_how, (B, T))
  to_mask_BT = chosen_BT & (u_BT < probs[0])  # 80 %: [MASK]
  to_random_BT = chosen_BT & (u_BT >= probs[0]) & (u_BT < probs[0] + probs[1])  # 10 %: random
  random_BT = jax.random.randint(k_rand, (B, T), 0, num_random, dtype=tokens_BT.dtype)
  inputs_BT = jnp.where(to_mask_BT, jnp.asarray(mask_id, tokens_BT.dtype), tokens_BT)
  inputs_BT = jnp.where(to_random_BT, random_BT, inputs_BT)  # the other 10 %: unchanged
  return inputs_BT, tokens_BT, chosen_BT.astype(jnp.float32)


def mlm_loss(logits_BTV: Array, targets_BT: Array, weights_BT: Array) -> Array:
  """Mean cross-entropy (nats) over the predicted positions only (weights 1), as BERT's loss."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32),
                                                          targets_BT)
  return jnp.sum(ce_BT * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)
