"""Bahdanau et al. 2014 (1409.0473) encoder–decoder: attention weights and masking, teacher
forcing = step-by-step decoding, causality, beam search (width 1 = greedy; = exhaustive search on
a tiny vocabulary), parameter counts, no-attention baseline."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import seq2seq_attention as s2s

KW = dict(embed_dim=6, hidden_dim=8, attention_dim=5, maxout_dim=4)
VS, VT = 9, 5
LENGTHS = (6, 3, 1)  # per-row source lengths (right-padded to S = 6)


def _model(use_attention=True, seed=0, **kw):
  return s2s.AttentionSeq2Seq(VS, VT, **{**KW, **kw}, use_attention=use_attention,
                              rngs=nnx.Rngs(seed))


def _batch(T=4, seed=1):
  S = max(LENGTHS)
  k1, k2 = jax.random.split(jax.random.key(seed))
  valid_BS = jnp.arange(S)[None] < jnp.array(LENGTHS)[:, None]
  src_BS = jnp.where(valid_BS, jax.random.randint(k1, (len(LENGTHS), S), 1, VS), 0)
  dec_BT = jax.random.randint(k2, (len(LENGTHS), T), 0, VT)
  return src_BS, valid_BS, dec_BT


@pytest.fixture(scope="module")
def models():
  """Built once per module: {use_attention: model}."""
  return {True: _model(True), False: _model(False)}


@pytest.fixture(scope="module")
def model(models):
  return models[True]


# Jitted once per shape: eager calls would retrace and recompile every lax.scan body per call.
_forward = nnx.jit(lambda m, src, dec, valid: m(src, dec, valid))
_step = nnx.jit(lambda m, s, y, mem: m.step(s, y, mem))
_encode = nnx.jit(lambda m, src, valid: m.encode(src, valid))
_attend = nnx.jit(lambda m, s, mem: m.attend(s, mem))
_greedy = nnx.jit(s2s.greedy_decode, static_argnames=("max_len", "start_id"))


@pytest.mark.parametrize("use_attention", [True, False])
def test_parameter_count_matches_hand_formula(use_attention):
  shapes = nnx.state(nnx.eval_shape(lambda: _model(use_attention)), nnx.Param)
  got = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  R, D, A, O = KW["embed_dim"], KW["hidden_dim"], KW["attention_dim"], KW["maxout_dim"]
  # embeddings; 2 encoder GRUs 3(ID+D²+D); W_s; decoder GRU on [Ey; c]; deep output; W_o.
  want = ((VS + VT) * R + 2 * 3 * (R * D + D * D + D) + D * D + D
          + 3 * ((R + 2 * D) * D + D * D + D) + (D + R + 2 * D) * 2 * O + 2 * O + O * VT + VT)
  if use_attention:
    want += D * A + 2 * D * A + A + A  # W_a, U_a (+ bias), v_a
  assert got == want == s2s.num_params(VS, VT, **KW, use_attention=use_attention)


def test_attention_sums_to_one_and_pads_get_exactly_zero(model):
  src_BS, valid_BS, dec_BT = _batch()
  _, alpha_BTS = _forward(model, src_BS, dec_BT, valid_BS)
  alpha = np.asarray(alpha_BTS)
  np.testing.assert_allclose(alpha.sum(-1), 1.0, atol=1e-6)
  for b, n in enumerate(LENGTHS):
    assert np.all(alpha[b, :, n:] == 0.0), b        # exactly 0, not merely small
    assert np.all(alpha[b, :, :n] > 0.0), b
  np.testing.assert_array_equal(alpha[2, :, 0], 1.0)  # one valid token: all weight on it


def test_all_padded_row_attends_to_nothing_without_nan(model):
  src_BS, valid_BS, _ = _batch()
  mem = _encode(model, src_BS, valid_BS.at[1].set(False))
  c_BJ, alpha_BS = _attend(model, mem.s0_BD, mem)
  assert np.all(np.asarray(alpha_BS[1]) == 0.0) and np.all(np.isfinite(np.asarray(c_BJ)))


def test_changing_a_padded_source_token_changes_nothing(model):
  src_BS, valid_BS, dec_BT = _batch()
  other = jnp.where(valid_BS, src_BS, (src_BS + 3) % VS)  # different ids at every pad
  assert not np.array_equal(other, src_BS)
  for a, b in zip(_forward(model, src_BS, dec_BT, valid_BS),
                  _forward(model, other, dec_BT, valid_BS)):  # (logits, α)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("use_attention", [True, False])
def test_teacher_forcing_equals_step_by_step(models, use_attention):
  m = models[use_attention]
  src_BS, valid_BS, dec_BT = _batch(T=5)
  logits_BTV, alpha_BTS = _forward(m, src_BS, dec_BT, valid_BS)
  mem = _encode(m, src_BS, valid_BS)
  s_BD = mem.s0_BD
  for t in range(dec_BT.shape[1]):  # first and last step included
    s_BD, logits_BV, alpha_BS = _step(m, s_BD, dec_BT[:, t], mem)
    np.testing.assert_allclose(logits_BTV[:, t], logits_BV, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alpha_BTS[:, t], alpha_BS, atol=1e-6)


def test_attention_reference_by_hand(model):
  """eqs. (4)–(6) of 1409.0473 written out per (b, j) in numpy, against `attend`."""
  src_BS, valid_BS, _ = _batch()
  mem = _encode(model, src_BS, valid_BS)
  s_BD = jax.random.normal(jax.random.key(3), mem.s0_BD.shape)
  c_BJ, alpha_BS = _attend(model, s_BD, mem)
  Wa, Ua, ba = (np.asarray(model.W_a.kernel[...]), np.asarray(model.U_a.kernel[...]),
                np.asarray(model.U_a.bias[...]))
  va = np.asarray(model.v_a.kernel[...])[:, 0]
  h, s = np.asarray(mem.h_BSJ), np.asarray(s_BD)
  for b, n in enumerate(LENGTHS):
    e = np.array([va @ np.tanh(s[b] @ Wa + h[b, j] @ Ua + ba) for j in range(n)])
    a = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    np.testing.assert_allclose(alpha_BS[b, :n], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_BJ[b], a @ h[b, :n], rtol=1e-5, atol=1e-5)


def test_initial_state_reads_the_backward_state_at_the_first_token(model):
  """s_0 = tanh(W_s ←h_1) (App. A.2.2): ←h_1 is the backward half of annotation 1, per row."""
  src_BS, valid_BS, _ = _batch()
  mem = _encode(model, src_BS, valid_BS)
  D = KW["hidden_dim"]
  np.testing.assert_allclose(mem.s0_BD, jnp.tanh(model.W_s(mem.h_BSJ[:, 0, D:])), atol=1e-6)
  last = jnp.array(LENGTHS) - 1  # →h_{T_x} at each row's own last token
  np.testing.assert_allclose(mem.ctx_BJ[:, :D], mem.h_BSJ[jnp.arange(3), last, :D], atol=1e-6)


def test_decoder_is_causal_in_the_target(model):
  """d logits[:, t] / d (embedding of decoder input t') is exactly 0 for every t' > t."""
  src_BS, valid_BS, dec_BT = _batch(T=5)
  T = dec_BT.shape[1]
  graphdef, state = nnx.split(model)

  @jax.jit
  def jacobian(e_BTR):
    def out_T(e_BTR):
      m = nnx.merge(graphdef, state)
      m.tgt_embed = _Fixed(e_BTR)  # differentiate w.r.t. the decoder inputs' vectors
      return jnp.sum(m(src_BS, dec_BT, valid_BS)[0], axis=(0, 2))
    return jax.jacrev(out_T)(e_BTR)  # [T (output), B, T (input), R]

  J = np.asarray(jacobian(model.tgt_embed(dec_BT)))
  for t in range(T):
    assert np.all(J[t, :, t + 1:] == 0.0), t
    assert np.any(J[t, :, t] != 0.0), t   # its own input y_{t-1} does matter


class _Fixed(nnx.Module):
  """Stands in for the target embedding: returns given vectors, so we can differentiate them."""

  def __init__(self, e_BTR):
    self.e_BTR = nnx.Variable(e_BTR)

  def __call__(self, ids):
    return self.e_BTR[...]


def test_no_attention_context_is_fixed_and_alignment_free(models):
  m = models[False]
  src_BS, valid_BS, dec_BT = _batch()
  _, alpha_BTS = _forward(m, src_BS, dec_BT, valid_BS)
  assert not hasattr(m, "W_a") and np.all(np.asarray(alpha_BTS) == 0.0)
  mem = _encode(m, src_BS, valid_BS)
  c1, _ = _attend(m, mem.s0_BD, mem)
  c2, _ = _attend(m, mem.s0_BD + 1.0, mem)
  np.testing.assert_array_equal(c1, c2)


def test_beam_width_one_is_greedy(model):
  src_BS, valid_BS, _ = _batch()
  greedy_BT, _ = _greedy(model, src_BS, valid_BS, max_len=4, start_id=1)
  beam_BWT, _ = s2s.beam_decode(model, src_BS, valid_BS, 4, start_id=1, beam_width=1)
  np.testing.assert_array_equal(beam_BWT[:, 0], greedy_BT)


def test_beam_search_matches_exhaustive_search(model):
  """Width V^n on a tiny vocabulary is exhaustive: the best beam and its summed log-probability
  equal the argmax over all V^n sequences scored by teacher forcing."""
  src_BS, valid_BS, _ = _batch()
  n, B = 3, src_BS.shape[0]
  seqs_XN = jnp.array(list(itertools.product(range(VT), repeat=n)), jnp.int32)
  X = seqs_XN.shape[0]
  dec_XN = jnp.concatenate([jnp.ones((X, 1), jnp.int32), seqs_XN[:, :-1]], 1)
  beam_BWT, scores_BW = s2s.beam_decode(model, src_BS, valid_BS, n, start_id=1, beam_width=X)
  # Teacher-forced scores of all X sequences for every source row, one batched call.
  logits_BXNV, _ = _forward(model, jnp.repeat(src_BS, X, 0), jnp.tile(dec_XN, (B, 1)),
                            jnp.repeat(valid_BS, X, 0))
  logp = jax.nn.log_softmax(logits_BXNV).reshape(B, X, n, VT)
  total_BX = np.asarray(jnp.take_along_axis(logp, jnp.broadcast_to(
      seqs_XN[None, ..., None], (B, X, n, 1)), -1)[..., 0].sum(-1))
  for b in range(B):
    best = int(np.argmax(total_BX[b]))
    np.testing.assert_array_equal(beam_BWT[b, 0], seqs_XN[best])
    np.testing.assert_allclose(scores_BW[b, 0], total_BX[b, best], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores_BW[b]), np.sort(total_BX[b])[::-1],
                               rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_one_line(model):
  src_BS, valid_BS, dec_BT = _batch()
  with pytest.raises(ValueError, match="dec_in must be"):
    model(src_BS, dec_BT[0], valid_BS)
  with pytest.raises(ValueError, match="validity mask"):
    model(src_BS, dec_BT, valid_BS[:, :2])
  with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
    _model(hidden_dim=0)
