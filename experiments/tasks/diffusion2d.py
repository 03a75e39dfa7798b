"""2-D toy diffusion (moons, 8 Gaussians, swiss roll) through the shared training loop.

Two families, chosen by `config.diffusion.kind`:

- "ddpm": discrete-time DDPM, Ho et al. 2020, arXiv:2006.11239. Loss L_simple (eq. 14),
      E_{t, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖², t uniform on 1..T (or the x_0- / v-target
      of `genfm.diffusion.gaussian`), averaged over batch and data dimensions. Sampled by DDPM
      ancestral steps, DDIM (arXiv:2010.02502) or DPM-Solver++(2M) (arXiv:2211.01095).
- "sde": score SDE, Song et al. 2021, arXiv:2011.13456. Denoising score matching (eq. 7) with
      λ(t) = s(t)², t ~ U(ε, 1): ‖s(t) s_θ(x_t, t) + z‖² summed over dimensions, for the VP,
      sub-VP or VE SDE. With `prediction="eps"` the network predicts the noise and
      s_θ = −ε_θ / s(t) (the `scale_by_sigma` / continuous-VP parameterisation of the score_sde
      code), so the loss is ‖z − ε_θ‖²; with `prediction="score"` it outputs s_θ directly.
      Sampled by reverse-SDE Euler–Maruyama, predictor–corrector (Langevin) or the
      probability-flow ODE (eq. 13; Euler, Heun or adaptive RK45).

The network is `genfm.diffusion.mlp_denoiser.MLPDenoiser`; continuous t ∈ [0, 1] enters its
sinusoidal embedding as 999·t (as the score_sde code feeds VP models), so both families see the
same range of time labels.

Evaluation (`after_eval`, host side): draw `eval.num_samples` points with the configured sampler
and a fixed key, and report the energy distance (Székely & Rizzo; `diffusion/metrics.py`) to
`num_samples` held-out test points together with the data-vs-data floor: the distance between
that reference subset and a disjoint test subset of the same size, measured in the same run.
A scatter plot of samples vs data goes to `samples_step{N}.png`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from genfm.diffusion import gaussian
from genfm.diffusion import metrics
from genfm.diffusion import samplers
from genfm.diffusion import schedules
from genfm.diffusion import sde as sde_lib
from genfm.diffusion import sde_samplers
from genfm.diffusion.mlp_denoiser import MLPDenoiser, MLPDenoiserConfig
from genfm.experiments import data
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task

KINDS = ("ddpm", "sde")
DDPM_SAMPLERS = samplers.SAMPLERS                          # ddpm, ddim, dpm_solver_pp
DDPM_PREDICTIONS = gaussian.PREDICTION_TYPES               # eps, x0, v
SDE_SAMPLERS = ("euler_maruyama", "pc", "ode")
SDE_PREDICTIONS = ("eps", "score")
ODE_METHODS = ("euler", "heun", "rk45")
TIME_LABEL_SCALE = 999.0          # continuous t ∈ [0, 1] → embedding label 999·t


def _batch_sharding(x_B: jax.Array, ndim: int) -> NamedSharding | None:
  """The batch's sharding along `data` for a new rank-`ndim` array, or None off-mesh.

  The loop's mesh has Explicit axes, where concatenating a batch-sharded x_t with a replicated
  time embedding is a type error; so per-example noise is drawn sharded like the batch
  (`out_sharding`; jax's threefry draws the same values under any sharding).
  """
  s = jax.typeof(x_B).sharding
  if not isinstance(s, NamedSharding) or not s.mesh.axis_names:
    return None
  return NamedSharding(s.mesh, P(s.spec[0] if len(s.spec) else None, *([None] * (ndim - 1))))


def _take(table_T: jax.Array, t_B: jax.Array) -> jax.Array:
  """table[t] for batch-sharded indices: an Explicit mesh needs the gather's output sharding."""
  s = jax.typeof(t_B).sharding
  if isinstance(s, NamedSharding) and s.mesh.axis_names:
    table_T = jax.sharding.reshard(table_T, NamedSharding(s.mesh, P()))
    return table_T.at[t_B].get(out_sharding=s)
  return table_T[t_B]


def _choice(what: str, got, valid) -> None:
  if got not in valid:
    raise unknown_choice(what, got, valid)


def _ddpm_schedule(d) -> schedules.Schedule:
  """`config.diffusion`'s discrete schedule, its sample step count checked against T."""
  try:
    sched = schedules.make_schedule(d.schedule, d.num_timesteps)
    if d.sampler != "ddpm":
      samplers.timesteps(d.num_timesteps, d.sample_steps)   # validates 1 ≤ steps ≤ T
  except ValueError as e:
    raise ConfigError(f"config.diffusion: {e}") from None
  return sched


class Diffusion2DTask(Task):
  """`config.dataset` ∈ {moons, eight_gaussians, swiss_roll} → MLP denoiser → DDPM or score SDE."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    if set(self._train.info.features) != {"x"} or self._train.info.features["x"][0] != (2,):
      raise ConfigError(f"dataset {config.dataset!r} is not a 2-D point set; the diffusion2d "
                        "task needs one of: moons, eight_gaussians, swiss_roll")
    d = config.diffusion
    _choice("config.diffusion.kind", d.kind, KINDS)
    if d.kind == "ddpm":
      _choice("config.diffusion.prediction", d.prediction, DDPM_PREDICTIONS)
      _choice("config.diffusion.sampler", d.sampler, DDPM_SAMPLERS)
      _choice("config.diffusion.schedule", d.schedule, schedules.SCHEDULES)
      _choice("config.diffusion.variance", d.variance, samplers.VARIANCES)
      self.sched = _ddpm_schedule(d)
    else:
      _choice("config.diffusion.prediction", d.prediction, SDE_PREDICTIONS)
      _choice("config.diffusion.sampler", d.sampler, SDE_SAMPLERS)
      _choice("config.diffusion.sde", d.sde, sde_lib.SDE_NAMES)
      _choice("config.diffusion.ode_method", d.ode_method, ODE_METHODS)
      if not isinstance(d.sample_steps, int) or d.sample_steps < 1:
        raise ConfigError(f"config.diffusion.sample_steps must be a positive integer, got "
                          f"{d.sample_steps!r}")
      if d.sde == "ve":
        self.sde = sde_lib.VESDE(sigma_min=d.sigma_min, sigma_max=d.sigma_max)
      else:
        self.sde = sde_lib.make_sde(d.sde, beta_min=d.beta_min, beta_max=d.beta_max)
    n = config.eval.num_samples
    if not isinstance(n, int) or n < 1:
      raise ConfigError(f"config.eval.num_samples must be a positive integer, got {n!r}")
    self._sample_fn = None

  # --- data and model -------------------------------------------------------------------------

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": data.load(self.config.dataset, "test")}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    m = self.config.model
    try:
      cfg = MLPDenoiserConfig(data_dim=2, **m.to_dict())
    except TypeError as e:                      # an unknown key under config.model
      raise ConfigError(f"config.model for the MLP denoiser: {e}") from None
    return MLPDenoiser(cfg, rngs=rngs)

  # --- losses ---------------------------------------------------------------------------------

  def draw_noise(self, key: jax.Array, x0_B2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(t [B], z [B, 2]) for one step: integer code indices 0..T−1 for DDPM, t ~ U(eps, 1)
    for the SDE. The split (t from the first key, z from the second) is part of the contract
    the tests check. Both are laid out like the batch (see `_batch_sharding`)."""
    b = x0_B2.shape[0]
    t_key, z_key = jax.random.split(key)
    if self.config.diffusion.kind == "ddpm":
      t_B = jax.random.randint(t_key, (b,), 0, self.config.diffusion.num_timesteps,
                               out_sharding=_batch_sharding(x0_B2, 1))
    else:
      t_B = jax.random.uniform(t_key, (b,), minval=self.config.diffusion.t_eps,
                               maxval=self.sde.T, out_sharding=_batch_sharding(x0_B2, 1))
    z_B2 = jax.random.normal(z_key, (b, 2), jnp.float32, out_sharding=_batch_sharding(x0_B2, 2))
    return t_B, z_B2

  def score_fn(self, model: nnx.Module):
    """s_θ(x [B, 2], t [B] ∈ [0, 1]) → ∇ log p_t(x) [B, 2], for the SDE samplers."""
    def fn(x_B2, t_B):
      out_B2 = model(x_B2, TIME_LABEL_SCALE * t_B)
      if self.config.diffusion.prediction == "score":
        return out_B2
      std_B1 = self.sde.marginal_std(t_B)[:, None]
      return -out_B2 / std_B1                        # ∇ log p_0t(x_t | x_0) = −z / s(t)
    return fn

  def per_example_loss(self, model: nnx.Module, x0_B2: jax.Array, t_B: jax.Array,
                       z_B2: jax.Array) -> jax.Array:
    """[B] losses at given times and noise (the training loss is their mean)."""
    d = self.config.diffusion
    if d.kind == "ddpm":
      alpha_B1 = _take(self.sched.sqrt_alphas_cumprod, t_B)[:, None]          # √ᾱ_t
      sigma_B1 = _take(self.sched.sqrt_one_minus_alphas_cumprod, t_B)[:, None]  # √(1 − ᾱ_t)
      xt_B2 = alpha_B1 * x0_B2 + sigma_B1 * z_B2                      # eq. (4) of 2006.11239
      target_B2 = gaussian.target(x0_B2, z_B2, alpha_B1, sigma_B1, d.prediction)
      err_B2 = model(xt_B2, t_B).astype(jnp.float32) - target_B2
      return jnp.mean(jnp.square(err_B2), axis=-1)                    # eq. (14), L_simple
    mean_B2, std_B2 = sde_lib.marginal_prob(self.sde, x0_B2, t_B)
    xt_B2 = mean_B2 + std_B2 * z_B2
    score_B2 = self.score_fn(model)(xt_B2, t_B).astype(jnp.float32)
    # λ(t) ‖s_θ − ∇log p_0t‖² with λ = s²: ‖s·s_θ + z‖² — eq. (7) of 2011.13456
    return jnp.sum(jnp.square(std_B2 * score_B2 + z_B2), axis=-1)

  def loss(self, model, batch: Batch, key: jax.Array):
    x0_B2 = batch["x"]
    t_B, z_B2 = self.draw_noise(key, x0_B2)
    return jnp.mean(self.per_example_loss(model, x0_B2, t_B, z_B2)), {}

  def eval_metrics(self, model, batch: Batch):
    """Held-out loss with a fixed key (the same t and z for every eval, so curves compare)."""
    x0_B2, mask_B = batch["x"], batch["mask"]
    t_B, z_B2 = self.draw_noise(jax.random.key(1234), x0_B2)
    loss_B = self.per_example_loss(model, x0_B2, t_B, z_B2)
    return {"loss": (loss_B * mask_B).sum(), "count": mask_B.sum()}

  # --- sampling and evaluation ----------------------------------------------------------------

  def sample(self, model: nnx.Module, key: jax.Array, num: int) -> jax.Array:
    """[num, 2] samples with the configured sampler (traceable; jit it around the model)."""
    d, shape = self.config.diffusion, (num, 2)
    if d.kind == "ddpm":
      model_fn = lambda x, t: model(x, t)
      kwargs = {"prediction_type": d.prediction}
      if d.sampler == "ddpm":
        kwargs["variance"] = d.variance
      else:
        kwargs["num_steps"] = d.sample_steps
        if d.sampler == "ddim":
          kwargs["eta"] = d.eta
      return samplers.sample(d.sampler, model_fn, self.sched, key, shape, **kwargs)
    score_fn = self.score_fn(model)
    if d.sampler == "ode":
      x_T = sde_lib.prior_sample(self.sde, key, shape)
      return sde_samplers.probability_flow_sample(self.sde, score_fn, x_T, d.ode_method,
                                                  d.sample_steps, d.t_eps)
    corrector = d.corrector_steps if d.sampler == "pc" else 0
    return sde_samplers.pc_sample(self.sde, score_fn, key, shape, d.sample_steps, d.t_eps,
                                  corrector_steps=corrector, snr=d.snr)

  def jitted_sampler(self, graphdef):
    """jit(state → samples), compiled once per run (the graphdef does not change)."""
    if self._sample_fn is None:
      num, seed = self.config.eval.num_samples, self.config.eval.sample_seed
      self._sample_fn = jax.jit(
          lambda state: self.sample(nnx.merge(graphdef, state), jax.random.key(seed), num))
    return self._sample_fn

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    n = self.config.eval.num_samples
    test_N2 = data.load(self.config.dataset, "test").arrays["x"]
    if test_N2.shape[0] < 2 * n:
      raise ConfigError(f"config.eval.num_samples={n} needs 2n ≤ {test_N2.shape[0]} test points")
    graphdef, state = nnx.split(model)
    samples_N2 = np.asarray(jax.device_get(self.jitted_sampler(graphdef)(state)))
    perm = np.random.default_rng(self.config.eval.sample_seed).permutation(test_N2.shape[0])
    ref_N2, other_N2 = test_N2[perm[:n]], test_N2[perm[n:2 * n]]
    finite = np.isfinite(samples_N2).all(axis=-1)
    ed = float(metrics.energy_distance(samples_N2[finite], ref_N2)) if finite.all() else np.inf
    floor = float(metrics.energy_distance(other_N2, ref_N2))      # data vs data, same n
    save_scatter(os.path.join(workdir, f"samples_step{step}.png"), samples_N2, ref_N2,
                 f"{self.config.get('name', 'diffusion2d')} step {step}: energy distance "
                 f"{ed:.4f} (floor {floor:.4f})")
    return {"energy_distance": ed, "energy_floor": floor, "energy_ratio": ed / floor}


def save_scatter(path: str, samples_N2: np.ndarray, data_N2: np.ndarray, title: str) -> str:
  """Side-by-side scatter of samples and data on shared axes, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), sharex=True, sharey=True)
  for ax, pts, name, color in ((axes[0], data_N2, "held-out data", "tab:blue"),
                               (axes[1], samples_N2, "samples", "tab:orange")):
    pts = pts[np.isfinite(pts).all(axis=-1)]
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color)
    ax.set_title(f"{name} ({len(pts)})")
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
