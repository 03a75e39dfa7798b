"""The classifier-feature Fréchet distance ("FID" for small image sets): its features are the
classifier's penultimate layer, it is 0 for identical sets, grows monotonically with added noise,
and the real-vs-real floor sits below a noisy set's distance. A tiny LeNet is trained on sklearn
digits inside the test (a few seconds)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from genfm.diffusion import fashion_fid
from genfm.diffusion import metrics
from genfm.experiments import data, fid_classifier
from genfm.foundations.cnn import LeNet
from genfm.foundations.mlp import to_float

N = 300          # FD sample size (real images: the 1500 digits training images)


@pytest.fixture(scope="module")
def digits_classifier():
  """LeNet (8/16 conv, 64/32 hidden) trained 200 Adam steps on digits: test accuracy > 0.85."""
  train, test = data.load("digits", "train").arrays, data.load("digits", "test").arrays
  model = LeNet((8, 8, 1), 10, channels=(8, 16), hidden=(64, 32), rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(200):
    idx = rng.integers(0, len(train["label"]), 64)
    step(model, opt, jnp.asarray(train["image"][idx]), jnp.asarray(train["label"][idx]))
  model.eval()
  acc = float(np.mean(np.asarray(model(jnp.asarray(test["image"])).argmax(-1)) == test["label"]))
  assert acc > 0.85, acc
  return model


@pytest.fixture(scope="module")
def evaluator(digits_classifier):
  real = data.load("digits", "train").arrays["image"]
  return fashion_fid.FrechetEvaluator(fashion_fid.make_feature_fn(digits_classifier), real, N,
                                      seed=0)


def reference_images(evaluator, pad=0):
  """The evaluator's own reference images, as the diffusion model would emit them ([−1, 1])."""
  real = data.load("digits", "train").arrays["image"]
  ref_idx, _ = fashion_fid.reference_split(len(real), N, seed=0)
  return fashion_fid.from_pixels(real[ref_idx], pad)


def test_features_are_the_head_input(digits_classifier):
  """logits = head(features) for the same images: the feature map is the penultimate layer.
  The classifier itself keeps its head (the feature model is a copy)."""
  x = jnp.asarray(data.load("digits", "test").arrays["image"][:16])
  feats = fashion_fid.make_feature_fn(digits_classifier)(x)
  chex.assert_shape(feats, (16, 32))
  np.testing.assert_allclose(np.asarray(digits_classifier.head(feats)),
                             np.asarray(digits_classifier(x)), rtol=1e-5, atol=1e-5)
  # By hand: conv → ReLU → pool twice, flatten, two ReLU layers.
  m, h = digits_classifier, to_float(x)
  for conv in (m.conv1, m.conv2):
    h = nnx.max_pool(jax.nn.relu(conv(h)), (2, 2), strides=(2, 2))
  h = jax.nn.relu(m.fc2(jax.nn.relu(m.fc1(h.reshape(16, -1)))))
  np.testing.assert_allclose(np.asarray(feats), np.asarray(h), rtol=1e-5, atol=1e-6)
  shapes = jax.eval_shape(fashion_fid.make_feature_fn(m), jax.ShapeDtypeStruct((5, 8, 8, 1),
                                                                               jnp.uint8))
  assert shapes.shape == (5, 32)


def test_pixels_round_trip_through_padding():
  """uint8 → [−1, 1] padded by 2 → centre crop → uint8 is the identity; pad pixels are −1."""
  img = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1)).astype(np.uint8)
  x = fashion_fid.from_pixels(img, pad=2)
  chex.assert_shape(x, (7, 32, 32, 1))
  assert (x[:, :2] == -1).all() and (x[:, :, -2:] == -1).all()
  np.testing.assert_array_equal(fashion_fid.to_pixels(x, (28, 28, 1)), img)
  # Overshoot is clipped, not wrapped.
  np.testing.assert_array_equal(fashion_fid.to_pixels(np.full((1, 4, 4, 1), 1.7), (4, 4, 1)),
                                np.full((1, 4, 4, 1), 255, np.uint8))


def test_fd_of_a_set_with_itself_is_zero(evaluator):
  """0 up to float64 eigenvalue round-off, relative to the features' total variance."""
  scale = np.trace(metrics.gaussian_stats(evaluator.ref_features)[1])
  fd = evaluator(reference_images(evaluator))
  assert abs(fd) < 1e-7 * scale < 1e-3 * evaluator.floor, (fd, scale, evaluator.floor)
  # Padded inputs are centre-cropped first: the same answer.
  assert abs(evaluator(reference_images(evaluator, pad=2))) < 1e-7 * scale


def test_fd_grows_with_noise_and_floor_is_below(evaluator):
  """FD(reference + σ·noise, reference) increases strictly with σ; the floor (two disjoint real
  sets of n) is below FD at σ = 0.5 (a quarter of the [−1, 1] range; at σ = 0.3 the noisy copy
  of the reference is still closer than an independent real set: FD 1.5 vs floor 2.7, n = 300);
  the value equals metrics.frechet_distance on the stats."""
  x = reference_images(evaluator)
  noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  sigmas = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
  fds = [evaluator(x + s * noise) for s in sigmas]
  assert all(a < b for a, b in zip(fds, fds[1:])), fds
  assert 0.0 < evaluator.floor < fds[sigmas.index(0.5)], (evaluator.floor, fds)
  feats = fashion_fid.features(evaluator.feature_fn,
                               fashion_fid.to_pixels(x + 0.3 * noise, (8, 8, 1)))
  ref = metrics.frechet_distance(*metrics.gaussian_stats(feats),
                                 *metrics.gaussian_stats(evaluator.ref_features))
  np.testing.assert_allclose(fds[3], ref, rtol=1e-10)
  assert evaluator(np.full_like(x, np.nan)) == np.inf


def test_bad_input_errors(tmp_path, evaluator):
  with pytest.raises(ValueError, match="n = 300"):
    evaluator(np.zeros((10, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match="2n = 2000"):
    fashion_fid.reference_split(1500, 1000)
  with pytest.raises(ValueError, match="head"):
    fashion_fid.penultimate_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="cannot feed"):
    fashion_fid.to_pixels(np.zeros((2, 6, 6, 1)), (8, 8, 1))
  with pytest.raises(FileNotFoundError, match="fashion_lenet.py"):
    fid_classifier.load_classifier(str(tmp_path / "missing"))
