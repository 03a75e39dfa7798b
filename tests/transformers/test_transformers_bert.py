"""Tests for genfm.transformers.bert: parameter counts, shapes, bidirectionality (vs GPT's
causality), padding invariance, the 80/10/10 masking statistics, the MLM loss."""

import dataclasses
import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import bert, gpt

KEY = functools.partial(jax.random.key, impl="rbg")  # cheap to compile on CPU
TINY = bert.BertConfig(vocab_size=11, max_len=8, type_vocab_size=2, num_layers=2, d_model=16,
                       num_heads=4, dropout=0.0)


def _n_params(cfg):
  params = jax.eval_shape(lambda: nnx.state(bert.Bert(cfg, rngs=nnx.Rngs(KEY(0))), nnx.Param))
  return sum(p.size for p in jax.tree.leaves(params))


def test_bert_base_has_the_published_mlm_parameter_count():
  # HF BertForMaskedLM(bert-base-uncased) holds 109,514,298 parameters in the same layout.
  cfg = bert.BertConfig()
  assert bert.param_count(cfg) == 109_514_298
  assert _n_params(cfg) == 109_514_298


@pytest.mark.parametrize("overrides", [{}, {"type_vocab_size": 0}, {"norm_placement": "pre"},
                                       {"d_ff": 24, "num_layers": 3},
                                       {"positions": "alibi"}, {"positions": "sinusoidal"}])
def test_param_count_equals_hand_formula(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  V, P, D, L, F = 11, 8, 16, cfg.num_layers, cfg.ffn_dim
  # wte + wpe + segments + emb LN; per layer q,k,v,o (+b), LN, fc1 (+b), fc2 (+b), LN;
  # head dense (+b), LN, output bias; a final LN when pre-norm.
  P = P if cfg.positions == "learned" else 0  # sinusoids and ALiBi have no table
  hand = (V + P + cfg.type_vocab_size) * D + 2 * D
  hand += L * (4 * (D * D + D) + 2 * D + (D * F + F) + (F * D + D) + 2 * D)
  hand += (D * D + D) + 2 * D + V + (2 * D if cfg.norm_placement == "pre" else 0)
  assert bert.param_count(cfg) == hand == _n_params(cfg)


def test_shapes():
  model = bert.Bert(TINY, rngs=nnx.Rngs(KEY(0)))
  tokens = jnp.zeros((3, 8), jnp.int32)
  out = jax.eval_shape(lambda t: model(t, valid_BT=t >= 0, segments_BT=t), tokens)
  assert out.shape == (3, 8, 11) and out.dtype == jnp.float32
  chex.assert_shape(jax.eval_shape(model.encode, tokens[:, :5]), (3, 5, 16))


def _grad_wrt_input_rows(model, tokens_T, i, c):
  """d logits[0, i, c] / d (embedding row of each token): [T, D].

  Class c does not occur in the input, so the tied head contributes only to row c and the rows
  of the input tokens receive gradient only through the input embeddings.
  """
  def out(m):
    return m(tokens_T[None])[0, i, c]
  grads = nnx.jit(nnx.grad(out))(model)
  return np.asarray(grads.embed.embedding[...])[np.asarray(tokens_T)]


def test_bert_is_bidirectional_unlike_gpt():
  tokens_T = jnp.arange(6, dtype=jnp.int32)  # distinct tokens: one embedding row per position
  c, i = 10, 2
  g_bert = _grad_wrt_input_rows(bert.Bert(TINY, rngs=nnx.Rngs(KEY(0))), tokens_T, i, c)
  gpt_cfg = gpt.GPTConfig(vocab_size=11, context_len=8, num_layers=2, d_model=16, num_heads=4)
  g_gpt = _grad_wrt_input_rows(gpt.GPT(gpt_cfg, rngs=nnx.Rngs(KEY(0))), tokens_T, i, c)
  later = slice(i + 1, None)
  assert np.all(np.abs(g_bert[later]).max(axis=1) > 1e-6)  # later inputs move BERT's output i
  assert np.all(g_gpt[later] == 0.0)                         # and never GPT's
  assert np.all(np.abs(g_gpt[:i + 1]).max(axis=1) > 1e-6)


@pytest.mark.parametrize("positions", ["learned", "alibi"])
def test_padded_tokens_do_not_change_real_outputs(positions):
  model = bert.Bert(dataclasses.replace(TINY, positions=positions), rngs=nnx.Rngs(KEY(1)))
  tokens = jax.random.randint(KEY(2), (2, 8), 0, 11)
  lengths = jnp.array([5, 8])
  valid = jnp.arange(8)[None] < lengths[:, None]
  other = jnp.where(valid, tokens, (tokens + 3) % 11)  # only padded tokens differ
  assert not np.array_equal(tokens, other)
  forward = nnx.jit(lambda m, t, v: m(t, valid_BT=v))
  a, b = forward(model, tokens, valid), forward(model, other, valid)
  np.testing.assert_allclose(a[valid], b[valid], atol=1e-6, rtol=0)
  # Without the padding mask the same change does reach the real positions.
  no_mask = jnp.ones_like(valid)
  diff = forward(model, tokens, no_mask) - forward(model, other, no_mask)
  assert np.abs(diff)[0, :5].max() > 1e-4


def test_masking_follows_15_percent_and_80_10_10():
  B, T, V = 4000, 40, 20
  tokens = jax.random.randint(KEY(3), (B, T), 0, V)
  lengths = jnp.where(jnp.arange(B) % 2 == 0, T, 20)  # half the rows padded after 20 tokens
  valid = jnp.arange(T)[None] < lengths[:, None]
  inputs, targets, weights = jax.jit(functools.partial(
      bert.mask_tokens, mask_id=V, num_random=V))(KEY(4), tokens, valid_BT=valid)
  inputs, targets, weights, tokens, valid = map(np.asarray, (inputs, targets, weights, tokens,
                                                             valid))
  np.testing.assert_array_equal(targets, tokens)
  chosen = weights == 1.0
  # Exactly round(0.15 · n) per row: 6 of 40, 3 of 20; never a padded position.
  np.testing.assert_array_equal(chosen.sum(1), np.where(np.arange(B) % 2 == 0, 6, 3))
  assert not np.any(chosen & ~valid)
  np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # the rest untouched
  n = chosen.sum()
  masked = inputs[chosen] == V
  same = inputs[chosen] == tokens[chosen]
  replaced = ~masked & ~same
  # A random replacement equals the original with probability 1/V, so P(same) = 0.1 + 0.1/V.
  for got, p in ((masked.mean(), 0.8), (replaced.mean(), 0.1 * (1 - 1 / V)),
                 (same.mean(), 0.1 + 0.1 / V)):
    assert abs(got - p) < 5 * np.sqrt(p * (1 - p) / n), (got, p)
  # Positions are uniform: each column of the full rows is chosen 6/40 of the time.
  col = chosen[::2].mean(0)
  assert np.all(np.abs(col - 0.15) < 5 * np.sqrt(0.15 * 0.85 / (B // 2)))
  # Random replacements are uniform over 0..V-1 (never the [MASK] id).
  counts = np.bincount(inputs[chosen][replaced], minlength=V)
  assert counts.size == V and counts.min() > 0.7 * counts.mean()


def test_mlm_loss_is_the_mean_ce_over_predicted_positions():
  logits = jax.random.normal(KEY(5), (2, 5, 7))
  targets = jax.random.randint(KEY(6), (2, 5), 0, 7)
  weights = jnp.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], jnp.float32)
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  want = (ce * np.asarray(weights)).sum() / 3
  np.testing.assert_allclose(bert.mlm_loss(logits, targets, weights), want, rtol=1e-6)


def test_bad_input_gives_clear_errors():
  model = bert.Bert(TINY, rngs=nnx.Rngs(KEY(0)))
  with pytest.raises(ValueError, match="integer array"):
    model(jnp.zeros((8,), jnp.int32))
  with pytest.raises(ValueError, match="exceeds max_len=8"):
    model(jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="valid_BT must have"):
    model(jnp.zeros((1, 4), jnp.int32), valid_BT=jnp.ones((1, 5), bool))
  with pytest.raises(ValueError, match="valid choices: pre, post"):
    bert.BertConfig(norm_placement="sandwich")
  with pytest.raises(ValueError, match="summing to 1"):
    bert.mask_tokens(KEY(0), jnp.zeros((1, 4), jnp.int32), mask_id=1, num_random=1,
                     probs=(0.8, 0.1, 0.2))
