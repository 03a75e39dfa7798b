"""The GPT's prefix-embedding / prefix-LM slots and the LLaVA-style VLM (2304.08485)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.transformers import gpt, vlm

V, D, C, M = 23, 32, 12, 4   # vocab, LM width, vision width, image tokens
CFG = gpt.GPTConfig(vocab_size=V, context_len=24, num_layers=2, d_model=D, num_heads=4)
# Two rows of BOS q q (q) ? answer EOS PAD..: prompt lengths 4 and 5 (ragged), T = 8.
INPUTS = jnp.array([[1, 5, 6, 7, 9, 2, 0, 0], [1, 8, 10, 11, 12, 9, 2, 0]])
TARGETS = jnp.concatenate([INPUTS[:, 1:], jnp.zeros((2, 1), INPUTS.dtype)], axis=1)
PROMPT_LEN = jnp.array([4, 5])
# 1 exactly where the target is the answer (index prompt_len - 1) or the final EOS.
LOSS_MASK = jnp.array([[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0]], jnp.float32)


def lm(positions="learned"):
  return gpt.GPT(gpt.GPTConfig(**{**CFG.__dict__, "positions": positions}), rngs=nnx.Rngs(0))


def llava(kind="mlp"):
  return vlm.LLaVA(lm(), vlm.Projector(kind, C, D, rngs=nnx.Rngs(1)))


def image(seed=0, B=2):
  return jax.random.normal(jax.random.key(seed), (B, M, C))


FWD = nnx.jit(lambda m, z, t, n: m(z, t, n))
HIDDEN = nnx.jit(lambda m, z, t, n: m.lm.hidden_states(
    t, prefix_embeds_BPD=m.projector(z), bidirectional_len_B=M + n))


# -- the GPT slots -------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi"])
def test_prefix_embeddings_of_tokens_equal_the_tokens(positions):
  model = lm(positions)
  P = 3
  full = model(INPUTS)
  prefix = model.embed(INPUTS[:, :P])
  got = model(INPUTS[:, P:], prefix_embeds_BPD=prefix)
  assert got.shape == (2, INPUTS.shape[1] - P, V)
  np.testing.assert_allclose(got, full[:, P:], rtol=1e-5, atol=1e-5)
  # explicit positions count from the first real token, as with a soft prompt
  pos = jnp.broadcast_to(jnp.arange(INPUTS.shape[1] - P), (2, INPUTS.shape[1] - P))
  np.testing.assert_array_equal(model(INPUTS[:, P:], prefix_embeds_BPD=prefix, positions_BT=pos),
                                got)


def test_prefix_lm_mask_of_length_one_or_zero_is_the_causal_mask_bitwise():
  # s < 1 adds only key 0, which every query sees causally anyway: bit-identical to the plain
  # causal call (and so to the GPT before the slots, whose tests all still pass).
  model = lm()
  plain = model(INPUTS)
  for n in (0, 1):
    got = model(INPUTS, bidirectional_len_B=jnp.full((2,), n))
    np.testing.assert_array_equal(got, plain)
  assert not np.array_equal(model(INPUTS, bidirectional_len_B=jnp.array([3, 3])), plain)


def test_full_bidirectional_prefix_is_every_position_seeing_every_other():
  model = lm()
  T = INPUTS.shape[1]
  h = model.hidden_states(INPUTS, bidirectional_len_B=jnp.full((2,), T))
  h2 = model.hidden_states(INPUTS.at[:, -1].set(3), bidirectional_len_B=jnp.full((2,), T))
  assert np.all(np.abs(np.asarray(h - h2))[:, 0].max(-1) > 1e-6)   # position 0 sees the last


# -- the prefix-LM properties of the VLM (ragged prompt lengths 4 and 5) ------------------------


def test_image_and_prompt_positions_get_zero_loss_gradient():
  model = llava()
  logits = FWD(model, image(), INPUTS, PROMPT_LEN)
  g = jax.grad(lambda lg: vlm.answer_loss(lg, TARGETS, LOSS_MASK))(logits)
  gnorm_BT = np.abs(np.asarray(g)).sum(-1)
  assert np.all(gnorm_BT[LOSS_MASK == 0] == 0.0)     # exactly zero off the answer
  assert np.all(gnorm_BT[LOSS_MASK == 1] > 0.0)
  # ... and the loss does not read the targets there (image positions have no logits at all)
  other = jnp.where(LOSS_MASK == 1, TARGETS, (TARGETS + 7) % V)
  assert float(vlm.answer_loss(logits, other, LOSS_MASK)) == float(
      vlm.answer_loss(logits, TARGETS, LOSS_MASK))
  assert logits.shape == (2, INPUTS.shape[1], V)
  # the image does reach the answer: a different image changes the answer logits
  other_img = FWD(model, image(1), INPUTS, PROMPT_LEN)
  assert float(jnp.max(jnp.abs(other_img - logits)[LOSS_MASK == 1])) > 1e-6


def test_answer_is_causal_and_prompt_is_bidirectional_per_row():
  model = llava()
  z = image()
  h = HIDDEN(model, z, INPUTS, PROMPT_LEN)
  # Change input position 4: row 0's answer token (its prompt is 0..3), row 1's last prompt
  # token ("?", prompt 0..4).
  h2 = HIDDEN(model, z, INPUTS.at[:, 4].set(13), PROMPT_LEN)
  diff_BT = np.abs(np.asarray(h2 - h)).max(-1)
  # row 0: causal there: positions 0..3 (prompt) unchanged exactly, 4.. changed
  assert np.all(diff_BT[0, :4] == 0.0) and np.all(diff_BT[0, 4:6] > 1e-6)
  # row 1: the first prompt position sees the last prompt token (bidirectional)
  assert np.all(diff_BT[1, :5] > 1e-6)
  # a later answer token (EOS input of row 1 at 6) does not change earlier answer logits
  h3 = HIDDEN(model, z, INPUTS.at[1, 6].set(14), PROMPT_LEN)
  d3 = np.abs(np.asarray(h3 - h)).max(-1)
  assert np.all(d3[1, :6] == 0.0) and d3[1, 6] > 1e-6 and np.all(d3[0] == 0.0)


# -- projector, counts, errors -------------------------------------------------------------------


@pytest.mark.parametrize("kind", vlm.PROJECTORS)
def test_projector_and_trainable_parameter_counts_by_hand(kind):
  abstract = jax.eval_shape(lambda: llava(kind))
  n_proj = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.projector, nnx.Param)))
  hand = C * D + D + (D * D + D if kind == "mlp" else 0)
  assert n_proj == hand == vlm.projector_param_count(kind, C, D)
  n_lm = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.lm, nnx.Param)))
  assert n_lm == gpt.param_count(CFG)
  # stage 1 trains the projector only; stage 2 projector + LM
  n_all = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n_all == hand + gpt.param_count(CFG)


def test_bad_inputs_one_line_each():
  model = llava("linear")
  with pytest.raises(ValueError, match=r"^image features \[2, 4, 7\] do not fit the projector: "
                     r"it expects \[B, M, 12\] \(the vision tower's width\), got width 7$"):
    model(jnp.zeros((2, M, 7)), INPUTS, PROMPT_LEN)
  with pytest.raises(ValueError, match="^unknown projector 'conv'; valid choices: linear, mlp$"):
    vlm.Projector("conv", C, D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="projector outputs width 16 but the LM's d_model is 32"):
    vlm.LLaVA(lm(), vlm.Projector("linear", C, 16, rngs=nnx.Rngs(0)))
  base = lm()
  with pytest.raises(ValueError, match=r"prefix_embeds_BPD must be \[B=2, P, D=32\]"):
    base(INPUTS, prefix_embeds_BPD=jnp.zeros((2, 3, 8)))
  with pytest.raises(ValueError, match=r"bidirectional_len_B must be \[B=2\]"):
    base(INPUTS, bidirectional_len_B=jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="media_BMD given but the model has no cross-attention"):
    base(INPUTS, media_BMD=jnp.zeros((2, 3, D)))
  with pytest.raises(ValueError, match="exceeds context_len=24"):
    base(INPUTS, prefix_embeds_BPD=jnp.zeros((2, 20, D)))
