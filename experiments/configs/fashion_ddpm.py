"""Class-conditional DDPM with classifier-free guidance on Fashion-MNIST (padded to 32×32).

First train the FID classifier (its penultimate features define the Fréchet distance):
          python -m genfm.experiments.run --config=experiments/configs/fashion_lenet.py --workdir=runs/fashion_lenet
Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_ddpm.py --workdir=runs/fashion_ddpm
          then  python -m genfm.experiments.diffusion_steps --workdir=runs/fashion_ddpm
          (DDIM 10/20/50/100 vs DDPM-1000 table and figure; ODE bits/dim)
Hardware: CPU, 2 cores, shared with 3 other jobs (load 14–22 while measured).
Run time: sized from the measured step time: a 16-channel U-Net (16/32/32, 268,017 params,
          attention only in the middle block at 8×8), batch 32, 1500 steps. The step timing
          before the run (batch 64 under load ~12: 7.7 s/step at 16 channels, 11.9 s at 32)
          already said that no useful step count fits 25 min on this machine today; the run
          measured 2.8 s/step (0.3–0.4 steps/s), i.e. ~70 min for 1500 steps. A quiet 2-core
          CPU would be several times faster (not measured).
Measured: the CPU run was stopped (SIGTERM, checkpoint kept; rerun the command to resume) at
          step 439 of 1500 for the deadline: train ε-loss 0.045. FD (n = 100, LeNet features,
          guidance s = 2) of DDIM-10 samples 123.8 vs the real-vs-real floor 11.3 at the same
          n — samples are mostly saturated blobs with a few recognisable bags and tops; see
          runs/fashion_ddpm/diffusion_steps.md for the steps table. The FID classifier was
          fashion_lenet.py stopped at step 1134 (test accuracy 0.896 at step 1000).
Expect:   eval metric `fd` (FD of `eval.num_samples` DDIM-50 samples, s = 2, to as many test
          images) above the floor `fd_floor` of the same n: a CPU-sized run gives shapes, not
          good samples. The full 1500-step number is not measured yet.
`:gpu` — the full-size setting (DDPM's CIFAR-10 U-Net shape scaled to 1 channel: 64/128/128,
          2 res blocks, attention at 16 and 8, dropout 0.1, batch 128, 40k steps, lr 2e-4;
          n = 5000 samples). NOT RUN: no GPU was lent to this work, and it is far beyond this CPU;
          its run time and FD are unmeasured.
`:smoke` — sklearn digits (8×8, no padding), a tiny U-Net (8/16, 41,961 params), 150 steps,
          n = 140 DDIM-20 samples; 88 s CPU time (7 min wall under load 13, mostly compiles).
          Needs a digits classifier: `fashion_lenet.py:smoke` into runs/fashion_lenet_smoke (or
          --config.fid_classifier_workdir). Measured FD 58.7 vs floor 5.6 (n = 140; the untrained
          network scores 128.5);
          tests/experiments/test_fashion_ddpm_smoke.py holds it to fd ≤ 100 and floor < fd.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "gpu", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_ddpm", variant, VARIANTS)
  c = base_config("fashion_ddpm", task="diffusion_image", dataset="fashion_mnist")
  c.pad = 2                                   # 28×28 → 32×32 (background −1)
  c.model = ml_collections.ConfigDict({
      "base_channels": 16,
      "channel_mults": (1, 2, 2),             # 32 → 16 → 8
      "num_res_blocks": 1,
      "attn_resolutions": (),                 # self-attention in the middle block (8×8) only
      "num_heads": 1,
      "num_groups": 8,
      "dropout": 0.0,
  })
  c.diffusion = ml_collections.ConfigDict({
      "prediction": "eps",          # eps | x0 | v
      "schedule": "linear",         # linear | cosine (β 1e-4 → 0.02)
      "num_timesteps": 1000,
      "p_uncond": 0.1,              # label dropout, Algorithm 1 of 2207.12598
      "guidance_scale": 2.0,        # s = 1 + w; 1 = conditional, 0 = unconditional
      "sampler": "ddim",            # ddpm | ddim | dpm_solver_pp  (for the eval samples)
      "sample_steps": 50,
      "eta": 0.0,
      "variance": "beta",           # DDPM ancestral σ² = β | beta_tilde
  })
  c.eval = ml_collections.ConfigDict({
      "num_samples": 500,           # FD sample size n; the floor uses two real sets of n
      "sample_seed": 0,
      "sample_batch_size": 250,
      "num_loss_images": 1000,      # held-out ε-loss on the first 1000 test images
      "grid_cols": 10,
  })
  c.fid_classifier_workdir = "runs/fashion_lenet"   # "" skips the FD
  c.batch_size, c.eval_batch_size = 32, 250
  c.optimizer, c.learning_rate, c.weight_decay = "adam", 1e-3, 0.0
  c.schedule, c.warmup_steps = "warmup_cosine", 100
  c.grad_clip_norm = 1.0
  set_schedule(c, 1500, log=100, eval_=1500, checkpoint=500)
  if variant == "gpu":
    c.name = "fashion_ddpm_gpu"
    c.model.base_channels, c.model.num_res_blocks = 64, 2
    c.model.attn_resolutions, c.model.dropout = (16, 8), 0.1
    c.batch_size, c.eval_batch_size, c.learning_rate = 128, 1000, 2e-4
    c.warmup_steps = 1000
    c.eval.num_samples, c.eval.sample_batch_size = 5000, 1000
    set_schedule(c, 40_000, log=500, eval_=10_000, checkpoint=5000)
  if variant == "smoke":
    c.name, c.dataset, c.pad = "fashion_ddpm_smoke", "digits", 0
    c.model.base_channels, c.model.channel_mults, c.model.num_groups = 8, (1, 2), 4
    c.diffusion.sample_steps = 20
    c.eval.num_samples, c.eval.sample_batch_size, c.eval.num_loss_images = 140, 140, 297
    c.fid_classifier_workdir = "runs/fashion_lenet_smoke"
    c.batch_size, c.eval_batch_size, c.learning_rate = 64, 297, 3e-3
    c.warmup_steps = 20
    set_schedule(c, 150, log=50, eval_=150, checkpoint=150)
  return c
