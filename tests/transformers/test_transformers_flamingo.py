"""Flamingo's gated cross-attention and Perceiver resampler (2204.14198) on the GPT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.transformers import flamingo, gpt

V, D, C = 23, 32, 12     # vocab, LM width, media width
CFG = gpt.GPTConfig(vocab_size=V, context_len=16, num_layers=4, d_model=D, num_heads=4)
TOKENS = jnp.array([[1, 5, 6, 7, 9, 2], [1, 8, 10, 11, 12, 9]])
# Jitted calls: one compile per shape instead of one per op and shape in eager mode.
CALL = nnx.jit(lambda m, *a: m(*a))
LM = nnx.jit(lambda m, t, media: m(t, media_BMD=media))


def media(seed, S=5, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), (2, S, C))


def flamingo_lm(every=2):
  model = gpt.GPT(CFG, rngs=nnx.Rngs(0))
  flamingo.add_cross_attention(model, C, every=every, rngs=nnx.Rngs(1))
  return model


def set_gates(block, a_attn, a_ffn):
  block.alpha_attn[...] = jnp.asarray(a_attn, jnp.float32)
  block.alpha_ffn[...] = jnp.asarray(a_ffn, jnp.float32)


def test_gated_cross_attention_is_exactly_the_identity_at_init():
  block = flamingo.GatedCrossAttention(D, C, 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(9), (2, 6, D))
  for seed, scale in ((0, 1.0), (1, 1e3), (2, 1e-3)):
    np.testing.assert_array_equal(CALL(block, x, media(seed, scale=scale)), x)    # bitwise
  set_gates(block, 0.5, 0.0)       # either gate open → no longer the identity
  assert float(jnp.max(jnp.abs(CALL(block, x, media(0)) - x))) > 1e-4
  set_gates(block, 0.0, 0.5)
  assert float(jnp.max(jnp.abs(CALL(block, x, media(0)) - x))) > 1e-4


def test_gate_alphas_get_gradient_at_init_and_nothing_inside_does():
  block = flamingo.GatedCrossAttention(D, C, 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(9), (2, 6, D))
  grads = nnx.jit(nnx.grad(lambda b: jnp.sum(jnp.sin(b(x, media(0))))))(block)
  assert float(jnp.abs(grads.alpha_attn[...])) > 0 and float(jnp.abs(grads.alpha_ffn[...])) > 0
  inner = nnx.state(grads, nnx.Not(flamingo.GateParam))
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(inner))


def test_flamingo_lm_at_init_is_the_text_lm_bitwise_and_not_after_opening_the_gates():
  model = flamingo_lm()
  base = gpt.GPT(CFG, rngs=nnx.Rngs(0))
  text = CALL(base, TOKENS)
  np.testing.assert_array_equal(CALL(model, TOKENS), text)               # no media
  np.testing.assert_array_equal(LM(model, TOKENS, media(0)), text)
  np.testing.assert_array_equal(LM(model, TOKENS, media(1, S=9, scale=50.0)), text)
  set_gates(model.cross_attn[1], 1.0, 1.0)
  a, b = LM(model, TOKENS, media(0)), LM(model, TOKENS, media(1))
  assert float(jnp.max(jnp.abs(a - text))) > 1e-4 and float(jnp.max(jnp.abs(a - b))) > 1e-4
  # the text stays causal with media: a later token does not change earlier logits
  a2 = LM(model, TOKENS.at[:, -1].set(3), media(0))
  np.testing.assert_array_equal(a2[:, :-1], a[:, :-1])


def test_cross_attention_matches_a_naive_softmax_reference():
  attn = flamingo.CrossAttention(D, C, 4, 8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (2, 6, D))
  y = media(0)
  q = jnp.einsum("BTD,DNH->BTNH", x, attn.q_proj.kernel[...])
  k = jnp.einsum("BSC,CNH->BSNH", y, attn.k_proj.kernel[...])
  v = jnp.einsum("BSC,CNH->BSNH", y, attn.v_proj.kernel[...])
  p = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(8), axis=-1)
  want = jnp.einsum("BTNH,NHD->BTD", jnp.einsum("BNTS,BSNH->BTNH", p, v), attn.o_proj.kernel[...])
  np.testing.assert_allclose(attn(x, y), want, rtol=1e-5, atol=1e-6)


def test_resampler_shape_is_independent_of_the_number_of_media_tokens():
  r = flamingo.PerceiverResampler(C, num_latents=3, num_layers=2, num_heads=4, rngs=nnx.Rngs(0))
  outs = [CALL(r, media(0, S=S)) for S in (1, 7, 50)]
  assert all(o.shape == (2, 3, C) for o in outs)
  # no positions on the media: permuting the media tokens leaves the latents unchanged
  m = media(0, S=7)
  np.testing.assert_allclose(CALL(r, m[:, ::-1]), CALL(r, m), rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(outs[1] - outs[2]))) > 1e-4


def test_parameter_counts_by_hand():
  block = jax.eval_shape(lambda: flamingo.GatedCrossAttention(D, C, 4, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(block, nnx.Param)))
  # 2 LayerNorms 4D, q/o 2·D·D, k/v 2·C·D, MLP 2·D·4D + 4D + D, 2 gates
  assert n == 4 * D + 2 * D * D + 2 * C * D + 8 * D * D + 5 * D + 2 == 11_298
  assert n == flamingo.gated_xattn_param_count(D, C)
  r = jax.eval_shape(lambda: flamingo.PerceiverResampler(C, num_latents=3, num_layers=2,
                                                         rngs=nnx.Rngs(0)))
  n_r = sum(x.size for x in jax.tree.leaves(nnx.state(r, nnx.Param)))
  assert n_r == 3 * C + 2 * (6 * C + 4 * C * C + 8 * C * C + 5 * C) + 2 * C == 3_780
  assert n_r == flamingo.resampler_param_count(C, 3, 2)
  model = jax.eval_shape(flamingo_lm)          # every=2 on 4 layers: blocks before 1 and 3
  assert [b is not None for b in model.cross_attn] == [False, True, False, True]
  n_x = sum(x.size for x in jax.tree.leaves(nnx.state(model.cross_attn, nnx.Param)))
  assert n_x == 2 * flamingo.gated_xattn_param_count(D, C)
  n_all = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n_all == gpt.param_count(CFG) + n_x


def test_bad_inputs_one_line_each():
  with pytest.raises(ValueError, match=r"^image features \[2, 5, 12\] do not fit the resampler: "
                     r"it expects \[B, S, 16\] \(the vision tower's width\)$"):
    flamingo.PerceiverResampler(16, rngs=nnx.Rngs(0))(media(0))
  with pytest.raises(ValueError, match=r"every=5 must be in 1\.\.num_layers=4"):
    flamingo.add_cross_attention(gpt.GPT(CFG, rngs=nnx.Rngs(0)), C, every=5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already has cross-attention"):
    flamingo.add_cross_attention(flamingo_lm(), C, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="media width 7 != the cross-attention's media_dim 12"):
    flamingo_lm()(TOKENS, media_BMD=jnp.zeros((2, 3, 7)))
  with pytest.raises(ValueError, match="no cross-attention layers; call add_cross_attention"):
    flamingo.Flamingo(gpt.GPT(CFG, rngs=nnx.Rngs(0)), flamingo.PerceiverResampler(
        C, rngs=nnx.Rngs(0)))
