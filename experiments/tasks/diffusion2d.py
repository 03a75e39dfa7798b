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


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import gaussian
from genfm.diffusion import samplers
from genfm.diffusion import sde as sde_lib
from genfm.diffusion import sde_samplers
from genfm.diffusion.mlp_denoiser import MLPDenoiser, MLPDenoiserConfig
from genfm.experiments import data
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import toy2d_eval
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import batch_sharding, check_ddpm, choice, sampler_kwargs

KINDS = ("ddpm", "sde")
SDE_SAMPLERS = ("euler_maruyama", "pc", "ode")
SDE_PREDICTIONS = ("eps", "score")
ODE_METHODS = ("euler", "heun", "rk45")
TIME_LABEL_SCALE = 999.0          # continuous t ∈ [0, 1] → embedding label 999·t


class Diffusion2DTask(Task):
  """`config.dataset` ∈ {moons, eight_gaussians, swiss_roll} → MLP denoiser → DDPM or score SDE."""

  def __init__(self, config):
    super().__init__(config)
    self._train = toy2d_eval.train_points(config, "diffusion2d")
    d = config.diffusion
    choice("config.diffusion.kind", d.kind, KINDS)
    if d.kind == "ddpm":
      self.sched = check_ddpm(d)
    else:
      choice("config.diffusion.prediction", d.prediction, SDE_PREDICTIONS)
      choice("config.diffusion.sampler", d.sampler, SDE_SAMPLERS)
      choice("config.diffusion.sde", d.sde, sde_lib.SDE_NAMES)
      choice("config.diffusion.ode_method", d.ode_method, ODE_METHODS)
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
                               out_sharding=batch_sharding(x0_B2, 1))
    else:
      t_B = jax.random.uniform(t_key, (b,), minval=self.config.diffusion.t_eps,
                               maxval=self.sde.T, out_sharding=batch_sharding(x0_B2, 1))
    z_B2 = jax.random.normal(z_key, (b, 2), jnp.float32, out_sharding=batch_sharding(x0_B2, 2))
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
    """[B] losses at given times and noise (the training loss is their mean): the library's
    L_simple (eq. 14 of 2006.11239) or denoising score matching (eq. 7 of 2011.13456)."""
    d = self.config.diffusion
    if d.kind == "ddpm":
      return gaussian.per_example_loss(model, self.sched, x0_B2, t_B, z_B2, d.prediction)
    return sde_lib.dsm_per_example(self.score_fn(model), self.sde, x0_B2, t_B, z_B2)

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
      return samplers.sample(d.sampler, lambda x, t: model(x, t), self.sched, key, shape,
                             **sampler_kwargs(d, d.sampler))
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
    toy2d_eval.check_num_samples(self.config)
    graphdef, state = nnx.split(model)
    samples_N2 = np.asarray(jax.device_get(self.jitted_sampler(graphdef)(state)))
    return toy2d_eval.evaluate(self.config, samples_N2, workdir, step,
                               self.config.get("name", "diffusion2d"))
