"""Benchmarks of the diffusion experiments (`genfm-bench ddpm_train_step diffusion_sample`).

Two families: the 2-D MLP denoiser (`configs/toy2d_*.py`) and the Fashion-MNIST U-Net
(`configs/fashion_ddpm.py`, 32×32×1, guided with CFG as its eval samples are).

- `ddpm_train_step`: the jitted train step of `configs/toy2d_ddpm.py` (ε-prediction loss, eq. 14
  of arXiv:2006.11239, AdamW) at a few batch sizes: examples/s and FLOP/s as a fraction of the
  matmul peak measured in the same run.
- `diffusion_sample`: samples/s of the MLP denoiser at one batch for DDPM ancestral (1000 steps),
  DDIM (50, arXiv:2010.02502), DPM-Solver++(2M) (20, arXiv:2211.01095), and for the score SDE
  (arXiv:2011.13456) reverse Euler–Maruyama (1000) and probability-flow ODE Heun (100 steps,
  200 network evaluations). The network is the untrained one: its cost does not depend on its
  weights, and the benchmark then needs no training run. Sampling FLOPs are counted as network
  FLOPs × evaluations (the samplers' own arithmetic on [B, 2] arrays is negligible).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.experiments import bench
from genfm.diffusion import guidance
from genfm.experiments.configs import fashion_ddpm, toy2d_ddpm, toy2d_score_sde
from genfm.experiments.tasks.diffusion2d import Diffusion2DTask
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

TRAIN_BATCHES = (256, 4096)
SAMPLE_BATCH = 2000


def _image_variant() -> str:
  """fashion_ddpm's CPU config on CPU, its `:gpu` config on an accelerator."""
  return "" if jax.default_backend() == "cpu" else "gpu"


def image_batches() -> tuple[int, int]:
  """(train, sample) batch of the U-Net rows: the CPU config's 32 and a sampling batch of 4 on
  CPU (guided DDPM-1000 there takes ~15 s per image); the :gpu config's 128 and 256 elsewhere."""
  return (128, 256) if _image_variant() else (32, 4)


def _image_task() -> tuple[DiffusionImageTask, str]:
  """(task, its config label) of the U-Net rows."""
  variant = _image_variant()
  cfg = fashion_ddpm.get_config(variant)
  cfg.fid_classifier_workdir = ""      # the bench needs no FID classifier
  return DiffusionImageTask(cfg), "fashion_ddpm" + (f":{variant}" if variant else "")


def ddpm_train_step(emit) -> None:
  peak = bench.matmul_peak()["flops_per_sec"]
  for batch_size in TRAIN_BATCHES:
    cfg = toy2d_ddpm.get_config("moons")
    cfg.batch_size = batch_size
    emit({**bench.train_step_record(Diffusion2DTask(cfg), cfg, name="ddpm_train_step",
                                    config_label="toy2d_ddpm:moons", peak=peak),
          "backend": jax.default_backend()})
  task, label = _image_task()
  task.config.batch_size = image_batches()[0]
  emit({**bench.train_step_record(task, task.config, name="ddpm_train_step",
                                  config_label=label, peak=peak, iters=5),
        "backend": jax.default_backend()})


# (label, config module, diffusion overrides, network evaluations per sample)
SAMPLERS = (
    ("ddpm_1000", toy2d_ddpm, {"sampler": "ddpm"}, 1000),
    ("ddim_50", toy2d_ddpm, {"sampler": "ddim", "sample_steps": 50}, 50),
    ("dpm_solver_pp_20", toy2d_ddpm, {"sampler": "dpm_solver_pp", "sample_steps": 20}, 20),
    ("sde_euler_maruyama_1000", toy2d_score_sde, {"sampler": "euler_maruyama",
                                                  "sample_steps": 1000}, 1000),
    ("sde_ode_heun_100", toy2d_score_sde, {"sampler": "ode", "ode_method": "heun",
                                           "sample_steps": 100}, 200),
)


def diffusion_sample(emit) -> None:
  peak = bench.matmul_peak()["flops_per_sec"]
  for label, module, overrides, nfe in SAMPLERS:
    cfg = module.get_config("moons")
    cfg.diffusion.update(overrides)
    task = Diffusion2DTask(cfg)
    graphdef, state = nnx.split(task.build_model(nnx.Rngs(0)))
    fn = jax.jit(lambda s, key: task.sample(nnx.merge(graphdef, s), key, SAMPLE_BATCH))
    key = jax.random.key(0)
    # XLA's cost analysis counts a scan / while body once, not once per iteration, so the
    # sampler's FLOPs are (FLOPs of one network call) × (network evaluations).
    net = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t))
    x, t_B = jnp.zeros((SAMPLE_BATCH, 2)), jnp.zeros((SAMPLE_BATCH,))
    net_flops = bench.compiled_flops(net, state, x, t_B)
    flops = net_flops * nfe if net_flops else None
    t = bench.time_fn(fn, state, key, warmup=1, iters=3)
    emit({"name": "diffusion_sample", "sampler": label, "batch_size": SAMPLE_BATCH,
          "network_evals": nfe, "seconds": t, "samples_per_sec": SAMPLE_BATCH / t,
          "flops_per_network_eval": net_flops, "flops_per_call": flops,
          "flops_per_sec": flops / t if flops else None,
          "fraction_of_matmul_peak": flops / t / peak if flops else None,
          "backend": jax.default_backend()})
  image_sample(emit, peak)


# (label, sampler, steps, network evaluations per sample: CFG runs the U-Net on the conditional
# and the null label, batched as one call of 2B). Cheapest first: a time limit that cuts the run
# short (experiments/gpu_check.sh) then loses only the DDPM-1000 row.
IMAGE_SAMPLERS = (("ddim_50", "ddim", 50, 50), ("dpm_solver_pp_20", "dpm_solver_pp", 20, 20),
                  ("ddpm_1000", "ddpm", None, 1000))


def image_sample(emit, peak: float) -> None:
  """Guided U-Net samples/s (fashion_ddpm's network, untrained: the cost is the same)."""
  task, config_label = _image_task()
  batch = image_batches()[1]
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  labels = jnp.asarray(task.balanced_labels(batch))
  net = jax.jit(lambda s, x, t: guidance.guided_model(
      nnx.merge(graphdef, s), labels, task.num_classes, task.config.diffusion.guidance_scale)(x, t))
  net_flops = bench.compiled_flops(net, state, jnp.zeros((batch, *task.image_shape)),
                                   jnp.zeros((batch,), jnp.int32))
  for label, sampler, steps, nfe in IMAGE_SAMPLERS:
    fn = task.sample_fn(graphdef, sampler, steps)
    flops = net_flops * nfe if net_flops else None
    t = bench.time_fn(fn, state, jax.random.key(0), labels, warmup=1, iters=1)
    emit({"name": "diffusion_sample", "model": f"{config_label} U-Net, guided", "sampler": label, "batch_size": batch, "network_evals": nfe,
          "seconds": t, "samples_per_sec": batch / t, "flops_per_call": flops,
          "flops_per_sec": flops / t if flops else None,
          "fraction_of_matmul_peak": flops / t / peak if flops else None,
          "backend": jax.default_backend()})
