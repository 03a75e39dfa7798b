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
- "flow": flow matching (arXiv:2210.02747) / rectified flow (arXiv:2209.03003) through
      `genfm.diffusion.flow`: the CFM loss ‖v_θ(x_t, t) − u_t‖² with t ~ U(0, 1), t = 0 noise and
      t = 1 data, path "fm" (σ_min) or "rf"; coupling "independent" or minibatch "ot" (OT-CFM,
      arXiv:2302.00482, `diffusion/ot_coupling.py`); sampled by Euler / Heun / RK45 from t = 0 to 1.
      Reflow (2-RF, Sec. 2.2 of 2209.03003): `diffusion.reflow_from = <workdir of a finished flow
      run>` makes the training set `reflow_pairs` fixed couplings (noise, ODE(noise)) drawn from
      that run's model with its sampler at `reflow_steps` steps; the new model trains on them
      (usually also `init_from` the same run, as the paper does).

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
import ml_collections
import numpy as np
from flax import nnx

from genfm.diffusion import flow
from genfm.diffusion import gaussian
from genfm.diffusion import ot_coupling
from genfm.diffusion import samplers
from genfm.diffusion import sde as sde_lib
from genfm.diffusion import sde_samplers
from genfm.diffusion.mlp_denoiser import MLPDenoiser, MLPDenoiserConfig
from genfm.experiments import data
from genfm.experiments import init_from
from genfm.experiments import workdir as workdir_lib
from genfm.experiments.data import sources
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import toy2d_eval
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import check_ddpm, choice, sampler_kwargs

KINDS = ("ddpm", "sde", "flow")
SDE_SAMPLERS = ("euler_maruyama", "pc", "ode")
SDE_PREDICTIONS = ("eps", "score")
ODE_METHODS = ("euler", "heun", "rk45")
FLOW_KEYS = ("path", "sigma_min", "coupling", "sampler", "sample_steps")
TIME_LABEL_SCALE = 999.0
REFLOW_KEY = 0x2EF10              # folded into reflow_seed: the pairs' noise is never eval noise          # continuous t ∈ [0, 1] → embedding label 999·t


class Diffusion2DTask(Task):
  """`config.dataset` ∈ {moons, eight_gaussians, swiss_roll} → MLP denoiser → DDPM, score SDE
  or flow matching / rectified flow."""

  def __init__(self, config):
    super().__init__(config)
    self._train = toy2d_eval.train_points(config, "diffusion2d")
    d = config.diffusion
    choice("config.diffusion.kind", d.kind, KINDS)
    self._reflow_train = None
    if d.kind == "ddpm":
      self.sched = check_ddpm(d)
    elif d.kind == "flow":
      check_flow(d)
      if d.get("reflow_from", ""):
        self.reflow_source_config = check_reflow_source(config)
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
    d = self.config.diffusion
    if d.kind == "flow" and d.get("reflow_from", ""):
      if self._reflow_train is None:
        self._reflow_train = self.reflow_pairs()
      return self._reflow_train
    return self._train

  def reflow_pairs(self) -> sources.ArraySource:
    """{"x": ODE(noise), "noise": noise} from the `reflow_from` run's model: the coupling
    (Z₀, Z₁) that rectified flow trains its next model on (Sec. 2.2 of 2209.03003)."""
    d = self.config.diffusion
    src_cfg, src_task, model = load_run(d.reflow_from, "config.diffusion.reflow_from")
    sd = src_cfg.diffusion
    n, chunk = int(d.reflow_pairs), 10_000
    # A key of its own: jax's partitionable threefry makes normal(key(s), (n, 2))[:m] equal
    # normal(key(s), (m, 2)), so key(reflow_seed) would put the eval's noise (key(sample_seed))
    # among the training pairs and score memorised couplings.
    key = jax.random.fold_in(jax.random.key(d.get("reflow_seed", 0)), REFLOW_KEY)
    noise_N2 = np.asarray(jax.random.normal(key, (n, 2)))
    graphdef, state = nnx.split(model)

    @jax.jit
    def push(state, z_B2):
      return flow.sample(src_task.velocity_fn(nnx.merge(graphdef, state)), z_B2, sd.sampler,
                         int(d.reflow_steps))

    out = [np.asarray(push(state, noise_N2[i:i + chunk])) for i in range(0, n, chunk)]
    arrays = {"x": np.concatenate(out).astype(np.float32), "noise": noise_N2.astype(np.float32)}
    if not np.isfinite(arrays["x"]).all():
      raise ConfigError(f"config.diffusion.reflow_from={d.reflow_from!r}: its ODE gives "
                        "non-finite points; that run diverged")
    return sources.ArraySource(arrays, sources.info_from_arrays("reflow", "train", arrays))

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
    for the SDE, t ~ U(0, 1) for flow (t = 0 noise). The split (t from the first key, z from
    the second) is part of the contract the tests check."""
    b = x0_B2.shape[0]
    t_key, z_key = jax.random.split(key)
    if self.config.diffusion.kind == "ddpm":
      t_B = jax.random.randint(t_key, (b,), 0, self.config.diffusion.num_timesteps)
    elif self.config.diffusion.kind == "flow":       # t ~ U(0, 1), t = 0 noise (2210.02747)
      t_B = jax.random.uniform(t_key, (b,))
    else:
      t_B = jax.random.uniform(t_key, (b,), minval=self.config.diffusion.t_eps,
                               maxval=self.sde.T)
    z_B2 = jax.random.normal(z_key, (b, 2), jnp.float32)
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

  def velocity_fn(self, model: nnx.Module):
    """v_θ(x [B, 2], t [B] ∈ [0, 1]) for the flow samplers: the network fed 999·t."""
    return lambda x_B2, t_B: model(x_B2, TIME_LABEL_SCALE * t_B)

  def per_example_loss(self, model: nnx.Module, x0_B2: jax.Array, t_B: jax.Array,
                       z_B2: jax.Array) -> jax.Array:
    """[B] losses at given times and noise (the training loss is their mean): the library's
    L_simple (eq. 14 of 2006.11239) or denoising score matching (eq. 7 of 2011.13456)."""
    d = self.config.diffusion
    if d.kind == "ddpm":
      return gaussian.per_example_loss(model, self.sched, x0_B2, t_B, z_B2, d.prediction)
    if d.kind == "flow":       # x0_B2 is data here; z_B2 the noise (t = 0 end), eq. (9) of 2210.02747
      return flow.cfm_per_example(self.velocity_fn(model), d.path, z_B2, x0_B2, t_B, d.sigma_min)
    return sde_lib.dsm_per_example(self.score_fn(model), self.sde, x0_B2, t_B, z_B2)

  def loss(self, model, batch: Batch, key: jax.Array):
    x0_B2 = batch["x"]
    t_B, z_B2 = self.draw_noise(key, x0_B2)
    if self.config.diffusion.kind == "flow":
      if "noise" in batch:                             # reflow: the fixed (Z₀, Z₁) pairs
        z_B2 = batch["noise"]
      elif self.config.diffusion.coupling != "independent":   # minibatch OT (2302.00482)
        # The whole batch's [B, B] cost (GSPMD gathers the rows it needs).
        z_B2 = ot_coupling.couple(self.config.diffusion.coupling, z_B2, x0_B2)
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
    if d.kind == "flow":
      return flow.sample(self.velocity_fn(model), jax.random.normal(key, shape), d.sampler,
                         d.sample_steps)
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
    out = toy2d_eval.evaluate(self.config, samples_N2, workdir, step,
                              self.config.get("name", "diffusion2d"))
    if self.config.diffusion.kind == "flow":         # eq. (2) of 2209.03003, 100 Euler steps
      noise = jax.random.normal(jax.random.key(self.config.eval.sample_seed + 1),
                                (self.config.eval.num_samples, 2))
      out["straightness"] = float(jax.jit(lambda s: flow.straightness(
          self.velocity_fn(nnx.merge(graphdef, s)), noise, 100))(state))
    return out

  def sample_at_nfe(self, model: nnx.Module, key: jax.Array, num: int, nfe: int) -> jax.Array:
    """[num, 2] samples at `nfe` network evaluations: Euler for flow models, DDIM (η = 0) or
    the configured DPM-Solver++ for DDPM ones (one evaluation per step each)."""
    d = self.config.diffusion
    if d.kind == "flow":
      return flow.sample(self.velocity_fn(model), jax.random.normal(key, (num, 2)), "euler", nfe)
    if d.kind == "ddpm":
      name = "dpm_solver_pp" if d.sampler == "dpm_solver_pp" else "ddim"
      return samplers.sample(name, lambda x, t: model(x, t), self.sched, key, (num, 2),
                             **sampler_kwargs(d, name, num_steps=nfe))
    raise ConfigError(f"sample_at_nfe: diffusion kind {d.kind!r} has no fixed-NFE sampler here")


def check_flow(d) -> None:
  """`config.diffusion`'s flow-matching choices, each a one-line ConfigError."""
  missing = [k for k in FLOW_KEYS if k not in d]
  if missing:
    raise ConfigError(f"config.diffusion.kind='flow' needs config.diffusion.{', '.join(missing)} "
                      "(see experiments/configs/toy2d_flow.py)")
  choice("config.diffusion.path", d.path, flow.PATHS)
  choice("config.diffusion.coupling", d.coupling, ot_coupling.COUPLINGS)
  choice("config.diffusion.sampler", d.sampler, flow.METHODS)
  if not isinstance(d.sample_steps, int) or d.sample_steps < 1:
    raise ConfigError(f"config.diffusion.sample_steps: NFE < 1 (got {d.sample_steps!r}); the "
                      "flow sampler needs at least one step")
  if not 0.0 <= d.sigma_min < 1.0:
    raise ConfigError(f"config.diffusion.sigma_min must be in [0, 1), got {d.sigma_min!r}")
  if d.get("reflow_from", ""):
    if d.coupling != "independent":
      raise ConfigError("config.diffusion.reflow_from trains on the source run's fixed (noise, "
                        "ODE(noise)) pairs; set config.diffusion.coupling='independent'")
    for key in ("reflow_pairs", "reflow_steps"):
      if not isinstance(d.get(key), int) or d.get(key) < 1:
        raise ConfigError(f"config.diffusion.{key} must be a positive integer, got "
                          f"{d.get(key)!r}")


def check_reflow_source(config) -> ml_collections.ConfigDict:
  """The recorded config of `config.diffusion.reflow_from`, checked to be a finished 2-D flow run
  on the same data set with a checkpoint; one-line ConfigError otherwise."""
  where = config.diffusion.reflow_from
  what = f"config.diffusion.reflow_from={where!r}"
  rec = workdir_lib.recorded_config(where) if os.path.isdir(where) else None
  if rec is None:
    raise ConfigError(f"{what} holds no run (no config.json); point it at the workdir of a "
                      "finished toy2d_flow run")
  src = ml_collections.ConfigDict(rec)
  kind = src.get("diffusion", {}).get("kind") if src.get("task") == "diffusion2d" else None
  if kind != "flow":
    raise ConfigError(f"{what} is a run of another task ({src.get('task')!r}, diffusion kind "
                      f"{kind!r}); reflow needs a 2-D flow run (task diffusion2d, kind 'flow')")
  if src.dataset != config.dataset:
    raise ConfigError(f"{what} was trained on {src.dataset!r}, this run on "
                      f"{config.dataset!r}; reflow needs the same data set")
  ckpt = os.path.join(where, "checkpoints")
  if not os.path.isdir(ckpt) or not any(s.isdigit() for s in os.listdir(ckpt)):
    raise ConfigError(f"{what} holds no checkpoint ({ckpt}/<step>); train that run first")
  return src


def load_run(workdir: str, what: str = "workdir"):
  """(config, task, model with its newest (EMA) checkpoint's weights) of a finished 2-D run."""
  rec = workdir_lib.recorded_config(workdir) if os.path.isdir(workdir) else None
  if rec is None or rec.get("task") != "diffusion2d":
    raise ConfigError(f"{what}={workdir!r} is not a finished diffusion2d run (config.json "
                      f"task {None if rec is None else rec.get('task')!r})")
  cfg = ml_collections.ConfigDict(rec)
  task = Diffusion2DTask(cfg)
  model = task.build_model(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  step, source, _ = init_from.read_source(workdir)
  values, _ = init_from.load_into({"model": {"params": params, "rest": rest}}, task, source,
                                  f"{what}={workdir!r} step {step}")
  return cfg, task, nnx.merge(graphdef, values["model"]["params"], values["model"]["rest"])
