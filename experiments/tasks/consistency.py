"""Consistency distillation (CD) and consistency training (CT) from a trained image DDPM.

Consistency models, Song et al. 2023, arXiv:2303.01469 (library: `diffusion/consistency.py`),
in EDM's σ convention (`diffusion/edm.py`: x_σ = data + σ noise, ε = 0.002 ≤ σ ≤ T = 80).

Models (the multi-model API of `tasks/base.py`):
  teacher   the class-conditional DDPM ε-U-Net of a finished `diffusion_image` run
            (`config.init_from`, e.g. runs/fashion_ddpm), frozen. As an EDM denoiser
            (`edm.ddpm_denoiser`) with classifier-free guidance at the teacher's scale s, its
            PF-ODE is the ODE that DDIM η = 0 discretises.
  student   the same U-Net initialised from the teacher (`net`), read as a consistency function
            f_θ(x, σ, c) = c_skip(σ) x + c_out(σ) F_θ with F_θ EDM's raw network of the
            teacher-shaped denoiser (`consistency.from_denoiser`): f(x, ε) = x exactly, and at
            step 0 f_θ ≈ the teacher's conditional denoiser. Its EMA target θ⁻ (`target`, the
            same U-Net held in `TargetParam` variables, not trained, checkpointed with it).
The target update θ⁻ ← μ θ⁻ + (1 − μ) θ (Algorithm 2) is applied lazily at the start of each
step, from the parameters that step starts with — the value Algorithm 2 computes at the end of
the previous step; so with μ = 0 the target is exactly the current θ, and θ⁻ = θ at step 0.

`config.cm.mode`:
  cd   eq. (7): x_{t_{n+1}} = x + t_{n+1} z, x̂_{t_n} = one Heun step of the guided teacher's
       PF-ODE, loss d(f_θ(x_{t_{n+1}}, t_{n+1}, c), f_θ⁻(x̂_{t_n}, t_n, c)), fixed N and μ.
  ct   eq. (10): x̂_{t_n} = x + t_n z, N(k) and μ(k) of App. C; no teacher in the loss.
The student samples conditionally without guidance (the guided teacher is what CD distils).

Evaluation (host side): 1-step and 2-step (σ's `cm.sample_sigmas_1step` / `_2step`, Algorithm 1)
samples of the student with balanced labels; their Fréchet distance with the FD protocol of
`fashion_ddpm` (`diffusion/fashion_fid.py`, classifier `config.fid_classifier_workdir`, n =
`eval.num_samples`, same reference set and real-vs-real floor) beside the teacher's guided DDIM-10
FD measured in the same run (once: the teacher is frozen); a sample grid of each.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import consistency as cm
from genfm.diffusion import edm
from genfm.diffusion import guidance
from genfm.experiments import init_from, prerequisite
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.diffusion_image import (CLASS_NAMES, DiffusionImageTask,
                                                     save_grid, to_model_input)

MODES = ("cd", "ct")
# Keys of the teacher's recorded config.json that must equal this run's: the same network and
# the same discrete diffusion (a teacher of another config cannot be wrapped as this one).
TEACHER_KEYS = ("task", "dataset", "pad", "model", "diffusion.prediction", "diffusion.schedule",
                "diffusion.num_timesteps")


class TargetParam(nnx.Variable):
  """A parameter of the EMA target network θ⁻: not an `nnx.Param`, so never trained."""


class Student(nnx.Module):
  """The trained U-Net θ (`net`) and its EMA target θ⁻ (`target`, starting as a copy)."""

  def __init__(self, net: nnx.Module):
    self.net = net
    self.target = nnx.clone(net)
    for _, node in list(nnx.iter_graph(self.target)):
      if isinstance(node, nnx.Module):
        for name, var in list(vars(node).items()):
          if isinstance(var, nnx.Param):
            setattr(node, name, TargetParam(jnp.array(var[...])))


def check_teacher(config) -> None:
  """The teacher workdir `config.init_from` holds a finished-enough run of the same network and
  diffusion: a checkpoint and a recorded config that agrees on TEACHER_KEYS; one line if not."""
  where = config.get("init_from", "")
  if not where:
    raise ConfigError("the consistency task needs its teacher: set --config.init_from to the "
                      "workdir of a trained diffusion_image run (e.g. runs/fashion_ddpm)")
  ckpts = os.path.join(os.path.abspath(where), "checkpoints")
  if not init_from._steps(ckpts):  # pylint: disable=protected-access
    raise ConfigError(f"teacher workdir config.init_from={where!r} holds no checkpoint (no "
                      f"{ckpts}/<step>/state); train the teacher there first")
  path = os.path.join(where, "config.json")
  try:
    with open(path) as f:
      teacher = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"teacher workdir config.init_from={where!r} has no readable config.json; "
                      "it is not a launcher run") from None
  diff = prerequisite.config_difference(json.loads(config.to_json_best_effort()), teacher,
                                        TEACHER_KEYS, fixed={"task": "diffusion_image"})
  if diff:
    key, got, want = diff
    raise ConfigError(f"teacher workdir config.init_from={where!r} is a run of another config "
                      f"({teacher.get('name', '?')!r}): its {key} is {got!r}, this run needs "
                      f"{want!r}")


class ConsistencyTask(DiffusionImageTask):
  """A trained `diffusion_image` teacher → consistency model (CD or CT), 1- and 2-step FD."""

  def __init__(self, config):
    c = config.cm
    if c.mode not in MODES:
      raise unknown_choice("config.cm.mode", c.mode, MODES)
    if c.distance not in cm.DISTANCES:
      raise unknown_choice("config.cm.distance", c.distance, cm.DISTANCES)
    if c.mode == "cd" and (int(c.num_scales) != c.num_scales or c.num_scales < 2):
      raise ConfigError(f"config.cm.num_scales must be an integer ≥ 2, got {c.num_scales!r}")
    if not 0.0 <= c.mu < 1.0:
      raise ConfigError(f"config.cm.mu (the target EMA decay) must be in [0, 1), got {c.mu}")
    for name in ("sample_sigmas_1step", "sample_sigmas_2step"):
      s = tuple(c[name])
      if not s or any(b >= a for a, b in zip(s, s[1:])) or s[-1] <= cm.EPS or s[0] > c.sigma_max:
        raise ConfigError(f"config.cm.{name}={s} must decrease from at most σ_max = "
                          f"{c.sigma_max} and stay above ε = {cm.EPS} (NFE ≥ 1)")
    if config.get("latent_autoencoder_workdir", ""):
      raise ConfigError("the consistency task distils pixel-space teachers only; set "
                        "--config.latent_autoencoder_workdir=''")
    check_teacher(config)
    super().__init__(config)
    self._teacher_fd = None

  def eval_sources(self):
    return {}                               # metrics are the FDs of after_eval

  # --- models -----------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    return {"student": Student(self.build_model(rngs)), "teacher": self.build_model(rngs)}

  def trainable(self, name: str):
    return nnx.Param if name == "student" else nnx.Nothing

  def init_source(self, name, source_models):
    return source_models[0] if len(source_models) == 1 else "model"

  def convert_source(self, name: str, arrays: dict) -> dict:
    """The teacher's U-Net arrays for the student's θ (`net/…`) and θ⁻ (`target/…`) alike."""
    if name != "student":
      return arrays
    return {**{f"net/{p}": x for p, x in arrays.items()},
            **{f"target/{p}": x for p, x in arrays.items()}}

  # --- the networks as functions of (x, σ) ------------------------------------------------------

  def _unet_fn(self, unet, labels_B):
    """DDPM network (x_vp, t) → ε̂."""
    return lambda x, t: unet(x, t, labels_B)

  def consistency_fn(self, unet, labels_B) -> cm.ConsistencyFn:
    """f(x, σ) of a U-Net (the student's θ or θ⁻) for these labels."""
    d = self.config.diffusion
    return cm.from_denoiser(edm.ddpm_denoiser(self._unet_fn(unet, labels_B), self.sched,
                                              d.prediction))

  def teacher_denoiser(self, teacher, labels_B) -> edm.Denoiser:
    """The teacher as an EDM denoiser, guided at the teacher's scale s (CFG on ε̂)."""
    d = self.config.diffusion
    apply = lambda x, t, lab: teacher(x, t, lab)
    eps_fn = guidance.guided_model(apply, labels_B, self.num_classes, d.guidance_scale)
    return edm.ddpm_denoiser(eps_fn, self.sched, d.prediction)

  # --- training ---------------------------------------------------------------------------------

  def train_step(self, ctx, batch, key) -> None:
    c = self.config.cm
    x0_BHWC = to_model_input(batch["image"], self.config.get("pad", 0))
    labels_B = batch["label"].astype(jnp.int32)
    b = x0_BHWC.shape[0]
    if c.mode == "cd":
      num_scales, mu = c.num_scales, jnp.float32(c.mu)
    else:
      num_scales, mu = cm.ct_schedule(ctx.step, self.config.num_train_steps, c.s0, c.s1, c.mu0)
    n_key, z_key = jax.random.split(key)
    # n uniform on the N − 1 adjacent pairs (t_n, t_{n+1}), 0-based n ∈ [0, N − 2]
    n_B = jax.random.randint(n_key, (b,), 0, num_scales - 1)
    z_BHWC = jax.random.normal(z_key, x0_BHWC.shape, jnp.float32)
    teacher = self.teacher_denoiser(ctx.model("teacher"), labels_B) if c.mode == "cd" else None
    kw = dict(kind=c.distance, eps=cm.EPS, sigma_max=c.sigma_max)

    def loss_fn(student):
      # θ⁻ ← μ θ⁻ + (1 − μ) θ (lazily, see the module docstring); stored in the student's rest.
      theta = nnx.to_pure_dict(nnx.state(student.net, nnx.Param))
      target = nnx.state(student.target, TargetParam)
      nnx.replace_by_pure_dict(target, cm.ema_target(nnx.to_pure_dict(target), theta, mu))
      nnx.update(student.target, target)
      f_student = self.consistency_fn(student.net, labels_B)
      f_target = self.consistency_fn(student.target, labels_B)
      if c.mode == "cd":
        loss_B = cm.cd_per_example(f_student, f_target, teacher, x0_BHWC, n_B, z_BHWC,
                                   num_scales, solver=c.solver, **kw)
      else:
        loss_B = cm.ct_per_example(f_student, f_target, x0_BHWC, n_B, z_BHWC, num_scales, **kw)
      return jnp.mean(loss_B), {"num_scales": jnp.float32(num_scales), "mu": mu}

    ctx.update("student", loss_fn)

  # --- evaluation -------------------------------------------------------------------------------

  def cm_samples(self, student, n: int, sigmas) -> np.ndarray:
    """n student samples (balanced labels) by Algorithm 1 on `sigmas`, from a fixed key."""
    graphdef, state = nnx.split(student)
    shape_of = lambda b: (b,) + self.image_shape
    sigmas = tuple(float(s) for s in sigmas)
    name = ("cm",) + sigmas
    if name not in self._sample_fns:
      def fn(state, key, labels):
        f = self.consistency_fn(nnx.merge(graphdef, state).net, labels)
        return cm.multistep_sample(f, key, shape_of(labels.shape[0]), sigmas)
      self._sample_fns[name] = jax.jit(fn)
    fn, labels, out = self._sample_fns[name], self.balanced_labels(n), []
    batch = self.config.eval.get("sample_batch_size", n)
    for i, start in enumerate(range(0, n, batch)):
      key = jax.random.key(self.config.eval.sample_seed + 1000 * i)
      out.append(np.asarray(fn(state, key, jnp.asarray(labels[start:start + batch]))))
    return np.concatenate(out)

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    c, n = self.config.cm, self.config.eval.num_samples
    fid = self.fid_evaluator()
    labels = self.balanced_labels(n)
    name = self.config.get("name", "consistency")
    draws = {"1step": self.cm_samples(models["student"], n, c.sample_sigmas_1step),
             "2step": self.cm_samples(models["student"], n, c.sample_sigmas_2step)}
    out = {}
    if self._teacher_fd is None:        # the frozen teacher's guided DDIM-10, once per run
      teacher = self.generate(models["teacher"], n, "ddim", num_steps=c.teacher_ddim_steps)
      tfd = fid(teacher) if fid is not None else float("nan")
      self._teacher_fd = tfd
      save_grid(os.path.join(workdir, f"teacher_ddim{c.teacher_ddim_steps}.png"), teacher,
                labels, self.num_classes, self.config.eval.get("grid_cols", 10),
                CLASS_NAMES.get(self.config.dataset),
                f"teacher DDIM-{c.teacher_ddim_steps}, s = {self.config.diffusion.guidance_scale}"
                + (f", FD {tfd:.2f}" if fid is not None else ""))
    for k, samples in draws.items():
      title = f"{name} ({c.mode}) step {step}: {k[0]}-step samples"
      if fid is not None:
        out[f"fd_{k}"] = fid(samples)
        title += f", FD {out[f'fd_{k}']:.2f} (floor {fid.floor:.2f}, n = {n})"
      save_grid(os.path.join(workdir, f"samples_{k}_step{step}.png"), samples, labels,
                self.num_classes, self.config.eval.get("grid_cols", 10),
                CLASS_NAMES.get(self.config.dataset), title)
    if fid is not None:
      out.update({f"fd_teacher_ddim{c.teacher_ddim_steps}": self._teacher_fd,
                  "fd_floor": fid.floor})
    return out
