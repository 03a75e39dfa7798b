"""MLP, LeNet and ResNet: parameter counts against hand formulas (via jax.eval_shape), forward
passes against independent plain-jnp/numpy math, the residual identity at init, augmentation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments.tasks.classify import random_crop_flip
from genfm.foundations.cnn import LeNet
from genfm.foundations.mlp import MLP
from genfm.foundations.resnet import BasicBlock, ResNet


def n_params(make):
  """Parameter count without allocating: shapes from jax.eval_shape."""
  state = nnx.state(jax.eval_shape(make), nnx.Param)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_mlp_param_count_and_manual_forward():
  assert n_params(lambda: MLP(784, 10, (512, 256), rngs=nnx.Rngs(0))) == (
      784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10)
  m = MLP(12, 3, (5, 4), activation="tanh", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (6, 12))
  h = x
  for layer in m.layers:                       # independent math: h ← tanh(h W + b)
    h = np.tanh(np.asarray(h) @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]))
  ref = h @ np.asarray(m.head.kernel[...]) + np.asarray(m.head.bias[...])
  np.testing.assert_allclose(m(x), ref, rtol=1e-5, atol=1e-5)
  # uint8 images are scaled to [0, 1] before the first layer.
  img = jax.random.randint(jax.random.key(2), (6, 3, 4, 1), 0, 256).astype(jnp.uint8)
  np.testing.assert_allclose(m(img), m(img.reshape(6, 12).astype(jnp.float32) / 255), atol=1e-6)


def test_lenet_param_count_and_conv_against_numpy():
  c1, c2, f1, f2 = 6, 16, 120, 84                        # classic LeNet-5 widths
  expected = (25 * 1 * c1 + c1) + (25 * c1 * c2 + c2) + (7 * 7 * c2 * f1 + f1) + (
      f1 * f2 + f2) + (f2 * 10 + 10)
  assert n_params(lambda: LeNet((28, 28, 1), 10, (c1, c2), (f1, f2), rngs=nnx.Rngs(0))) == expected
  m = LeNet((8, 8, 1), 10, (2, 3), (4, 4), rngs=nnx.Rngs(0))
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 1)))
  w, b = np.asarray(m.conv1.kernel[...]), np.asarray(m.conv1.bias[...])   # [5, 5, 1, 2]
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))                        # 'SAME' for 5×5
  ref = np.zeros((2, 8, 8, 2))
  for i in range(8):                                    # y[i, j] = Σ_window x · w + b
    for j in range(8):
      ref[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, i:i + 5, j:j + 5], w) + b
  np.testing.assert_allclose(m.conv1(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-5)
  chex.assert_shape(m(jnp.asarray(x)), (2, 10))


def test_resnet_param_count_matches_hand_formula():
  widths, c_in, classes = (16, 32, 64), 1, 10

  def conv(a, b, k):
    return k * k * a * b

  bn = lambda c: 2 * c                                   # scale and bias
  total = conv(c_in, widths[0], 3) + bn(widths[0])
  prev = widths[0]
  for i, w in enumerate(widths):
    for j in range(2):
      total += conv(prev, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
      if prev != w:
        total += conv(prev, w, 1) + bn(w)               # projection shortcut, eq. (2)
      prev = w
  total += widths[-1] * classes + classes
  assert n_params(lambda: ResNet((28, 28, 1), classes, widths, 2, rngs=nnx.Rngs(0))) == total


def test_residual_block_is_identity_at_init_and_learns_from_skip():
  """Zero-initialised last BN scale ⇒ F(x) = 0 ⇒ y = ReLU(x) = x for x ≥ 0 (eq. (1))."""
  block = BasicBlock(8, 8, 1, rngs=nnx.Rngs(0))
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 6, 6, 8)))
  np.testing.assert_array_equal(block(x), x)
  # Through the skip, the input gradient is exactly the identity's at init (eval mode: the
  # BatchNorm statistics are not updated under grad).
  block.eval()
  np.testing.assert_array_equal(block(x), x)
  g = jax.grad(lambda x: block(x).sum())(x)
  np.testing.assert_array_equal(g, (x > 0).astype(jnp.float32))


def test_models_reject_wrong_input_shapes():
  with pytest.raises(ValueError, match="expects 784 input features"):
    MLP(784, 10, rngs=nnx.Rngs(0))(jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"built for images \(28, 28, 1\)"):
    LeNet((28, 28, 1), 10, rngs=nnx.Rngs(0))(jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="unknown activation"):
    MLP(4, 2, activation="swoosh", rngs=nnx.Rngs(0))


def test_random_crop_flip_is_a_per_example_translation():
  x = jax.random.normal(jax.random.key(0), (4, 6, 5, 2))
  np.testing.assert_array_equal(random_crop_flip(jax.random.key(1), x, 0, False), x)
  key, pad = jax.random.key(3), 2
  out = np.asarray(random_crop_flip(key, x, pad, flip=True))
  k_crop, k_flip = jax.random.split(key)
  offs = np.asarray(jax.random.randint(k_crop, (4, 2), 0, 2 * pad + 1))
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (4,)))
  xp = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for b in range(4):                                    # independent numpy slicing
    ref = xp[b, offs[b, 0]:offs[b, 0] + 6, offs[b, 1]:offs[b, 1] + 5]
    np.testing.assert_array_equal(out[b], ref[:, ::-1] if flips[b] else ref)
