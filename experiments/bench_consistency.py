"""Benchmark `cm_vs_ddim` (`genfm-bench cm_vs_ddim`): images/s of consistency-model sampling
(arXiv:2303.01469, Algorithm 1: 1 and 2 network evaluations) against the teacher's guided DDIM
(arXiv:2010.02502) at 50 and 10 steps, on the same U-Net (`fashion_ddpm`'s; `:gpu`'s on an
accelerator). The network is untrained: its cost does not depend on its weights, so the bench
needs no run. DDIM is guided as the teacher's evals are (CFG: one U-Net call on 2B per step);
the consistency student distils the guided teacher and samples without guidance (B per step).

Measured 2026-12-03 on the 2-core CPU under load ~10 (other agents' runs; batch 16, median of 3):
cm_1step 117.6 images/s, cm_2step 82.3, guided DDIM-10 10.4, guided DDIM-50 0.78 ⇒ 1-step CM
150× DDIM-50 (100× in U-Net images per sample; the excess is load noise). No GPU row: none lent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.diffusion import consistency as cm
from genfm.diffusion import edm
from genfm.experiments import bench
from genfm.experiments.bench_diffusion import _image_task

# (label, sampler, σ's or DDIM steps, U-Net images evaluated per sample)
ROWS = (("cm_1step", "cm", (80.0,), 1), ("cm_2step", "cm", (80.0, 0.8), 2),
        ("ddim_10_guided", "ddim", 10, 20), ("ddim_50_guided", "ddim", 50, 100))


def cm_vs_ddim(emit) -> None:
  task, config_label = _image_task()
  batch = 16 if jax.default_backend() == "cpu" else 1000
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  labels = jnp.asarray(task.balanced_labels(batch))
  shape = (batch,) + task.image_shape

  def cm_fn(sigmas):
    def fn(state, key, labels):
      net = nnx.merge(graphdef, state)
      D = edm.ddpm_denoiser(lambda x, t: net(x, t, labels), task.sched)
      return cm.multistep_sample(cm.from_denoiser(D), key, shape, sigmas)
    return jax.jit(fn)

  rows = {}
  for label, sampler, arg, evals in ROWS:
    fn = cm_fn(arg) if sampler == "cm" else task.sample_fn(graphdef, "ddim", arg)
    t = bench.time_fn(fn, state, jax.random.key(0), labels, warmup=1, iters=3)
    rows[label] = batch / t
    emit({"name": "cm_vs_ddim", "model": f"{config_label} U-Net", "sampler": label,
          "batch_size": batch, "unet_images_per_sample": evals, "seconds": t,
          "images_per_sec": batch / t, "backend": jax.default_backend()})
  emit({"name": "cm_vs_ddim", "speedup_cm1_over_ddim50": rows["cm_1step"] / rows["ddim_50_guided"],
        "backend": jax.default_backend()})
