"""Tests for genfm.diffusion.metrics against closed forms and independent references."""

import numpy as np
import pytest
from scipy import linalg
from scipy import stats

from genfm.diffusion import metrics


def test_energy_distance_matches_scipy_in_1d():
  """scipy.stats.energy_distance returns √D² (V-statistic) for 1-D samples."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(0, 1, 300), rng.normal(0.5, 1.5, 200)
  ours = float(metrics.energy_distance(x[:, None], y[:, None]))
  np.testing.assert_allclose(np.sqrt(ours), stats.energy_distance(x, y), rtol=1e-4)


def test_energy_distance_properties_2d():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(500, 2))
  assert float(metrics.energy_distance(x, x)) == pytest.approx(0.0, abs=1e-6)
  # Brute-force double loop over all pairs (independent of the blocked implementation).
  a, b = x[:40], rng.normal(1.0, 1.0, size=(30, 2))
  d = lambda p, q: np.mean([np.linalg.norm(u - v) for u in p for v in q])
  np.testing.assert_allclose(metrics.energy_distance(a, b), 2 * d(a, b) - d(a, a) - d(b, b),
                             rtol=1e-5)
  # Shift of the mean by δ raises D² well above the data-vs-data floor.
  floor = float(metrics.energy_floor(rng.normal(size=(4000, 2)), 2000))
  shifted = float(metrics.energy_distance(rng.normal(size=(2000, 2)),
                                          rng.normal(size=(2000, 2)) + [0.5, 0.0]))
  assert 0 < floor < 0.01 < shifted


def test_frechet_closed_forms():
  # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)².
  np.testing.assert_allclose(metrics.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]),
                             4.0 + 1.0, rtol=1e-12)
  # Commuting (diagonal) covariances: ‖Δμ‖² + Σ (√aᵢ − √bᵢ)².
  a, b = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 4.0])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)),
                             np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2),
                             rtol=1e-10)


def test_frechet_matches_sqrtm_reference():
  rng = np.random.default_rng(2)
  m1, m2 = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
  c1, c2 = m1 @ m1.T + 0.1 * np.eye(8), m2 @ m2.T + 0.1 * np.eye(8)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  ref = (np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2)
         - 2 * np.trace(linalg.sqrtm(c1 @ c2).real))
  np.testing.assert_allclose(metrics.frechet_distance(mu1, c1, mu2, c2), ref, rtol=1e-8)
  assert metrics.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_stats_and_errors():
  f = np.random.default_rng(3).normal(size=(50, 4))
  mu, cov = metrics.gaussian_stats(f)
  np.testing.assert_allclose(cov, np.cov(f.T), rtol=1e-12)
  np.testing.assert_allclose(mu, f.mean(0))
  with pytest.raises(ValueError, match=r"features \[N ≥ 2, D\]"):
    metrics.gaussian_stats(np.ones(5))
  with pytest.raises(ValueError, match="one D"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match=r"\[N, D\] and \[M, D\]"):
    metrics.energy_distance(np.ones((3, 2)), np.ones((3, 3)))
  with pytest.raises(ValueError, match="at least 2n = 20"):
    metrics.energy_floor(np.ones((10, 2)), 10)
