"""Edge maps of images and their agreement: Sobel magnitude, thresholded maps, edge F1.

The control signal of ControlNet (Zhang et al. 2023, arXiv:2302.05543, sec. 4 "Canny edge";
here the simpler Sobel operator, Sobel & Feldman 1968) and its metric: a sample "follows" its
control when the edges of the sample fall on the control's edges. `edge_f1` is the boundary F1
of the BSDS benchmark (Martin et al., PAMI 2004) with the pixel matching done by dilation: a
predicted edge pixel is correct if a target edge pixel lies within `tolerance` pixels
(Chebyshev distance), and symmetrically for recall (no one-to-one assignment as in BSDS).

Images are [B, H, W, C] in [−1, 1] (the denoisers' pixel convention); maps are [B, H, W, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Sobel kernels: a central difference (−1, 0, 1) along one axis smoothed by (1, 2, 1) across it.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()


def _check_images(x: Array, what: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"{what} must be [B, H, W, C], got shape {tuple(x.shape)}")


def sobel(x_BHWC: Array) -> Array:
  """Gradient magnitude √(G_x² + G_y²) [B, H, W, 1] of the channel mean, with the raw 3×3 Sobel
  kernels (a unit-slope ramp gives 8, a step of height 1 gives 4 on both sides of it); borders
  are padded by replication, so a constant image has zero gradient everywhere."""
  _check_images(x_BHWC, "sobel's input")
  # fp32: the magnitude is thresholded, and bf16 would move pixels across the threshold.
  g_BHW = jnp.mean(jnp.asarray(x_BHWC, jnp.float32), axis=-1)
  p = jnp.pad(g_BHW, ((0, 0), (1, 1), (1, 1)), mode="edge")
  # Separable form of the kernels, [1, 2, 1]ᵀ ⊗ [−1, 0, 1]: differences first, so a constant
  # region gives exactly 0 whatever the summation order.
  dx = p[:, :, 2:] - p[:, :, :-2]                    # [B, H + 2, W]
  gx = dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:]
  dy = p[:, 2:, :] - p[:, :-2, :]                    # [B, H, W + 2]
  gy = dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:]
  return jnp.sqrt(gx * gx + gy * gy)[..., None]


def edge_map(x_BHWC: Array, threshold: float) -> Array:
  """{0, 1} float32 map [B, H, W, 1]: 1 where the Sobel magnitude exceeds `threshold`."""
  if not np.isfinite(threshold) or threshold < 0:
    raise ValueError(f"edge threshold must be a finite number ≥ 0, got {threshold!r}")
  return (sobel(x_BHWC) > threshold).astype(jnp.float32)


def _dilate(m_BHW1: Array, tolerance: int) -> Array:
  """1 wherever an edge pixel lies within `tolerance` (Chebyshev): a (2r+1)² max filter."""
  if tolerance == 0:
    return m_BHW1
  w = 2 * tolerance + 1
  return jax.lax.reduce_window(m_BHW1, 0.0, jax.lax.max, (1, w, w, 1), (1, 1, 1, 1), "SAME")


def _check_map(m: Array, what: str) -> None:
  if m.ndim != 4 or m.shape[-1] != 1:
    raise ValueError(f"{what} must be an edge map [B, H, W, 1], got shape {tuple(m.shape)}")
  if not isinstance(m, jax.core.Tracer):
    v = np.asarray(m)
    if not np.all((v == 0) | (v == 1)):
      raise ValueError(f"{what} must hold only 0 and 1 (an edge_map), got values outside {{0, 1}}")


def edge_f1(pred_BHW1: Array, target_BHW1: Array, tolerance: int = 1) -> Array:
  """[B] F1 = 2PR / (P + R) of a predicted edge map against a target one, with
  P = |pred ∩ dilate(target)| / |pred| and R = |target ∩ dilate(pred)| / |target|, the dilation
  reaching `tolerance` pixels. Two empty maps agree (F1 = 1); one empty map against a non-empty
  one scores 0."""
  if isinstance(tolerance, bool) or int(tolerance) != tolerance or tolerance < 0:
    raise ValueError(f"edge_f1 tolerance must be an integer ≥ 0 (pixels), got {tolerance!r}")
  _check_map(pred_BHW1, "edge_f1's prediction")
  _check_map(target_BHW1, "edge_f1's target")
  if pred_BHW1.shape != target_BHW1.shape:
    raise ValueError(f"edge_f1: prediction {tuple(pred_BHW1.shape)} and target "
                     f"{tuple(target_BHW1.shape)} differ in shape")
  pred = jnp.asarray(pred_BHW1, jnp.float32)
  target = jnp.asarray(target_BHW1, jnp.float32)
  n_pred, n_target = pred.sum((1, 2, 3)), target.sum((1, 2, 3))
  hit_pred = (pred * _dilate(target, int(tolerance))).sum((1, 2, 3))
  hit_target = (target * _dilate(pred, int(tolerance))).sum((1, 2, 3))
  precision = hit_pred / jnp.maximum(n_pred, 1.0)
  recall = hit_target / jnp.maximum(n_target, 1.0)
  f1 = 2 * precision * recall / jnp.maximum(precision + recall, 1e-12)
  both_empty = (n_pred == 0) & (n_target == 0)
  return jnp.where(both_empty, 1.0, f1)
