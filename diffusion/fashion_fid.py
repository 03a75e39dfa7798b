"""An "FID" for small image sets: Fréchet distance on features of a classifier we trained.

The FID of Heusel et al. 2017, arXiv:1706.08500 (Sec. 3), fits Gaussians to Inception-v3 pool
features of real and generated images and reports the Fréchet distance between them
(`metrics.frechet_distance`). Inception weights cannot be downloaded here, and ImageNet
features say little about 28×28 grey clothes; so, as is common for (Fashion-)MNIST, the feature
map is the penultimate layer (the input of the final linear `head`) of a classifier trained on
the same data set with the workspace launcher (e.g. `experiments/configs/fashion_lenet.py`).
Numbers are comparable only between runs that use the same classifier checkpoint and the same
sample size n: the estimate is biased upwards at finite n, which is why every report carries the
real-vs-real floor, the distance between two disjoint real sets of the same size n.

Images enter in the diffusion model's range, [−1, 1] with the data set's padding, and go through
one path for real and generated images alike: centre-crop to the classifier's input size, map to
pixels {0..255} (rounded and clipped, as FID code quantises to uint8), then the classifier.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import metrics

FeatureFn = Callable[[jax.Array], jax.Array]   # uint8 [B, H, W, C] → float32 [B, F]


class _Identity(nnx.Module):
  """Stands in for the classifier's `head`, so the forward pass returns its input."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


def penultimate_model(classifier: nnx.Module) -> nnx.Module:
  """A copy of `classifier` (MLP, LeNet or ResNet of foundations/) whose output is the input of
  its final linear layer `head`: logits = head(features). The original is left untouched."""
  if not isinstance(getattr(classifier, "head", None), nnx.Linear):
    raise ValueError(f"{type(classifier).__name__} has no final nnx.Linear `head`; the feature "
                     "map is the head's input, so use a foundations/ classifier (mlp, lenet, "
                     "resnet).")
  features = nnx.clone(classifier)
  features.head = _Identity()
  features.eval()                                 # dropout off, BatchNorm running statistics
  return features


def make_feature_fn(classifier: nnx.Module) -> FeatureFn:
  """jit(uint8 images [B, H, W, C] → penultimate features [B, F], float32)."""
  graphdef, state = nnx.split(penultimate_model(classifier))

  @jax.jit
  def fn(state, images_BHWC):
    return nnx.merge(graphdef, state)(images_BHWC).astype(jnp.float32)

  return lambda images_BHWC: fn(state, images_BHWC)


def to_pixels(x_BHWC: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
  """[−1, 1] images [B, H', W', C] → uint8 [B, H, W, C] centre-cropped to `image_shape`.

  Undoes the padding of the diffusion input (28 → 32 for Fashion-MNIST) and the scaling
  p ↦ p/127.5 − 1; values outside [−1, 1] (samples overshoot a little) are clipped.
  """
  x = np.asarray(x_BHWC, np.float32)
  h, w, c = image_shape
  if x.ndim != 4 or x.shape[-1] != c or x.shape[1] < h or x.shape[2] < w:
    raise ValueError(f"images of shape {x.shape} cannot feed a classifier of input "
                     f"{tuple(image_shape)}: expected [B, ≥{h}, ≥{w}, {c}].")
  top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
  x = x[:, top:top + h, left:left + w]
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_pixels(images_BHWC: np.ndarray, pad: int) -> np.ndarray:
  """uint8 [B, H, W, C] → float32 [−1, 1] padded by `pad` pixels of background (−1) per side:
  the diffusion model's input (28 → 32 with pad 2 for Fashion-MNIST, whose background is 0)."""
  x = np.asarray(images_BHWC, np.float32) / 127.5 - 1.0
  return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)


def features(feature_fn: FeatureFn, pixels_NHWC: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Penultimate features [N, F] (float64) of uint8 images, in batches."""
  out = [np.asarray(feature_fn(jnp.asarray(pixels_NHWC[i:i + batch_size])))
         for i in range(0, len(pixels_NHWC), batch_size)]
  return np.concatenate(out).astype(np.float64)


def frechet_from_features(feat1_ND: np.ndarray, feat2_MD: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets (1706.08500, Sec. 3)."""
  return metrics.frechet_distance(*metrics.gaussian_stats(feat1_ND),
                                  *metrics.gaussian_stats(feat2_MD))


def reference_split(num_real: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices of two disjoint random n-subsets of num_real images: (reference, floor set)."""
  if num_real < 2 * n:
    raise ValueError(f"a real-vs-real floor with n = {n} needs 2n = {2 * n} real images, only "
                     f"{num_real} are available; lower the number of samples.")
  perm = np.random.default_rng(seed).permutation(num_real)
  return perm[:n], perm[n:2 * n]


class FrechetEvaluator:
  """FD of generated images to n real images, with the real-vs-real floor at the same n.

  `real_NHWC` are uint8 images of the classifier's input size (e.g. the Fashion-MNIST test set);
  the reference set and a disjoint floor set of n images each are drawn once (seeded), so all
  evaluations of a run compare against the same reference.
  """

  def __init__(self, feature_fn: FeatureFn, real_NHWC: np.ndarray, n: int, seed: int = 0):
    self.feature_fn, self.n = feature_fn, n
    self.image_shape = tuple(real_NHWC.shape[1:])
    ref_idx, floor_idx = reference_split(len(real_NHWC), n, seed)
    self.ref_features = features(feature_fn, real_NHWC[ref_idx])
    self.floor = frechet_from_features(features(feature_fn, real_NHWC[floor_idx]),
                                       self.ref_features)

  def __call__(self, samples_BHWC: np.ndarray) -> float:
    """FD of [−1, 1] samples (padded or not) to the reference; +inf if any is non-finite."""
    samples_BHWC = np.asarray(samples_BHWC)
    if len(samples_BHWC) != self.n:
      raise ValueError(f"got {len(samples_BHWC)} samples; the floor was measured at n = {self.n}, "
                       "and FDs at different n do not compare.")
    if not np.isfinite(samples_BHWC).all():
      return float("inf")
    feats = features(self.feature_fn, to_pixels(samples_BHWC, self.image_shape))
    return frechet_from_features(feats, self.ref_features)
