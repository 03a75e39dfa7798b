"""Tests for genfm.transformers.clip: the two contrastive losses against independent references,
the temperature (init, clip, gradient), zero-shot invariances, EOS pooling, parameter count."""

import dataclasses
import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genfm.transformers import clip, gpt, vit

KEY = functools.partial(jax.random.key, impl="rbg")
VISION = vit.ViTConfig(image_size=(8, 8), channels=1, patch=4, num_layers=1, d_model=16,
                       num_heads=2)
TEXT = gpt.GPTConfig(vocab_size=13, context_len=8, num_layers=1, d_model=16, num_heads=2)
CFG = clip.CLIPConfig(vision=VISION, text=TEXT, embed_dim=8)


def _unit_rows(key, b, e):
  x = np.asarray(jax.random.normal(key, (b, e)), np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_loss_with_all_equal_logits_is_ln_b():
  for B in (1, 3, 16):
    same = jnp.ones((B, 4)) / 2.0  # every image equals every caption: logits all equal
    assert float(clip.clip_loss(same, same, 14.3)) == pytest.approx(math.log(B), abs=1e-6)


def test_clip_loss_equals_naive_two_direction_cross_entropy():
  B, E, scale = 5, 6, 7.5
  img, txt = _unit_rows(KEY(0), B, E), _unit_rows(KEY(1), B, E)
  logits = scale * img @ txt.T
  i2t = t2i = 0.0
  for i in range(B):  # image i must pick caption i among the B; caption i must pick image i
    i2t -= logits[i, i] - math.log(sum(math.exp(logits[i, j]) for j in range(B)))
    t2i -= logits[i, i] - math.log(sum(math.exp(logits[j, i]) for j in range(B)))
  want = (i2t / B + t2i / B) / 2
  got = clip.clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), scale)
  assert float(got) == pytest.approx(want, rel=1e-5)
  # Swapping the towers transposes the matrix, which swaps the two directions: same average.
  swapped = clip.clip_loss(jnp.asarray(txt, jnp.float32), jnp.asarray(img, jnp.float32), scale)
  assert float(swapped) == pytest.approx(want, rel=1e-5)


def test_siglip_loss_equals_binary_cross_entropy_over_all_pairs():
  B, E, t, b = 6, 5, 10.0, -10.0
  img, txt = (jnp.asarray(_unit_rows(KEY(k), B, E), jnp.float32) for k in (2, 3))
  logits = t * img @ txt.T + b
  want = optax.sigmoid_binary_cross_entropy(logits, jnp.eye(B)).sum() / B  # labels I
  got = clip.siglip_loss(img, txt, t, b)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _model(loss="clip", seed=0):
  return clip.CLIP(dataclasses.replace(CFG, loss=loss), rngs=nnx.Rngs(KEY(seed)))


def test_temperature_init_clip_and_gradient():
  model = _model()
  assert float(model.logit_scale[...]) == pytest.approx(math.log(1 / 0.07))  # 2.659
  assert float(model.logit_scale[...]) == pytest.approx(2.659, abs=1e-3)
  assert float(model.scale()) == pytest.approx(1 / 0.07, rel=1e-6)
  sig = _model("siglip")
  assert float(sig.scale()) == pytest.approx(10.0, rel=1e-6)
  assert float(sig.logit_bias[...]) == -10.0

  img, txt = (jnp.asarray(_unit_rows(KEY(k), 4, 8), jnp.float32) for k in (4, 5))

  grad_fn = nnx.jit(nnx.grad(lambda m: clip.clip_loss(img, txt, m.scale())))
  grad_t = lambda m: float(grad_fn(m).logit_scale[...])
  # Below the clip the gradient reaches t; above ln 100 the scale is 100 and t gets nothing.
  assert abs(grad_t(model)) > 1e-3
  model.logit_scale[...] = jnp.float32(math.log(100) + 0.5)
  assert float(model.scale()) == 100.0
  assert grad_t(model) == 0.0


def _batch(B=4, T=8):
  images = jax.random.randint(KEY(6), (B, 8, 8, 1), 0, 256).astype(jnp.uint8)
  # BOS caption EOS PAD…, ragged: EOS at positions 3, 5, 7 and 2.
  lengths = [3, 5, 7, 2]
  text = np.zeros((B, T), np.int32)
  for r, n in enumerate(lengths):
    text[r, 0], text[r, 1:n] = 1, 3 + (np.arange(n - 1) + r) % 10
    text[r, n] = 2
  return images, jnp.asarray(text), lengths


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_gradient_reaches_the_temperature_and_both_towers(loss):
  model = _model(loss)
  images, text, _ = _batch()
  (_, metrics), grads = nnx.jit(nnx.value_and_grad(lambda m: m.loss(images, text),
                                                   has_aux=True))(model)
  assert abs(float(grads.logit_scale[...])) > 0
  if loss == "siglip":
    assert abs(float(grads.logit_bias[...])) > 0
  for tower in (grads.image_proj, grads.text_proj, grads.image_tower.embed,
                grads.text_tower.embed):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(nnx.state(tower))) > 0
  assert float(metrics["temperature"]) == pytest.approx(1 / float(model.scale()), rel=1e-6)


def test_encode_text_pools_at_eos_with_ragged_lengths():
  model = _model()
  _, text, lengths = _batch()
  np.testing.assert_array_equal(model.eos_index(text), lengths)
  enc = jax.jit(model.encode_text)
  base = enc(text)
  np.testing.assert_allclose(jnp.linalg.norm(base, axis=1), 1.0, atol=1e-5)
  # Tokens after each row's EOS (PAD or anything else) change nothing: the tower is causal.
  after = np.asarray(text).copy()
  for r, n in enumerate(lengths):
    after[r, n + 1:] = 7
  np.testing.assert_allclose(enc(jnp.asarray(after)), base, atol=1e-6)
  # A token before row 1's EOS changes row 1 only.
  before = np.asarray(text).copy()
  before[1, 2] = 12
  changed = np.abs(np.asarray(enc(jnp.asarray(before)) - base)).max(axis=1)
  assert changed[1] > 1e-4 and np.all(changed[[0, 2, 3]] < 1e-6)
  # A row without EOS (truncated) is read at its last non-PAD token.
  assert int(model.eos_index(jnp.asarray([[1, 5, 6, 0, 0, 0, 0, 0]]))[0]) == 2


def test_zero_shot_logits_are_invariant_to_embedding_scale():
  img, cls = _unit_rows(KEY(7), 5, 8), _unit_rows(KEY(8), 3, 8)
  logits = clip.zero_shot_logits(jnp.asarray(img), jnp.asarray(cls))
  np.testing.assert_allclose(logits, img @ cls.T, atol=1e-6)  # cosine similarities
  a_B1 = np.array([[0.1], [3.0], [7.0], [0.5], [40.0]])  # a different factor per row
  c_C1 = np.array([[2.0], [0.01], [9.0]])
  scaled = clip.zero_shot_logits(jnp.asarray(a_B1 * img, jnp.float32),
                                 jnp.asarray(c_C1 * cls, jnp.float32))
  np.testing.assert_allclose(scaled, logits, atol=1e-6)


def test_zero_shot_classifier_averages_normalised_templates():
  model = _model()
  _, text, _ = _batch()
  prompts_CMT = text.reshape(2, 2, 8)  # 2 classes × 2 templates
  cls_CE = clip.zero_shot_classifier(model, prompts_CMT)
  txt = np.asarray(model.encode_text(text)).reshape(2, 2, -1)
  mean = txt.mean(axis=1)
  np.testing.assert_allclose(cls_CE, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                             atol=1e-5)
  assert cls_CE.shape == (2, 8)


def test_param_count_by_hand():
  D, E = 16, 8
  # ViT: E and its bias, x_class, 5×D positions, 1 layer, final LN.
  image = (16 * D + D) + D + 5 * D + (4 * D + 4 * D * D + 4 * D + 8 * D * D + 5 * D) + 2 * D
  # GPT-2 layout: tied 13×D table, 8×D positions, 1 layer, final LN.
  text = 13 * D + 8 * D + (2 * D + 4 * D * D + 4 * D + 2 * D + 8 * D * D + 5 * D) + 2 * D
  want = image + text + D * E + D * E + 1  # projections without bias, the temperature
  assert clip.param_count(CFG) == want
  assert clip.param_count(dataclasses.replace(CFG, loss="siglip")) == want + 1  # the bias
  for loss in ("clip", "siglip"):
    cfg = dataclasses.replace(CFG, loss=loss)
    shapes = jax.eval_shape(lambda c=cfg: nnx.state(clip.CLIP(c, rngs=nnx.Rngs(KEY(0))),
                                                    nnx.Param))
    assert sum(p.size for p in jax.tree.leaves(shapes)) == clip.param_count(cfg)


def test_bad_configs_raise_one_line():
  with pytest.raises(ValueError, match="unknown loss 'sigmoid'; valid choices: clip, siglip"):
    dataclasses.replace(CFG, loss="sigmoid")
  with pytest.raises(ValueError, match="vision.num_classes=None"):
    dataclasses.replace(CFG, vision=dataclasses.replace(VISION, num_classes=10))
