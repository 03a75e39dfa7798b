"""Tests for genfm.transformers.vit: patches, parameter counts (ViT-B/16 against the paper),
2-D sin-cos positions, bidirectional attention, pooling, bad configs."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import vit

KEY = functools.partial(jax.random.key, impl="rbg")
TINY = vit.ViTConfig(image_size=(8, 12), channels=3, patch=4, num_layers=2, d_model=16,
                     num_heads=4)


def _n_params(cfg):
  params = jax.eval_shape(lambda: nnx.state(vit.ViT(cfg, rngs=nnx.Rngs(KEY(0))), nnx.Param))
  return sum(p.size for p in jax.tree.leaves(params))


def test_patch_count_and_patchify_round_trip_on_a_non_square_image():
  B, H, W, C, p = 2, 8, 12, 3, 4
  images = np.arange(B * H * W * C, dtype=np.float32).reshape(B, H, W, C)  # distinct values
  patches = vit.patchify(jnp.asarray(images), p)
  assert patches.shape == (B, (H // p) * (W // p), p * p * C) == (2, 6, 48)
  # Patch (i, j) of the 2×3 grid is row-major entry 3·i + j, flattened (row, column, channel).
  np.testing.assert_array_equal(patches[1, 1 * 3 + 2], images[1, 4:8, 8:12, :].reshape(-1))
  np.testing.assert_array_equal(patches[0, 0, :C], images[0, 0, 0])
  np.testing.assert_array_equal(vit.unpatchify(patches, p, H, W, C), images)


def test_vit_b16_has_86_567_656_params():
  # Table 1 of 2010.11929 lists ViT-Base as "86M": L=12, D=768, MLP 3072, 12 heads, here at 224²
  # with patch 16 (196 patches + class token) and a 1000-class linear head.
  cfg = vit.ViTConfig(image_size=(224, 224), channels=3, patch=16, num_layers=12, d_model=768,
                      num_heads=12, num_classes=1000)
  D, F, Q, T = 768, 3072, 16 * 16 * 3, 196 + 1
  by_hand = (Q * D + D) + D + T * D + 12 * (4 * D + 4 * D * D + 4 * D + 2 * D * F + F + D) \
      + 2 * D + (D * 1000 + 1000)
  assert by_hand == vit.param_count(cfg) == _n_params(cfg) == 86_567_656


@pytest.mark.parametrize("changes", [
    dict(), dict(pool="mean"), dict(positions="sincos2d"), dict(pool="mean", positions="sincos2d",
                                                                num_classes=7),
    dict(num_classes=10, d_ff=24, patch=2)])
def test_param_count_matches_eval_shape(changes):
  cfg = dataclasses.replace(TINY, **changes)
  assert vit.param_count(cfg) == _n_params(cfg)


def test_param_count_differences_are_the_class_token_table_and_head():
  D, T = 16, 6
  cls = vit.param_count(TINY)
  assert cls - vit.param_count(dataclasses.replace(TINY, pool="mean")) == D + D  # x_class, its row
  assert cls - vit.param_count(dataclasses.replace(TINY, positions="sincos2d")) == (T + 1) * D
  assert vit.param_count(dataclasses.replace(TINY, num_classes=10)) - cls == D * 10 + 10


def _sincos_loops(h, w, dim):
  """Independent construction: one position at a time, one frequency at a time."""
  out = np.zeros((h * w, dim))
  q = dim // 4
  for r in range(h):
    for c in range(w):
      for i in range(q):
        om = 1.0 / 10_000 ** (i / q)
        out[r * w + c, [i, q + i, 2 * q + i, 3 * q + i]] = [
            np.sin(c * om), np.cos(c * om), np.sin(r * om), np.cos(r * om)]
  return out


def test_sincos_2d_matches_loops_and_depends_on_offsets_only():
  h, w, dim = 3, 5, 16
  pe = vit.sincos_2d(h, w, dim)
  assert pe.shape == (h * w, dim)
  np.testing.assert_allclose(pe, _sincos_loops(h, w, dim), atol=1e-6)
  q = dim // 4
  np.testing.assert_allclose(pe[:, :q] ** 2 + pe[:, q:2 * q] ** 2, 1.0, atol=1e-6)
  # ⟨pe(r, c), pe(r', c')⟩ = Σ_i cos((c − c')ω_i) + cos((r − r')ω_i): equal offsets, equal dots.
  dots = pe @ pe.T
  np.testing.assert_allclose(dots[0 * w + 0, 1 * w + 2], dots[1 * w + 1, 2 * w + 3], atol=1e-5)
  np.testing.assert_allclose(dots[0 * w + 3, 2 * w + 4], dots[0 * w + 1, 2 * w + 2], atol=1e-5)
  assert len({tuple(np.round(row, 5)) for row in pe}) == h * w  # every position distinct
  with pytest.raises(ValueError, match="divisible by 4"):
    vit.sincos_2d(2, 2, 18)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_is_bidirectional(pool):
  # The first patch's output (and the pooled feature) depends on the last patch's pixels: the
  # gradient of token 0 (patch 0 for mean pool, the class token is at 0 for cls) w.r.t. the
  # bottom-right patch is nonzero — a causal encoder would give exactly zero.
  cfg = dataclasses.replace(TINY, pool=pool)
  model = vit.ViT(cfg, rngs=nnx.Rngs(KEY(0)))
  images = jax.random.uniform(KEY(1), (1, 8, 12, 3))
  first = 1 if pool == "cls" else 0  # the first *patch* token
  w_D = jax.random.normal(KEY(3), (16,))  # a plain sum of a LayerNorm output is constant

  def first_and_last(x):
    x_TD = model.tokens(x)[0]
    return jnp.stack([x_TD[first] @ w_D, x_TD[-1] @ w_D])

  jac = jax.jit(jax.jacrev(first_and_last))(images)  # [2, 1, H, W, C]
  assert float(jnp.abs(jac[0, 0, 4:, 8:]).max()) > 1e-4  # last patch of the 2×3 grid
  assert float(jnp.abs(jac[1, 0, :4, :4]).max()) > 1e-4  # and the last token sees the first


def test_pools_and_head():
  images = jax.random.randint(KEY(2), (3, 8, 12, 3), 0, 256).astype(jnp.uint8)
  run = lambda m: jax.jit(lambda x: (m.tokens(x), m.features(x), m(x), m.tokens(x / 255.0)))(
      images)
  tok, feat, out, tok_float = run(vit.ViT(dataclasses.replace(TINY, pool="mean"),
                                          rngs=nnx.Rngs(KEY(0))))
  assert tok.shape == (3, 6, 16)
  np.testing.assert_allclose(feat, tok.mean(axis=1), atol=1e-6)
  np.testing.assert_allclose(out, tok.mean(axis=1), atol=1e-6)  # no head: the features
  cls = vit.ViT(dataclasses.replace(TINY, num_classes=5), rngs=nnx.Rngs(KEY(0)))
  tok, feat, out, tok_float = run(cls)
  assert tok.shape == (3, 7, 16)
  np.testing.assert_allclose(feat, tok[:, 0], atol=1e-6)  # y = LN(z_L^0), eq. (4)
  assert out.shape == (3, 5) and out.dtype == jnp.float32
  # uint8 pixels are scaled to [0, 1]: the same model on the float image agrees.
  np.testing.assert_allclose(tok, tok_float, atol=1e-5)
  with pytest.raises(ValueError, match=r"\(H, W, C\) = \(8, 12, 3\)"):
    cls(jnp.zeros((1, 12, 8, 3)))


@pytest.mark.parametrize("changes,message", [
    (dict(image_size=(28, 28), patch=3),
     "image size 28×28 is not divisible by the patch size 3; choose a patch that divides both"),
    (dict(pool="max"), "unknown pool 'max'; valid choices: cls, mean"),
    (dict(positions="rope"), "unknown positions 'rope'; valid choices: learned, sincos2d"),
])
def test_bad_configs_raise_one_line(changes, message):
  with pytest.raises(ValueError) as e:
    dataclasses.replace(TINY, **changes)
  assert message in str(e.value) and "\n" not in str(e.value)
