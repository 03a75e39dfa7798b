"""DiT (arXiv:2212.09748) vs the U-Net: train-step time and FLOPs (`genfm-bench dit_vs_unet`).

Rows, all on the Fashion-MNIST image task (`tasks/diffusion_image.py`, 32×32×1 padded, DDPM ε,
label dropout, batch 32 on CPU / 128 on an accelerator), one jitted launcher train step each:
- `unet`: fashion_ddpm's U-Net (268,017 parameters);
- `dit_p2`, `dit_p4`: a DiT of nearly the same parameter count (D 64, 4 blocks, 4 heads, MLP
  ratio 3, frequency features 64: 283k at patch 2, 285k at patch 4), at 256 and 64 tokens;
- `dit_equal_flops`: fashion_dit's DiT (D 128, 6 blocks, patch 4), the one trained for as many
  FLOPs as the U-Net's 5,000 steps;
- on a GPU, the DiT rows again with `attention_impl="pallas"` (the genfm.kernels flash kernel).
FLOPs are XLA's cost analysis of the compiled step (`bench.compiled_flops`).

Measured 2026-12-03, shared 2-core CPU (load ~7, so times are inflated), batch 32, fp32
(`python -m genfm.experiments.bench dit_vs_unet`, 3m51s):
    row               params     GFLOP/step   s/step   fraction of matmul peak
    unet              268,017       11.36      0.338     0.71
    dit_p2            283,652       15.33      1.309     0.25
    dit_p4            285,200        2.59      0.116     0.47
    dit_equal_flops 1,844,496       16.27      0.584     0.59
At equal parameters the patch-2 DiT (256 tokens) costs 1.35× the U-Net's FLOPs and runs 3.9×
slower (attention on 256 tokens with head dim 16 uses the CPU poorly); the patch-4 DiT is 4.4×
cheaper in FLOPs. The flash-attention rows need a GPU: not measured (no device lent).
"""

from __future__ import annotations

import jax
from flax import nnx
import ml_collections

from genfm.experiments import bench
from genfm.experiments.configs import fashion_ddpm, fashion_dit
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

# (label, DiT model config or None for the U-Net)
MODELS = (
    ("unet", None),
    ("dit_p2", dict(hidden=64, depth=4, heads=4, patch=2, mlp_ratio=3.0)),
    ("dit_p4", dict(hidden=64, depth=4, heads=4, patch=4, mlp_ratio=3.0)),
    ("dit_equal_flops", dict(hidden=128, depth=6, heads=4, patch=4, mlp_ratio=4.0)),
)


def task_for(model: dict | None, batch_size: int, attention_impl: str = "xla"):
  """fashion_ddpm's task and config with the U-Net (model None) or the DiT `model`."""
  cfg = fashion_ddpm.get_config("")
  cfg.fid_classifier_workdir = ""               # no FID classifier needed
  cfg.batch_size = batch_size
  if model is not None:
    m = dict(model)
    mlp_ratio = m.pop("mlp_ratio")
    cfg.model = fashion_dit.dit_model(**m)
    cfg.model.mlp_ratio, cfg.model.attention_impl = mlp_ratio, attention_impl
  return DiffusionImageTask(cfg), cfg


def num_params(task) -> int:
  shapes = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), nnx.Param)
  return sum(x.size for x in jax.tree.leaves(shapes))


def dit_vs_unet(emit) -> None:
  on_cpu = jax.default_backend() == "cpu"
  batch_size = 32 if on_cpu else 128
  peak = bench.matmul_peak()["flops_per_sec"]
  impls = ("xla",) if on_cpu else ("xla", "pallas")
  for label, model in MODELS:
    for impl in impls if model is not None else ("xla",):
      task, cfg = task_for(model, batch_size, impl)
      rec = bench.train_step_record(task, cfg, name="dit_vs_unet", config_label=label,
                                    peak=peak, iters=5 if on_cpu else 20)
      emit({**rec, "model": label, "params": num_params(task), "attention_impl": impl,
            "backend": jax.default_backend()})
