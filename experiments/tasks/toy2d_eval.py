"""Sample quality on the 2-D toy sets, for every generative task that draws 2-D points
(diffusion2d, gan2d): the energy distance (Székely & Rizzo; `diffusion/metrics.py`) of
`eval.num_samples` model samples to as many held-out test points, beside the data-vs-data floor
(the distance between that reference subset and a disjoint test subset of the same size,
measured in the same run), and a scatter plot of samples vs data, `samples_step{N}.png`.
"""

from __future__ import annotations

import os

import numpy as np

from genfm.diffusion import metrics
from genfm.experiments import data
from genfm.experiments.errors import ConfigError


def train_points(config, task: str):
  """The training split of `config.dataset`, checked to be a 2-D point set."""
  train = data.load(config.dataset, "train")
  if set(train.info.features) != {"x"} or train.info.features["x"][0] != (2,):
    raise ConfigError(f"dataset {config.dataset!r} is not a 2-D point set; the {task} task "
                      "needs one of: moons, eight_gaussians, swiss_roll")
  return train


def check_num_samples(config) -> int:
  n = config.eval.num_samples
  test_size = len(data.load(config.dataset, "test"))
  if not isinstance(n, int) or n < 1 or 2 * n > test_size:
    raise ConfigError(f"config.eval.num_samples={n!r} must be a positive integer with "
                      f"2n ≤ {test_size} test points")
  return n


def evaluate(config, samples_N2: np.ndarray, workdir: str, step: int, name: str) -> dict:
  """{"energy_distance", "energy_floor", "energy_ratio"} of the samples; writes the scatter."""
  n = config.eval.num_samples
  test_N2 = data.load(config.dataset, "test").arrays["x"]
  perm = np.random.default_rng(config.eval.sample_seed).permutation(test_N2.shape[0])
  ref_N2, other_N2 = test_N2[perm[:n]], test_N2[perm[n:2 * n]]
  finite = np.isfinite(samples_N2).all(axis=-1)
  ed = float(metrics.energy_distance(samples_N2[finite], ref_N2)) if finite.all() else np.inf
  floor = float(metrics.energy_distance(other_N2, ref_N2))      # data vs data, same n
  save_scatter(os.path.join(workdir, f"samples_step{step}.png"), samples_N2, ref_N2,
               f"{name} step {step}: energy distance {ed:.4f} (floor {floor:.4f})")
  return {"energy_distance": ed, "energy_floor": floor, "energy_ratio": ed / floor}


def save_scatter(path: str, samples_N2: np.ndarray, data_N2: np.ndarray, title: str) -> str:
  """Side-by-side scatter of samples and data on shared axes, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), sharex=True, sharey=True)
  for ax, pts, label, color in ((axes[0], data_N2, "held-out data", "tab:blue"),
                                (axes[1], samples_N2, "samples", "tab:orange")):
    pts = pts[np.isfinite(pts).all(axis=-1)]
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color)
    ax.set_title(f"{label} ({len(pts)})")
    ax.set_aspect("equal")
  lo, hi = np.percentile(data_N2, [0, 100], axis=0)
  pad = 0.1 * (hi - lo)
  axes[0].set_xlim(lo[0] - pad[0], hi[0] + pad[0])
  axes[0].set_ylim(lo[1] - pad[1], hi[1] + pad[1])
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
