"""Sample-quality metrics: energy distance for 2-D samples and the Fréchet distance.

Energy distance: Székely & Rizzo 2013, "Energy statistics: A class of statistics based on
distances", J. Stat. Plan. Inference 143(8): D²(X, Y) = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ ≥ 0, zero iff the laws agree.
We return the squared form as a V-statistic (all pairs, the i = j zeros included), so an
estimate is ≥ 0 and two samples of the same law give a small positive "floor" of order
E‖X − X'‖/n; `energy_floor` measures that floor from data alone.

Fréchet distance between Gaussians (Dowson & Landau 1982; the FID of Heusel et al. 2017,
arXiv:1706.08500, Sec. 3): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}).
Computed in float64 NumPy with symmetric eigendecompositions only: Σ₁^{1/2} Σ₂ Σ₁^{1/2} is
symmetric PSD, so its square-root trace is Σ √λᵢ — no complex sqrtm residue to discard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _pairwise_mean_dist(a_ND: jax.Array, b_MD: jax.Array, block: int = 1024) -> jax.Array:
  """Mean Euclidean distance over all (a_i, b_j) pairs, in row blocks to bound memory."""
  total = jnp.zeros((), jnp.float32)
  for start in range(0, a_ND.shape[0], block):
    blk = a_ND[start:start + block]
    # ‖a − b‖ from differences, not ‖a‖² + ‖b‖² − 2ab: the expansion cancels badly at
    # distances ≪ the norms, which is exactly the data-vs-data regime the floor measures.
    d2 = jnp.sum(jnp.square(blk[:, None, :] - b_MD[None, :, :]), axis=-1)
    total = total + jnp.sum(jnp.sqrt(d2))
  return total / (a_ND.shape[0] * b_MD.shape[0])


def energy_distance(x_ND: jax.Array, y_MD: jax.Array) -> jax.Array:
  """Squared energy distance (V-statistic) between samples x [N, D] and y [M, D]."""
  x_ND, y_MD = jnp.asarray(x_ND, jnp.float32), jnp.asarray(y_MD, jnp.float32)
  if x_ND.ndim != 2 or y_MD.ndim != 2 or x_ND.shape[1] != y_MD.shape[1]:
    raise ValueError(f"energy_distance expects [N, D] and [M, D] samples, got {x_ND.shape} "
                     f"and {y_MD.shape}.")
  # D² = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo 2013)
  return (2.0 * _pairwise_mean_dist(x_ND, y_MD) - _pairwise_mean_dist(x_ND, x_ND)
          - _pairwise_mean_dist(y_MD, y_MD))


def energy_floor(data_ND: jax.Array, n: int, seed: int = 0) -> jax.Array:
  """Data-vs-data energy distance of two disjoint random n-subsets of `data` (needs ≥ 2n rows):
  the value a perfect sampler would score with n samples, for "within 2× the floor" checks."""
  data_ND = np.asarray(data_ND)
  if data_ND.shape[0] < 2 * n:
    raise ValueError(f"energy_floor needs at least 2n = {2 * n} data rows, got {data_ND.shape[0]}.")
  perm = np.random.default_rng(seed).permutation(data_ND.shape[0])
  return energy_distance(data_ND[perm[:n]], data_ND[perm[n:2 * n]])


def gaussian_stats(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] of features [N, D], float64."""
  f = np.asarray(features_ND, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"gaussian_stats expects features [N ≥ 2, D], got shape {f.shape}.")
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(m_DD: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m_DD + m_DD.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1_D: np.ndarray, cov1_DD: np.ndarray, mu2_D: np.ndarray,
                     cov2_DD: np.ndarray) -> float:
  """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) — the FID of 1706.08500."""
  mu1 = np.atleast_1d(np.asarray(mu1_D, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2_D, np.float64))
  c1 = np.atleast_2d(np.asarray(cov1_DD, np.float64))
  c2 = np.atleast_2d(np.asarray(cov2_DD, np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
    raise ValueError(f"frechet_distance expects means [D] and covariances [D, D] with one D; got "
                     f"{mu1.shape}, {c1.shape}, {mu2.shape}, {c2.shape}.")
  s1 = _sqrt_psd(c1)
  # Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = Tr (Σ₁ Σ₂)^{1/2}: same eigenvalues, but symmetric.
  eig = np.linalg.eigvalsh(s1 @ c2 @ s1)
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)
