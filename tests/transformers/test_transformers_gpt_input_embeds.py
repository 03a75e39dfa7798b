"""Tests for `gpt.GPT.hidden_states(..., input_embeds_BTD=...)`: the seam through which textual
inversion (2208.01618) feeds a learned word embedding in place of a token's table row."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import gpt

KEY = functools.partial(jax.random.key, impl="rbg")
TINY = gpt.GPTConfig(vocab_size=11, context_len=8, num_layers=2, d_model=16, num_heads=4)
VARIANTS = {
    "gpt2": {},
    "modern": dict(positions="rope", norm="rmsnorm", ffn="swiglu", use_bias=False,
                   tie_embeddings=False),
    "sinusoidal_post": dict(positions="sinusoidal", norm_placement="post"),
}


def _model(name):
  return gpt.GPT(dataclasses.replace(TINY, **VARIANTS[name]), rngs=nnx.Rngs(KEY(0)))


def _tokens(B=3, T=6, seed=1):
  return jax.random.randint(KEY(seed), (B, T), 0, TINY.vocab_size)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_own_embeddings_reproduce_the_token_path_bit_for_bit(name):
  model, tok = _model(name), _tokens()
  ref = model.hidden_states(tok)
  got = model.hidden_states(tok, input_embeds_BTD=model.embed(tok))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_substituting_another_tokens_row_equals_feeding_that_token(name):
  """Replacing the embedding at (row b, position t) by the table row of token u is the same
  model as the token sequence with u at (b, t): an independent reference for the seam."""
  model, tok = _model(name), _tokens()
  where = np.zeros(tok.shape, bool)
  where[0, 2] = where[2, 4] = True           # different positions in different rows; row 1 kept
  new_tok = jnp.where(where, (tok + 3) % TINY.vocab_size, tok)
  embeds = jnp.where(where[..., None], model.embed(new_tok), model.embed(tok))
  got = model.hidden_states(tok, input_embeds_BTD=embeds)
  np.testing.assert_allclose(np.asarray(got), np.asarray(model.hidden_states(new_tok)),
                             rtol=0, atol=1e-6)


def test_a_replaced_position_changes_only_itself_and_later_positions():
  """Causal tower: a new vector at (b, t) leaves positions < t of row b and every other row
  bit-identical, and changes position t itself."""
  model, tok = _model("gpt2"), _tokens()
  base = model.hidden_states(tok)
  v_D = jax.random.normal(KEY(7), (TINY.d_model,))
  embeds = model.embed(tok).at[1, 3].set(v_D)
  got = np.asarray(model.hidden_states(tok, input_embeds_BTD=embeds))
  base = np.asarray(base)
  np.testing.assert_array_equal(got[[0, 2]], base[[0, 2]])
  np.testing.assert_array_equal(got[1, :3], base[1, :3])
  assert np.abs(got[1, 3:] - base[1, 3:]).min(axis=-1).min() > 0


def test_the_table_gets_no_gradient_when_embeddings_are_given():
  """The gradient reaches the given vectors, and none reaches the embedding table."""
  model, tok = _model("gpt2"), _tokens()
  embeds = model.embed(tok)

  def loss(m, e):
    return jnp.sum(m.hidden_states(tok, input_embeds_BTD=e) ** 2)

  g_model, g_embeds = nnx.grad(loss, argnums=(0, 1))(model, embeds)
  assert float(jnp.abs(g_model["embed"]["embedding"][...]).max()) == 0.0
  assert float(jnp.abs(g_embeds).max()) > 0
  g_plain = nnx.grad(lambda m: jnp.sum(m.hidden_states(tok) ** 2))(model)
  assert float(jnp.abs(g_plain["embed"]["embedding"][...]).max()) > 0


@pytest.mark.parametrize("shape", [(3, 6, 8), (3, 5, 16), (2, 6, 16), (6, 16)])
def test_wrong_shape_is_one_clear_error(shape):
  model, tok = _model("gpt2"), _tokens()
  with pytest.raises(ValueError, match=r"input_embeds_BTD must be \[B=3, T=6, D=16\]"):
    model.hidden_states(tok, input_embeds_BTD=jnp.zeros(shape))
