"""FFJORD on the 2-D toy sets: a continuous normalising flow trained by maximum likelihood.

Grathwohl et al. 2018, arXiv:1810.01367 (FFJORD), on the instantaneous change of variables of
Chen et al. 2018, arXiv:1806.07366. The field f(z, t) is `foundations.neural_ode.ConcatMLPField`;
`foundations.cnf.log_prob` integrates [z, Δlog p] from the data (t = 0) to the base N(0, I)
(t = T) with adaptive Dormand–Prince, and the loss is the mean negative log-likelihood,
    L(θ) = −(1/B) Σ_b log p_θ(x_b)                                      (nats per point)
whose gradient comes from the adjoint method (`neural_ode.odeint_adjoint`, O(1) memory in the
solver's steps). Training uses Hutchinson's trace estimate with one probe per point, fixed over
the solve (`config.cnf.train_estimator`, FFJORD's choice); evaluation the exact trace (D = 2).

Evaluation: `nll` (test nats per point, exact trace) and `nfe` (function evaluations of the
forward solve per eval batch, averaged); `after_eval` draws `eval.num_samples` points by
integrating N(0, I) samples from T back to 0 (energy distance and scatter from `toy2d_eval`,
and `sample_nfe`), and writes `density_step{N}.png`, log p on a grid, with `grid_mass`, the
density's integral over the grid (≈ 1 when the flow is a normalised density and the grid
covers it).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments import data
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import toy2d_eval
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import choice
from genfm.foundations import cnf, neural_ode

GRID = 120            # density figure: GRID × GRID points


class CNF2DTask(Task):
  """`config.dataset` (2-D points) → FFJORD (MLP field, adjoint gradients)."""

  def __init__(self, config):
    super().__init__(config)
    self._train = toy2d_eval.train_points(config, "cnf2d")
    c = config.cnf
    choice("config.cnf.train_estimator", c.train_estimator, cnf.ESTIMATORS)
    for key in ("rtol", "atol", "eval_rtol", "eval_atol", "T"):
      v = c[key]
      if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ConfigError(f"config.cnf.{key}={v!r} must be a positive number (ODE tolerances "
                          "like 1e-5; T the integration time, e.g. 1.0)")
    for key in ("hidden", "depth"):
      if not isinstance(c[key], int) or c[key] < 1:
        raise ConfigError(f"config.cnf.{key} must be a positive integer, got {c[key]!r}")
    toy2d_eval.check_num_samples(config)
    self._jitted = {}

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": data.load(self.config.dataset, "test")}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    c = self.config.cnf
    return neural_ode.ConcatMLPField(2, c.hidden, c.depth, rngs=rngs)

  def log_prob(self, model, x_B2: jax.Array, estimator: str, key=None, *, eval_: bool):
    """(log p(x) [B], stats) through the library's CNF (the function its tests check)."""
    c = self.config.cnf
    field, params = neural_ode.module_field(model)
    rtol, atol = (c.eval_rtol, c.eval_atol) if eval_ else (c.rtol, c.atol)
    logp_B, _, stats = cnf.log_prob(field, params, x_B2, T=c.T, estimator=estimator,
                                    key=key, rtol=rtol, atol=atol)
    return logp_B, stats

  def loss(self, model, batch: Batch, key: jax.Array):
    logp_B, stats = self.log_prob(model, batch["x"], self.config.cnf.train_estimator, key,
                                  eval_=False)
    return -jnp.mean(logp_B), {"nfe": stats["nfev"].astype(jnp.float32)}

  def eval_metrics(self, model, batch: Batch):
    """Test NLL (exact trace, nats per point) and forward-solve NFE, as per-example sums."""
    x_B2, mask_B = batch["x"], batch["mask"]
    logp_B, stats = self.log_prob(model, x_B2, "exact", eval_=True)
    count = mask_B.sum()
    return {"nll": (-logp_B * mask_B).sum(), "nfe": stats["nfev"].astype(jnp.float32) * count,
            "count": count}

  # --- host-side evaluation: samples and the density figure -----------------------------------

  def _fns(self, graphdef):
    if "sample" not in self._jitted:
      c, e = self.config.cnf, self.config.eval

      def sample(state):
        field, params = neural_ode.module_field(nnx.merge(graphdef, state))
        z_N2 = jax.random.normal(jax.random.key(e.sample_seed), (e.num_samples, 2))
        return cnf.sample(field, params, z_N2, T=c.T, rtol=c.eval_rtol, atol=c.eval_atol)

      def density(state, x_G2):
        return self.log_prob(nnx.merge(graphdef, state), x_G2, "exact", eval_=True)[0]

      self._jitted = {"sample": jax.jit(sample), "density": jax.jit(density)}
    return self._jitted

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    graphdef, state = nnx.split(model)
    fns = self._fns(graphdef)
    samples_N2, stats = jax.device_get(fns["sample"](state))
    out = toy2d_eval.evaluate(self.config, np.asarray(samples_N2), workdir, step,
                              self.config.get("name", "cnf2d"))
    test_N2 = data.load(self.config.dataset, "test").arrays["x"]
    lo, hi = test_N2.min(axis=0) - 0.5, test_N2.max(axis=0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID)
    grid_G2 = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    logp_G = np.asarray(jax.device_get(fns["density"](state, grid_G2)))
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    mass = float(np.sum(np.exp(logp_G)) * cell)
    save_density(os.path.join(workdir, f"density_step{step}.png"), logp_G.reshape(GRID, GRID),
                 (lo[0], hi[0], lo[1], hi[1]),
                 f"{self.config.get('name', 'cnf2d')} step {step}: log p (mass on grid {mass:.3f})")
    return {**out, "sample_nfe": float(stats["nfev"]), "grid_mass": mass}


def save_density(path: str, logp_YX: np.ndarray, extent, title: str) -> str:
  """log p on the grid as an image (clipped 10 nats below its maximum), PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(8.5, 4.2))
  top = np.nanmax(logp_YX)
  im = axes[0].imshow(np.clip(logp_YX, top - 10, top), origin="lower", extent=extent,
                      cmap="viridis")
  fig.colorbar(im, ax=axes[0], fraction=0.046)
  axes[0].set_title("log p(x)")
  axes[1].imshow(np.exp(logp_YX), origin="lower", extent=extent, cmap="magma")
  axes[1].set_title("p(x)")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
