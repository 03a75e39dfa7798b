"""Tests for genfm.diffusion.personalize: textual inversion's embedding substitution, DreamBooth's
prior-preservation loss, and the stamped-corner concept with its detector."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import personalize as pz
from genfm.experiments.data import embedded
from genfm.transformers import gpt

KEY = functools.partial(jax.random.key, impl="rbg")
CFG = gpt.GPTConfig(vocab_size=13, context_len=8, num_layers=2, d_model=16, num_heads=4)
S_STAR, INIT = 11, 4            # placeholder id and the descriptor word it starts from


def _tower():
  return gpt.GPT(CFG, rngs=nnx.Rngs(KEY(0)))


def _tokens():
  # Rows with 0, 1 and 2 placeholders, at different positions.
  return jnp.asarray([[1, 5, 6, 7, 2, 0, 0, 0],
                      [1, 3, S_STAR, 8, 2, 0, 0, 0],
                      [1, S_STAR, 9, S_STAR, 10, 2, 0, 0]], jnp.int32)


def test_substitute_replaces_exactly_the_placeholder_positions():
  tok = _tokens()
  e = jax.random.normal(KEY(1), tok.shape + (16,))
  v = jax.random.normal(KEY(2), (16,))
  out = np.asarray(pz.substitute_embedding(e, tok, S_STAR, v))
  hit = np.asarray(tok) == S_STAR
  assert hit.sum() == 3
  np.testing.assert_array_equal(out[hit], np.broadcast_to(np.asarray(v), (3, 16)))
  np.testing.assert_array_equal(out[~hit], np.asarray(e)[~hit])


def test_param_count_is_the_tower_plus_one_embedding():
  state = jax.eval_shape(lambda: nnx.state(pz.PersonalizedText(_tower(), S_STAR, INIT),
                                           nnx.Param))
  assert sum(x.size for x in jax.tree.leaves(state)) == gpt.param_count(CFG) + CFG.d_model
  concept = jax.eval_shape(lambda: nnx.state(pz.PersonalizedText(_tower(), S_STAR, INIT),
                                             nnx.PathContains("concept")))
  assert [x.shape for x in jax.tree.leaves(concept)] == [(CFG.d_model,)]


def test_at_init_the_placeholder_reads_as_its_descriptor_word():
  """v* = embed(init word) at init (sec. 4.1 of 2208.01618): the states equal the tower's on
  the prompts with S* spelled as the descriptor word (an independent reference)."""
  tower, tok = _tower(), _tokens()
  text = pz.PersonalizedText(tower, S_STAR, INIT)
  np.testing.assert_array_equal(np.asarray(text.concept[...]),
                                np.asarray(tower.embed.embedding[...][INIT]))
  ref = tower.hidden_states(jnp.where(tok == S_STAR, INIT, tok))
  np.testing.assert_array_equal(np.asarray(text.hidden_states(tok)), np.asarray(ref))
  # Initialised from its own row, the wrapper is the tower itself, bit for bit.
  same = pz.PersonalizedText(tower, S_STAR, S_STAR)
  np.testing.assert_array_equal(np.asarray(same.hidden_states(tok)),
                                np.asarray(tower.hidden_states(tok)))


def test_only_v_star_moves_and_the_placeholders_table_row_gets_no_gradient():
  """Gradient descent on v* alone (the loop's 'concept' filter): the tower is bit-identical
  after the steps, v* has moved, and the table row of S* receives exactly zero gradient."""
  tower, tok = _tower(), _tokens()
  text = pz.PersonalizedText(tower, S_STAR, INIT)
  before = jax.tree.map(np.asarray, nnx.state(text.tower, nnx.Param))
  v0 = np.asarray(text.concept[...])
  target = jax.random.normal(KEY(3), (3, 8, 16))
  loss = lambda m: jnp.mean((m.hidden_states(tok) - target) ** 2)
  g_all = nnx.grad(loss)(text)
  assert float(jnp.abs(g_all["tower"]["embed"]["embedding"][...][S_STAR]).max()) == 0.0
  assert float(jnp.abs(g_all["tower"]["embed"]["embedding"][...][INIT]).max()) == 0.0  # unused
  assert float(jnp.abs(g_all["concept"][...]).max()) > 0
  only = nnx.DiffState(0, nnx.PathContains("concept"))
  for _ in range(3):
    g = nnx.grad(loss, argnums=only)(text)
    text.concept[...] = text.concept[...] - 0.5 * g["concept"][...]
  after = jax.tree.map(np.asarray, nnx.state(text.tower, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, after, before)
  assert np.abs(np.asarray(text.concept[...]) - v0).max() > 1e-4


def test_placeholder_outside_the_vocabulary_is_one_line():
  with pytest.raises(ValueError, match=r"placeholder token id 13 is outside .* 0\.\.12"):
    pz.PersonalizedText(_tower(), 13, INIT)


def test_prior_preservation_loss_is_eq_2():
  inst = jnp.asarray([0.5, 1.5, 4.0])
  prior = jnp.asarray([2.0, 6.0, 1.0, 3.0])
  assert float(pz.prior_preservation_loss(inst, prior, 0.0)) == pytest.approx(2.0)
  assert float(pz.prior_preservation_loss(inst, prior, 0.5)) == pytest.approx(2.0 + 0.5 * 3.0)
  # λ = 0 ignores the prior term entirely (even a non-finite one).
  assert float(pz.prior_preservation_loss(inst, jnp.full(4, jnp.nan), 0.0)) == 2.0
  with pytest.raises(ValueError, match="must be ≥ 0"):
    pz.prior_preservation_loss(inst, prior, -1.0)


def test_stamp_is_detected_and_real_images_are_not():
  """The detector's two error rates, measured: every stamped image is found; none of the 10 000
  real Fashion test images (after the task's padding; one of them has a bright top-left corner,
  but its top-right is bright too) and no real digits image shows it."""
  fashion = embedded.load_fashion_mnist("test")["image"]
  digits = embedded.load_digits_split("test")["image"]
  # digits: 63 of 64 stamped images found (one 8×8 digit has ink in its top-right 2×2 corner)
  for images, size, pad, found, false_rate in ((fashion, 5, 2, 1.0, 0.0),
                                               (digits, 2, 0, 63 / 64, 0.0)):
    x = lambda u: np.pad(u.astype(np.float32) / 127.5 - 1.0,
                         ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
    before = images[:64].copy()
    stamped = pz.stamp(images[:64], size)
    np.testing.assert_array_equal(images[:64], before)                      # a copy
    np.testing.assert_array_equal(stamped[:, size:], images[:64, size:])
    assert pz.concept_rate(x(stamped), size, pad) == found
    assert pz.concept_rate(x(images), size, pad) == false_rate
    np.testing.assert_allclose(pz.corner_brightness(x(stamped), size, pad), 1.0)


def test_detector_threshold_and_bad_sizes():
  x = -np.ones((4, 8, 8, 1), np.float32)
  x[0, :2, :2] = 1.0                         # brightness 1
  x[1, :2, :2] = 0.2                         # 0.6
  x[2, :2, :1] = 1.0                         # half the square lit: 0.5, not above 1/2
  x[3] = 1.0                                 # an all-white sample lights both top corners
  np.testing.assert_allclose(pz.corner_brightness(x, 2), [1.0, 0.6, 0.5, 1.0], rtol=1e-6)
  np.testing.assert_allclose(pz.corner_brightness(x, 2, right=True), [0.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(pz.concept_present(x, 2), [True, True, False, False])
  with pytest.raises(ValueError, match=r"stamp size must be an integer in 1\.\.8"):
    pz.stamp(np.zeros((1, 8, 8, 1), np.uint8), 9)
  with pytest.raises(ValueError, match="stamp takes uint8 images"):
    pz.stamp(np.zeros((1, 8, 8, 1), np.float32), 2)
