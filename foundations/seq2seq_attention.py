"""RNN encoder–decoder with additive attention: Bahdanau, Cho & Bengio 2014, arXiv:1409.0473
("Neural Machine Translation by Jointly Learning to Align and Translate").

Encoder (sec. 3.2): a bidirectional GRU over the source embeddings; annotation h_j = [→h_j ; ←h_j]
(width 2D). Decoder (sec. 3.1, App. A.2.2), for target step i = 1..T:

    e_ij = v_aᵀ tanh(W_a s_{i−1} + U_a h_j)        eq. (6)  (alignment model, App. A.1.2)
    α_ij = exp(e_ij) / Σ_k exp(e_ik)               eq. (5)
    c_i  = Σ_j α_ij h_j                            eq. (4)
    s_i  = GRU(s_{i−1}, [E y_{i−1} ; c_i])          eq. (4)'s f; c_i enters every gate (App. A.2.2)
    s_0  = tanh(W_s ←h_1)                          App. A.2.2
    p(y_i | y_<i, x) = softmax(W_o t_i),  t_i = maxout_2(U_o s_i + V_o E y_{i−1} + C_o c_i)

Output layer: the DEEP OUTPUT with a maxout hidden layer (pool 2) of App. A.2.2, reading
(s_i, y_{i−1}, c_i) as eq. (4) of the main text writes g(y_{i−1}, s_i, c_i). (App. A.2.2 writes
U_o s_{i−1}; we follow the main text, s_i, so the logits see the state that has read c_i.)
Biases, which the paper omits "for clarity", are kept: one per sum of projections.

U_a h_j does not depend on i, so `encode` computes it once per source (App. A.1.2) and every
decoder step only adds W_a s_{i−1}. Padded source positions get α_ij = 0 exactly: their scores are
replaced by a large finite negative (−1e30) before the softmax — finite, not −inf, so a row whose
source is all padding gives a uniform softmax instead of 0/0 = NaN — and the weights are then
`where`-zeroed, so even that degenerate row attends to nothing and a padded h_j has no path to the
output (and no gradient). In fp32 exp(−1e30 − max) is already exactly 0; the where makes it so by
construction rather than by underflow.

`use_attention=False` is the same model without the alignment model, the RNNencdec baseline of
the paper (Cho et al., arXiv:1406.1078): the context c_i = c = [→h_{T_x} ; ←h_1] is the encoder's
final state in both directions (each row's own last token), the same for every step; W_a, U_a and
v_a do not exist, everything else (and every width) is identical.

Teacher forcing (`__call__`) scans the recurrent part (attention + GRU) over T and applies the
non-recurrent output layer to all steps at once; `step` is the one-step form used for decoding.
Decoding: `greedy_decode`, and `beam_decode`, which runs `genfm.transformers.beam_search` through
`BeamAdapter`: beam_search only needs a model with `init_cache`, `cfg.{vocab_size, context_len}`
and `model(tokens, positions_BT=, caches=) -> (logits, caches)` whose cache leaves have the B·W
flat rows first — the decoder state s and the encoder memory satisfy that, so beam search is
reused unchanged. It ranks hypotheses of exactly `max_len` tokens by summed log-probability (it
knows no end token); that is exact search order whenever every target has the same length, as in
the dates task (10 characters + <end>), and otherwise scores tokens after <end> too.

Shapes: B batch, S source positions, T target positions, V vocabulary, D GRU width, J = 2D
annotation / context width, A alignment-model width (the paper's n'), R embedding width (m),
O maxout units (l).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.foundations import rnn
from genfm.transformers import beam_search as beam_lib

NEG = -1e30  # masked score: large finite negative, not -inf (see the module docstring)


class Memory(NamedTuple):
  """What the decoder reads from one encoded source batch (every leaf has B first)."""
  h_BSJ: jax.Array      # annotations h_j = [→h_j ; ←h_j]
  uh_BSA: jax.Array     # U_a h_j (+ bias), precomputed once per source — App. A.1.2
  valid_BS: jax.Array   # bool, True at real source tokens
  s0_BD: jax.Array      # s_0 = tanh(W_s ←h_1)
  ctx_BJ: jax.Array     # [→h_{T_x} ; ←h_1]: the fixed context when use_attention=False


def num_params(src_vocab: int, tgt_vocab: int, *, embed_dim: int, hidden_dim: int,
               attention_dim: int, maxout_dim: int, use_attention: bool = True) -> int:
  """Hand formula for `AttentionSeq2Seq`'s parameter count."""
  Vs, Vt, R, D, A, O = src_vocab, tgt_vocab, embed_dim, hidden_dim, attention_dim, maxout_dim
  J = 2 * D
  n = Vs * R + Vt * R                                   # source and target embeddings
  n += 2 * rnn.num_params("gru", R, D)                  # bidirectional encoder
  n += D * D + D                                        # W_s (+ bias)
  n += rnn.num_params("gru", R + J, D)                  # decoder GRU on [E y ; c]
  n += (D + R + J) * 2 * O + 2 * O                      # U_o, V_o, C_o (+ one bias)
  n += O * Vt + Vt                                      # W_o (+ bias)
  if use_attention:
    n += D * A + J * A + A + A                          # W_a, U_a (+ bias), v_a
  return n


class AttentionSeq2Seq(nnx.Module):
  """Bahdanau et al. (1409.0473) RNNsearch; `use_attention=False` gives RNNencdec."""

  def __init__(self, src_vocab: int, tgt_vocab: int, *, embed_dim: int, hidden_dim: int,
               attention_dim: int, maxout_dim: int, use_attention: bool = True,
               rngs: nnx.Rngs):
    for name, v in dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed_dim=embed_dim,
                        hidden_dim=hidden_dim, attention_dim=attention_dim,
                        maxout_dim=maxout_dim).items():
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    R, D, A, O = embed_dim, hidden_dim, attention_dim, maxout_dim
    J = 2 * D
    self.src_vocab, self.tgt_vocab, self.hidden_dim = src_vocab, tgt_vocab, D
    self.use_attention = use_attention
    self.src_embed = nnx.Embed(src_vocab, R, rngs=rngs)
    self.tgt_embed = nnx.Embed(tgt_vocab, R, rngs=rngs)
    self.encoder = rnn.Bidirectional(rnn.GRUCell(R, D, rngs=rngs), rnn.GRUCell(R, D, rngs=rngs))
    self.W_s = nnx.Linear(D, D, rngs=rngs)
    self.decoder = rnn.GRUCell(R + J, D, rngs=rngs)
    if use_attention:
      self.W_a = nnx.Linear(D, A, use_bias=False, rngs=rngs)
      self.U_a = nnx.Linear(J, A, rngs=rngs)
      self.v_a = nnx.Linear(A, 1, use_bias=False, rngs=rngs)
    self.U_o = nnx.Linear(D, 2 * O, rngs=rngs)
    self.V_o = nnx.Linear(R, 2 * O, use_bias=False, rngs=rngs)
    self.C_o = nnx.Linear(J, 2 * O, use_bias=False, rngs=rngs)
    self.W_o = nnx.Linear(O, tgt_vocab, rngs=rngs)

  # -- pieces ---------------------------------------------------------------------------------

  def encode(self, src_BS: jax.Array, src_valid_BS: jax.Array) -> Memory:
    """Bidirectional GRU annotations (sec. 3.2), U_a h_j, s_0 and the no-attention context."""
    if src_BS.ndim != 2 or src_valid_BS.shape != src_BS.shape:
      raise ValueError(f"src must be [B, S] token ids with a [B, S] validity mask, got "
                       f"{src_BS.shape} and {src_valid_BS.shape}")
    valid_BS = src_valid_BS.astype(bool)
    (fwd_BD, bwd_BD), h_BSJ = self.encoder(self.src_embed(src_BS), mask_BT=valid_BS)
    # bwd_BD is ←h_1: the backward scan starts at each row's own last token and ends at j = 1.
    s0_BD = jnp.tanh(self.W_s(bwd_BD))                                    # App. A.2.2
    ctx_BJ = jnp.concatenate([fwd_BD, bwd_BD], axis=-1)
    uh_BSA = (self.U_a(h_BSJ) if self.use_attention                       # App. A.1.2
              else jnp.zeros(h_BSJ.shape[:2] + (0,), h_BSJ.dtype))
    return Memory(h_BSJ, uh_BSA, valid_BS, s0_BD, ctx_BJ)

  def attend(self, s_BD: jax.Array, mem: Memory) -> tuple[jax.Array, jax.Array]:
    """(c_i [B, J], α_i [B, S]) from s_{i−1}; with use_attention=False the fixed context and
    α = 0 everywhere (there is no alignment)."""
    if not self.use_attention:
      return mem.ctx_BJ, jnp.zeros(mem.valid_BS.shape, jnp.float32)
    act_BSA = jnp.tanh(self.W_a(s_BD)[:, None, :] + mem.uh_BSA)
    e_BS = self.v_a(act_BSA)[..., 0]                                      # eq. (6) of 1409.0473
    # fp32 before masking: −1e30 overflows fp16 to −inf (NaN for an all-padded row).
    e_BS = jnp.where(mem.valid_BS, e_BS.astype(jnp.float32), NEG)
    alpha_BS = jax.nn.softmax(e_BS, axis=-1)                              # eq. (5)
    alpha_BS = jnp.where(mem.valid_BS, alpha_BS, 0.0)                     # pads: exactly 0
    c_BJ = jnp.einsum("BS,BSJ->BJ", alpha_BS, mem.h_BSJ)                  # eq. (4)
    return c_BJ, alpha_BS

  def _recur(self, s_BD, emb_BR, mem):
    """One recurrent step: attention from s_{i−1}, then s_i = GRU(s_{i−1}, [E y_{i−1}; c_i])."""
    c_BJ, alpha_BS = self.attend(s_BD, mem)
    s_BD, _ = self.decoder(s_BD, jnp.concatenate([emb_BR, c_BJ], axis=-1))
    return s_BD, c_BJ, alpha_BS

  def output(self, s_BxD, emb_BxR, c_BxJ) -> jax.Array:
    """Deep output with maxout (App. A.2.2): logits = W_o max-pool₂(U_o s + V_o E y + C_o c)."""
    t_Bx2O = self.U_o(s_BxD) + self.V_o(emb_BxR) + self.C_o(c_BxJ)
    t_BxO = jnp.max(t_Bx2O.reshape(t_Bx2O.shape[:-1] + (-1, 2)), axis=-1)  # maxout, pool 2
    return self.W_o(t_BxO)

  def step(self, s_BD: jax.Array, y_prev_B: jax.Array, mem: Memory):
    """One decoder step: (s_i [B, D], logits of y_i [B, V], α_i [B, S]) from s_{i−1}, y_{i−1}."""
    emb_BR = self.tgt_embed(y_prev_B)
    s_BD, c_BJ, alpha_BS = self._recur(s_BD, emb_BR, mem)
    return s_BD, self.output(s_BD, emb_BR, c_BJ), alpha_BS

  # -- teacher forcing --------------------------------------------------------------------------

  def __call__(self, src_BS: jax.Array, dec_in_BT: jax.Array, src_valid_BS: jax.Array):
    """Teacher-forced (logits [B, T, V], α [B, T, S]); dec_in_BT = y shifted right after <start>."""
    if dec_in_BT.ndim != 2 or dec_in_BT.shape[0] != src_BS.shape[0]:
      raise ValueError(f"dec_in must be [B, T] with the source's B, got {dec_in_BT.shape} for "
                       f"source {src_BS.shape}")
    mem = self.encode(src_BS, src_valid_BS)
    emb_BTR = self.tgt_embed(dec_in_BT)
    graphdef, state = nnx.split(self)

    def body(s_BD, emb_BR):
      s_BD, c_BJ, alpha_BS = nnx.merge(graphdef, state)._recur(s_BD, emb_BR, mem)
      return s_BD, (s_BD, c_BJ, alpha_BS)

    _, (s_TBD, c_TBJ, alpha_TBS) = jax.lax.scan(body, mem.s0_BD, jnp.swapaxes(emb_BTR, 0, 1))
    sw = lambda x: jnp.swapaxes(x, 0, 1)
    # The output layer is not recurrent: one batched matmul over all T steps.
    return self.output(sw(s_TBD), emb_BTR, sw(c_TBJ)), sw(alpha_TBS)


# -- decoding -----------------------------------------------------------------------------------

def greedy_decode(model: AttentionSeq2Seq, src_BS: jax.Array, src_valid_BS: jax.Array,
                  max_len: int, *, start_id: int) -> tuple[jax.Array, jax.Array]:
  """Argmax decoding for `max_len` steps: (tokens [B, max_len], α [B, max_len, S])."""
  mem = model.encode(src_BS, src_valid_BS)
  graphdef, state = nnx.split(model)

  def body(carry, _):
    s_BD, y_B = carry
    s_BD, logits_BV, alpha_BS = nnx.merge(graphdef, state).step(s_BD, y_B, mem)
    y_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return (s_BD, y_B), (y_B, alpha_BS)

  y0_B = jnp.full((src_BS.shape[0],), start_id, jnp.int32)
  _, (y_TB, alpha_TBS) = jax.lax.scan(body, (mem.s0_BD, y0_B), None, length=max_len)
  return jnp.swapaxes(y_TB, 0, 1), jnp.swapaxes(alpha_TBS, 0, 1)


@dataclasses.dataclass(frozen=True)
class _BeamConfig:
  vocab_size: int
  context_len: int


class BeamAdapter(nnx.Module):
  """`model` + one source batch in the interface of `transformers.beam_search` (gpt.GPT's):
  the "cache" is {s: decoder state [B, D], mem: the encoder Memory}, every leaf B-first, so
  beam_search's repeat-to-B·W and per-step parent gather apply to it unchanged. The prompt is the
  start token alone (T0 = 1); positions are ignored (an RNN counts steps in its state)."""

  def __init__(self, model: AttentionSeq2Seq, src_BS: jax.Array, src_valid_BS: jax.Array,
               max_len: int):
    self.model = model
    self.src = nnx.Variable(jnp.asarray(src_BS))
    self.src_valid = nnx.Variable(jnp.asarray(src_valid_BS).astype(bool))
    self.cfg = _BeamConfig(model.tgt_vocab, 1 + max_len)

  def init_cache(self, batch_size: int, total: int) -> dict:
    del total  # the recurrent state has no length axis
    if batch_size != self.src[...].shape[0]:
      raise ValueError(f"batch {batch_size} != source batch {self.src[...].shape[0]}")
    mem = _encode(self.model, self.src[...], self.src_valid[...])
    return {"s": mem.s0_BD, "mem": mem}

  def __call__(self, tokens_BT: jax.Array, *, positions_BT=None, caches: dict):
    del positions_BT
    if tokens_BT.shape[1] != 1:
      raise ValueError(f"the recurrent decoder takes one token per call (prompt = <start>), got "
                       f"{tokens_BT.shape[1]}")
    s_BD, logits_BV, _ = self.model.step(caches["s"], tokens_BT[:, 0], caches["mem"])
    return logits_BV[:, None], {"s": s_BD, "mem": caches["mem"]}


@nnx.jit
def _encode(model, src_BS, valid_BS):
  return model.encode(src_BS, valid_BS)


def beam_decode(model: AttentionSeq2Seq, src_BS: jax.Array, src_valid_BS: jax.Array,
                max_len: int, *, start_id: int, beam_width: int) -> tuple[jax.Array, jax.Array]:
  """Beam search over exactly `max_len` target tokens via `transformers.beam_search`:
  (tokens [B, W, max_len] best first, summed log-probabilities [B, W]). Host-side (not jittable:
  beam_search loops in Python around jitted steps)."""
  B = src_BS.shape[0]
  adapter = BeamAdapter(model, src_BS, src_valid_BS, max_len)
  prompt_B1 = jnp.full((B, 1), start_id, jnp.int32)
  tokens_BWT, scores_BW = beam_lib.beam_search(adapter, prompt_B1, max_len, beam_width=beam_width)
  return tokens_BWT[:, :, 1:], scores_BW
