"""Text conditioning's cost (`genfm-bench text2image`): train step and guided sampling.

Rows, all on 32×32×1 padded Fashion-MNIST (DDPM ε, batch 32 on CPU / 128 on an accelerator):
- `train_step`: one jitted launcher train step of
    `unet_class`  fashion_ddpm's class-conditional U-Net (the baseline; labels, no text),
    `unet_text`   fashion_t2i's U-Net (4 heads, cross-attention at 16×16, 8×8 and the middle)
                  with the frozen 2-layer text tower run inside the step,
    `dit_text`    fashion_t2i:dit's DiT (D 128, 6 blocks, patch 4) with PixArt-α cross-attention;
- `sample`: text-guided DDIM sampling (`Text2ImageTask.sample_text`, CFG as one batch of 2B:
  prompt + empty prompt), images/s and seconds per denoiser call, for `unet_text`.
The text tower is random here (timing does not depend on its weights); no classifier is read.
FLOPs are XLA's cost analysis of the compiled step (`bench.compiled_flops`).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from genfm.experiments import bench
from genfm.experiments.configs import fashion_ddpm, fashion_t2i
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

ROWS = ("unet_class", "unet_text", "dit_text")


def _t2i(variant: str, batch_size: int):
  from genfm.experiments.tasks.text2image import Text2ImageTask  # pylint: disable=g-import-not-at-top
  cfg = fashion_t2i.get_config(variant)
  cfg.fid_classifier_workdir = ""
  cfg.init_from_models.text, cfg.allow_random_text = "", True
  cfg.batch_size = batch_size
  return Text2ImageTask(cfg), cfg


def _num_params(models: dict, name: str) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(
      nnx.state(models[name], nnx.Param))))


def text2image_bench(emit, *, rows=ROWS, sample: bool = True, steps: int = 10) -> None:
  """One record per train-step row of `rows`, then (when `sample`) the sampling row."""
  on_cpu = jax.default_backend() == "cpu"
  batch_size = 32 if on_cpu else 128
  peak = bench.matmul_peak()["flops_per_sec"]
  iters = 3 if on_cpu else 20
  tasks = {}
  for label in rows:
    if label == "unet_class":
      c = fashion_ddpm.get_config("")
      c.fid_classifier_workdir, c.batch_size = "", batch_size
      task = DiffusionImageTask(c)
      shapes = {"model": nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))}
    else:
      task, c = _t2i("" if label == "unet_text" else "dit", batch_size)
      shapes = nnx.eval_shape(lambda: task.build_models(nnx.Rngs(0)))
    tasks[label] = (task, c)
    rec = bench.train_step_record(task, c, name="text2image_train_step", config_label=label,
                                  peak=peak, iters=iters)
    emit({**rec, "model": label, "params": _num_params(shapes, "model"),
          "backend": jax.default_backend()})
  if not sample:
    return
  # Guided sampling throughput of the text U-Net.
  from genfm.experiments import train  # pylint: disable=g-import-not-at-top
  task, c = tasks.get("unet_text") or _t2i("", batch_size)
  models, state = train.init_state(task, c)
  models = models.eval_models(state, ema=False)
  tokens = task.heldout_prompts(batch_size)["text"]
  task.sample_text(models, jax.random.key(0), tokens, num_steps=steps)    # compile
  t0 = time.perf_counter()
  for i in range(iters):
    task.sample_text(models, jax.random.key(i), tokens, num_steps=steps)
  seconds = (time.perf_counter() - t0) / iters
  emit({"name": "text2image_sample", "model": "unet_text", "sampler": f"ddim-{steps}",
        "batch_size": batch_size, "seconds": seconds, "images_per_sec": batch_size / seconds,
        "seconds_per_denoiser_call_2B": seconds / steps, "backend": jax.default_backend(),
        "params": _num_params(models, "model")})
