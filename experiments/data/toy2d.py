"""Generated 2-D toy sets for diffusion, flows and GANs: moons, 8 Gaussians, swiss roll, 25-grid.

Scalings follow FFJORD's `lib/toy_data.py` (Grathwohl et al., arXiv 1810.01367), the
convention the flow-matching toy experiments reuse, so plots and likelihoods compare:

- moons:  sklearn's two half circles, outer (cos θ, sin θ), inner (1 - cos θ, 0.5 - sin θ),
          θ ~ U[0, π] (sklearn spaces θ evenly; we draw it, the same law), noise N(0, 0.1²),
          then x ↦ 2x + (-1, -0.2). Mean exactly (0, 0.3).
- eight_gaussians: centres 4·(cos kπ/4, sin kπ/4), k uniform in 0..7, noise N(0, 0.5²),
          all divided by 1.414: radius 2.83, per-axis std 0.354. (WGAN-GP's `gan_toy.py`,
          arXiv 1704.00028, uses radius 2 and std 0.02 before the same /1.414: near-point
          masses, too sharp for density plots; we keep FFJORD's.)
- grid25: the 5×5 grid of Gaussians, centres {−4, −2, 0, 2, 4}², σ = 0.05, equal weights: the
          mode-collapse benchmark of VEEGAN (Srivastava et al. 2017, arXiv:1705.07761, §5.1) and
          PacGAN (arXiv:1712.04086).
- swiss_roll: sklearn's `make_swiss_roll(noise=1.0)` keeping axes (x, z):
          t = 1.5π(1 + 2u), u ~ U[0, 1], point (t cos t, t sin t) + N(0, 1²), all divided by 5.

Each (set, split) has its own fixed seed: the same points every run, train and test drawn
from independent streams (so they share no point with probability 1).
"""

from __future__ import annotations

import numpy as np

TOY_SIZES = {"train": 100_000, "test": 10_000}
# Seed words per set and split; fixed forever so that "test" always means the same points.
_TOY_IDS = {"moons": 0, "eight_gaussians": 1, "swiss_roll": 2, "grid25": 3}
_SPLIT_IDS = {"train": 0, "test": 1}

EIGHT_GAUSSIANS_SCALE = 4.0
EIGHT_GAUSSIANS_STD = 0.5
EIGHT_GAUSSIANS_DIVISOR = 1.414
GRID25_STD = 0.05


def moons(n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 2] float64 points of FFJORD's moons."""
  n_outer = n // 2
  theta_N = rng.uniform(0.0, np.pi, size=n)
  outer_N2 = np.stack([np.cos(theta_N), np.sin(theta_N)], axis=1)
  inner_N2 = np.stack([1.0 - np.cos(theta_N), 0.5 - np.sin(theta_N)], axis=1)
  is_outer_N1 = (np.arange(n) < n_outer)[:, None]
  x_N2 = np.where(is_outer_N1, outer_N2, inner_N2) + 0.1 * rng.standard_normal((n, 2))
  x_N2 = 2.0 * x_N2 + np.array([-1.0, -0.2])
  return x_N2[rng.permutation(n)]  # interleave the two moons


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 2] float64 points of FFJORD's 8 Gaussians (mixture with equal weights)."""
  angle_K = np.arange(8) * (np.pi / 4)
  centre_K2 = EIGHT_GAUSSIANS_SCALE * np.stack([np.cos(angle_K), np.sin(angle_K)], axis=1)
  k_N = rng.integers(0, 8, size=n)
  x_N2 = centre_K2[k_N] + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))
  return x_N2 / EIGHT_GAUSSIANS_DIVISOR


def eight_gaussians_centres() -> np.ndarray:
  """[8, 2] mode centres of `eight_gaussians` (after the divisor)."""
  angle_K = np.arange(8) * (np.pi / 4)
  return EIGHT_GAUSSIANS_SCALE * np.stack([np.cos(angle_K), np.sin(angle_K)],
                                          axis=1) / EIGHT_GAUSSIANS_DIVISOR


def grid25_centres() -> np.ndarray:
  """[25, 2] centres {−4, −2, 0, 2, 4}² of `grid25`."""
  g = np.arange(-4.0, 5.0, 2.0)
  return np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(25, 2)


def grid25(n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 2] float64 points of the 25-Gaussian grid (equal weights, σ = 0.05)."""
  k_N = rng.integers(0, 25, size=n)
  return grid25_centres()[k_N] + GRID25_STD * rng.standard_normal((n, 2))


def mixture_modes(name: str) -> tuple[np.ndarray, float] | None:
  """(centres [K, 2], per-axis σ) of a Gaussian-mixture toy set, or None for the others."""
  if name == "eight_gaussians":
    return eight_gaussians_centres(), EIGHT_GAUSSIANS_STD / EIGHT_GAUSSIANS_DIVISOR
  if name == "grid25":
    return grid25_centres(), GRID25_STD
  return None


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 2] float64 points of FFJORD's swiss roll (sklearn's roll seen along its y axis)."""
  t_N = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(size=n))
  x_N2 = np.stack([t_N * np.cos(t_N), t_N * np.sin(t_N)], axis=1)
  x_N2 = x_N2 + rng.standard_normal((n, 2))
  return x_N2 / 5.0


_GENERATORS = {"moons": moons, "eight_gaussians": eight_gaussians, "swiss_roll": swiss_roll,
               "grid25": grid25}
TOY_NAMES = tuple(_GENERATORS)


def load_toy(name: str, split: str) -> dict[str, np.ndarray]:
  """The fixed `split` of toy set `name` as {"x": float32 [N, 2]}."""
  rng = np.random.default_rng([_TOY_IDS[name], _SPLIT_IDS[split]])
  return {"x": _GENERATORS[name](TOY_SIZES[split], rng).astype(np.float32)}
