"""Tests for genfm.transformers.t5: parameter counts (t5-small), relative-position buckets
against a scalar reference, cross-attention against naive math, decoder causality, encoder
padding invariance, cached decoding = teacher forcing, greedy = arg-max of teacher forcing."""

import dataclasses
import functools
import math

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import t5

KEY = functools.partial(jax.random.key, impl="rbg")  # cheap to compile on CPU
# embed_init_std 0.3 (not T5's 1.0): with unit-variance tied embeddings an untrained decoder
# echoes its input token, and greedy decoding would be trivially constant.
TINY = t5.T5Config(vocab_size=13, num_layers=2, num_decoder_layers=2, d_model=16, num_heads=4,
                   d_ff=32, num_buckets=8, max_distance=16, embed_init_std=0.3)
LEARNED = dataclasses.replace(TINY, positions="learned", max_len=16)


def _n_params(cfg):
  params = jax.eval_shape(lambda: nnx.state(t5.T5(cfg, rngs=nnx.Rngs(KEY(0))), nnx.Param))
  return sum(p.size for p in jax.tree.leaves(params))


def test_t5_small_has_60_506_624_params():
  cfg = t5.T5Config()  # t5-small's shapes (published count 60,506,624)
  assert t5.param_count(cfg) == 60_506_624 == _n_params(cfg)


@pytest.mark.parametrize("overrides", [{}, {"positions": "learned", "max_len": 16},
                                       {"ffn": "swiglu", "num_decoder_layers": 3},
                                       {"norm": "layernorm", "head_dim": 8}])
def test_param_count_equals_hand_formula(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  V, D, F, NH = 13, 16, 32, 4 * cfg.head_size
  Le, Ld = 2, cfg.decoder_layers
  n = D  # every norm has a scale only (no biases anywhere in T5)
  mlp = (3 if cfg.ffn == "swiglu" else 2) * D * F
  pos = 8 * 4 if cfg.positions == "relative" else 16 * D
  hand = V * D + Le * (4 * D * NH + mlp + 2 * n) + n + pos
  hand += Ld * (8 * D * NH + mlp + 3 * n) + n + pos
  assert t5.param_count(cfg) == hand == _n_params(cfg)


def _bucket_reference(rel, bidirectional, num_buckets, max_distance):
  """One relative position at a time, in Python floats (T5's rule, written out)."""
  n = -rel
  out = 0
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      out += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return out + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return out + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16)])
def test_relative_buckets_equal_scalar_reference(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  got = np.asarray(t5.relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                               num_buckets=num_buckets, max_distance=max_distance))
  want = [_bucket_reference(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(got, want)
  assert got.min() == 0 and got.max() == num_buckets - 1  # every bucket in range, last reached
  if not bidirectional:
    assert np.all(got[rel > 0] == 0)  # future keys share bucket 0 (they are masked anyway)


def test_shapes():
  model = t5.T5(TINY, rngs=nnx.Rngs(KEY(0)))
  enc, dec = jnp.zeros((3, 7), jnp.int32), jnp.zeros((3, 5), jnp.int32)
  out = jax.eval_shape(lambda e, d: model(e, d, e >= 0), enc, dec)
  assert out.shape == (3, 5, 13) and out.dtype == jnp.float32
  chex.assert_shape(jax.eval_shape(model.encode, enc), (3, 7, 16))
  bias = jax.eval_shape(model.enc_pos, jnp.zeros((3, 5), jnp.int32), jnp.zeros((3, 7), jnp.int32))
  chex.assert_shape(bias, (3, 4, 5, 7))


def test_cross_attention_equals_naive_softmax():
  D, N, H = 8, 2, 4
  attn = t5.CrossAttention(D, N, rngs=nnx.Rngs(KEY(1)))
  x = jax.random.normal(KEY(2), (2, 3, D))
  mem = jax.random.normal(KEY(3), (2, 5, D))
  valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  got = np.asarray(attn(x, mem, memory_valid_BS=valid))
  wq, wk, wv, wo = (np.asarray(p.kernel[...], np.float64) for p in
                    (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
  x, mem = np.asarray(x, np.float64), np.asarray(mem, np.float64)
  want = np.zeros((2, 3, D))
  for b in range(2):
    keys = np.flatnonzero(np.asarray(valid[b]))  # only the real encoder positions
    for n in range(N):
      q = x[b] @ wq[:, n]            # [T, H]
      k = mem[b, keys] @ wk[:, n]    # [S_real, H]
      v = mem[b, keys] @ wv[:, n]
      s = q @ k.T / math.sqrt(H)
      p = np.exp(s - s.max(1, keepdims=True))
      want[b] += (p / p.sum(1, keepdims=True)) @ v @ wo[n]
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY, LEARNED], ids=["relative", "learned"])
def test_decoder_is_causal(cfg):
  """d logits[t, c] / d (embedding row of decoder token t') is exactly 0 for t' > t.

  Decoder tokens are distinct and absent from the encoder input and from class c, so each
  embedding row reaches the output only through its own decoder position.
  """
  model = t5.T5(cfg, rngs=nnx.Rngs(KEY(4)))
  enc = jnp.array([[7, 8, 9, 10]], jnp.int32)
  dec = jnp.array([[0, 1, 2, 3, 4, 5]], jnp.int32)
  c, t = 12, 2

  def out(m):
    return m(enc, dec)[0, t, c]
  rows = np.asarray(nnx.jit(nnx.grad(out))(model).embed.embedding[...])[np.asarray(dec[0])]
  assert np.all(rows[t + 1:] == 0.0)
  assert np.all(np.abs(rows[:t + 1]).max(axis=1) > 1e-6)


def test_encoder_padding_does_not_change_the_decoder():
  model = t5.T5(TINY, rngs=nnx.Rngs(KEY(5)))
  enc = jax.random.randint(KEY(6), (2, 7), 3, 13)
  dec = jax.random.randint(KEY(7), (2, 5), 0, 13)
  valid = jnp.arange(7)[None] < jnp.array([[4], [7]])
  other = jnp.where(valid, enc, (enc + 5) % 13)  # only padded encoder tokens differ
  assert not np.array_equal(enc, other)
  forward = nnx.jit(lambda m, e, v: m(e, dec, v))
  np.testing.assert_allclose(forward(model, enc, valid), forward(model, other, valid),
                             atol=1e-6, rtol=0)
  # The same change without the mask, or a change of a real token, does reach the decoder.
  assert np.abs(forward(model, enc, None) - forward(model, other, None)).max() > 1e-4
  real_change = enc.at[0, 1].set((enc[0, 1] + 1) % 13)
  assert np.abs(forward(model, enc, valid) - forward(model, real_change, valid))[0].max() > 1e-4


def test_teacher_forced_logits_equal_step_by_step_cached_decoding():
  model = t5.T5(TINY, rngs=nnx.Rngs(KEY(8)))
  B, S, T = 2, 6, 5
  enc = jax.random.randint(KEY(9), (B, S), 0, 13)
  valid = jnp.arange(S)[None] < jnp.array([[4], [6]])
  dec = jax.random.randint(KEY(10), (B, T), 0, 13)  # arbitrary (not greedy) teacher tokens

  @nnx.jit
  def stepwise(m, enc, valid, dec):
    memory = m.encode(enc, valid)
    caches, rows = m.init_cache(B, T), []
    for t in range(T):
      logits, caches = m.decode(dec[:, t:t + 1], memory, valid,
                                positions_BT=jnp.full((B, 1), t), caches=caches)
      rows.append(logits[:, 0])
    return jnp.stack(rows, axis=1)

  full = nnx.jit(lambda m, e, d, v: m(e, d, v))(model, enc, dec, valid)
  np.testing.assert_allclose(stepwise(model, enc, valid, dec), full, atol=1e-5, rtol=0)


def test_greedy_decode_is_argmax_of_teacher_forcing_on_its_own_output():
  model = t5.T5(TINY, rngs=nnx.Rngs(KEY(11)))
  enc = jax.random.randint(KEY(12), (3, 6), 3, 13)
  valid = jnp.arange(6)[None] < jnp.array([[6], [3], [5]])
  decode = nnx.jit(functools.partial(t5.greedy_decode, num_steps=5, start_id=1),
                   static_argnames="use_cache")
  tokens, logits = decode(model, enc, enc_valid_BS=valid, use_cache=True)
  ref_tokens, ref_logits = decode(model, enc, enc_valid_BS=valid, use_cache=False)
  np.testing.assert_array_equal(tokens, ref_tokens)  # cache = full recompute
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
  assert len(np.unique(np.asarray(tokens))) > 2  # a non-trivial output to check against
  dec_in = jnp.concatenate([jnp.ones((3, 1), jnp.int32), tokens[:, :-1]], axis=1)
  forced = nnx.jit(lambda m: m(enc, dec_in, valid))(model)
  np.testing.assert_array_equal(jnp.argmax(forced, -1), tokens)
  np.testing.assert_allclose(forced, logits, atol=1e-5, rtol=0)


def test_bad_input_gives_clear_errors():
  model = t5.T5(LEARNED, rngs=nnx.Rngs(KEY(0)))
  enc = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="integer array"):
    model.encode(jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="exceeds max_len=16"):
    model.encode(jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="valid_BS must have"):
    model.encode(enc, jnp.ones((1, 5), bool))
  with pytest.raises(ValueError, match="needs explicit positions_BT"):
    model.decode(enc, jnp.zeros((1, 4, 16)), caches=model.init_cache(1, 4))
  with pytest.raises(ValueError, match="valid choices: relative, learned"):
    t5.T5Config(positions="rope")
  with pytest.raises(ValueError, match="start_id=13"):
    t5.greedy_decode(model, enc, 3, start_id=13)
