"""Augmentations are jit-able, per-image random, and do what their names say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import augmentation as aug

_X = jax.random.uniform(jax.random.key(0), (64, 6, 6, 3)) + 0.1  # > 0, so zero padding shows


def test_flip_is_per_image_mirror():
  out = np.asarray(jax.jit(aug.random_flip)(jax.random.key(1), _X))
  assert out.shape == _X.shape
  x = np.asarray(_X)
  flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)])
  same = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
  assert np.all(flipped ^ same)  # every image is exactly one of the two
  assert 16 < flipped.sum() < 48  # Binomial(64, ½): mean 32, std 4


def test_crop_is_a_shifted_window_of_the_padded_image():
  pad = 2
  out = jax.jit(aug.random_crop, static_argnums=2)(jax.random.key(2), _X, pad)
  assert out.shape == _X.shape
  padded = np.pad(np.asarray(_X), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for o, p in zip(np.asarray(out), padded):
    hits = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
            if np.array_equal(o, p[i:i + 6, j:j + 6])]
    assert hits, "crop is not a window of the padded image"
    offsets.add(hits[0])
  assert len(offsets) > 10  # images draw different offsets (25 possible)
  np.testing.assert_array_equal(aug.random_crop(jax.random.key(3), _X, 0), _X)


def test_noise_statistics():
  x = jnp.zeros((256, 8, 8, 1))
  out = jax.jit(aug.gaussian_noise, static_argnums=2)(jax.random.key(4), x, 0.3)
  np.testing.assert_allclose(jnp.std(out), 0.3, rtol=0.02)
  np.testing.assert_allclose(jnp.mean(out), 0.0, atol=0.01)


def test_bad_input():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    aug.random_flip(jax.random.key(0), jnp.ones((6, 6, 3)))
  with pytest.raises(ValueError, match="padding must be >= 0"):
    aug.random_crop(jax.random.key(0), _X, -1)
