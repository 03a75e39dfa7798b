"""Data augmentation as pure, jit-able functions of (key, images [B, H, W, C]).

Random horizontal flips and random crops after padding are the CIFAR recipe of He et al.
1512.03385 §4.2 (pad 4, crop 32×32, flip); additive Gaussian input noise is equivalent to Tikhonov
regularisation to first order (Bishop, Neural Computation 1995). Each image draws its own random
choice from `key`, so one call augments a whole batch with no Python loop.
"""

import jax
import jax.numpy as jnp


def _check_images(x_BHWC: jax.Array) -> None:
  if x_BHWC.ndim != 4:
    raise ValueError(f"expected images of shape [B, H, W, C], got {x_BHWC.shape}")


def random_flip(key: jax.Array, x_BHWC: jax.Array, prob: float = 0.5) -> jax.Array:
  """Mirrors each image left-right with probability `prob`."""
  _check_images(x_BHWC)
  flip_B = jax.random.bernoulli(key, prob, (x_BHWC.shape[0],))
  return jnp.where(flip_B[:, None, None, None], x_BHWC[:, :, ::-1, :], x_BHWC)


def random_crop(key: jax.Array, x_BHWC: jax.Array, padding: int = 4) -> jax.Array:
  """Zero-pads by `padding` on each side, then takes a random H×W window per image."""
  _check_images(x_BHWC)
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  batch, height, width, channels = x_BHWC.shape
  padded = jnp.pad(x_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets_B2 = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

  def crop(img_HWC, offset_2):
    return jax.lax.dynamic_slice(img_HWC, (offset_2[0], offset_2[1], 0), (height, width, channels))

  return jax.vmap(crop)(padded, offsets_B2)


def gaussian_noise(key: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """x + ε, ε ~ N(0, std²) elementwise."""
  if std < 0:
    raise ValueError(f"noise std must be >= 0, got {std}")
  return x + std * jax.random.normal(key, x.shape, x.dtype)
