"""Latent vs pixel diffusion: train-step time and guided sampling images/s (`genfm-bench
latent_vs_pixel`).

Rows, one process, the two alternated so machine drift hits both:
- `pixel`: fashion_ddpm's U-Net on padded 32×32×1 pixels (batch 32);
- `latent`: fashion_ldm's U-Net on the 8×8×4 latents of the autoencoder in
  `runs/fashion_kl_ae` (batch 32), plus the one-off cost of encoding the training set;
- sampling: guided DDIM-50, 250 samples, in pixels (the latent row includes the decoder).
The latent run's step count is set from this bench's ratio so both runs train for the same wall
time (experiments/configs/fashion_ldm.py).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from genfm.experiments import bench
from genfm.experiments.configs import fashion_ddpm, fashion_ldm
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

SAMPLES = 250


def _task(latent: bool):
  cfg = fashion_ldm.get_config("") if latent else fashion_ddpm.get_config("")
  cfg.fid_classifier_workdir = ""
  cfg.latent_autoencoder_config = ""       # a bench never trains the autoencoder
  return DiffusionImageTask(cfg), cfg


def sampling_rows(emit) -> None:
  """Guided DDIM-50 images/s of each (untrained) network: the cost, not the quality; the latent
  row includes decoding to pixels."""
  for label in ("pixel", "latent"):
    task, _ = _task(label == "latent")
    model = task.build_model(nnx.Rngs(0))
    model.eval()
    task.generate(model, SAMPLES, "ddim", 50, batch_size=SAMPLES)     # compile
    t0 = time.perf_counter()
    pixels = task.to_pixels(task.generate(model, SAMPLES, "ddim", 50, batch_size=SAMPLES))
    t = time.perf_counter() - t0
    emit({"name": "latent_vs_pixel", "config": label, "sampler": "ddim_50 guided",
          "samples": SAMPLES, "seconds": t, "images_per_sec": SAMPLES / t,
          "output_shape": list(np.shape(pixels)[1:]), "backend": jax.default_backend()})


def latent_vs_pixel(emit) -> None:
  sampling_rows(emit)                             # first: cheap, and no training set to encode
  peak = bench.matmul_peak()["flops_per_sec"]
  tasks = {}
  for label in ("pixel", "latent"):
    t0 = time.perf_counter()
    task, cfg = _task(label == "latent")
    source = task.train_source()                  # the latent row encodes the training set here
    tasks[label] = (task, cfg, time.perf_counter() - t0, len(source))
  for _ in range(2):                              # alternate: drift hits both rows
    for label, (task, cfg, setup, n) in tasks.items():
      rec = bench.train_step_record(task, cfg, name="latent_vs_pixel", config_label=label,
                                    peak=peak, iters=10)
      emit({**rec, "input_shape": list(task.image_shape), "setup_seconds": setup,
            "train_images": n, "backend": jax.default_backend()})
