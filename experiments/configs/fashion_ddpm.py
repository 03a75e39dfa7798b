"""Class-conditional DDPM with classifier-free guidance on Fashion-MNIST (padded to 32×32).

The FID classifier (its penultimate features define the Fréchet distance) is trained first into
`fid_classifier_workdir` from `fid_classifier_config` when that workdir holds no finished run
(or train it yourself: `--config=experiments/configs/fashion_lenet.py --workdir=runs/fashion_lenet`).
Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_ddpm.py --workdir=runs/fashion_ddpm
          then  python -m genfm.experiments.diffusion_steps --workdir=runs/fashion_ddpm
          (DDIM 10/20/50/100 vs DDPM-1000 table and figure; ODE bits/dim)
Hardware: CPU, 2 cores (this run); `:gpu` for an accelerator.
Run time: 28m55s for 5,000 steps of batch 32 (2.9 steps/s; a 16-channel U-Net 16/32/32,
          268,017 params, attention only in the middle block at 8×8), two evals of 500 guided
          DDIM-50 samples included. The FID classifier `fashion_lenet.py` takes 25m46s (test
          accuracy 0.9182).
Measured: test ε-loss 0.0412; FD (n = 500, LeNet features, guidance s = 2, DDIM-50) 12.54
          against the real-vs-real floor 2.91 at the same n (31.2 at step 2,500). Samples: clear
          trousers, sneakers, boots, bags and tops, with some saturated noise-texture failures.
          `diffusion_steps` on this run (n = 500 each, same labels and reference set):
              DDIM 10 / 20 / 50 / 100 steps: FD 22.06 / 15.41 / 12.54 / 11.94
              DDPM 1000 steps (σ² = β):       FD 9.49
          (FD / floor from 7.6 at DDIM-10 to 3.3 at DDPM-1000: quality rises with steps, and
          1000 ancestral steps beat DDIM-100, the ordering of Table 1 of 2010.02502 on CIFAR-10,
          FID 4.16 for DDIM-100 vs 3.17 for DDPM-1000 with σ̂)
          sampling 28 s (DDIM-10) to 2,500 s (DDPM-1000) on the 2-core CPU. ODE bits/dim of the
          first 8 test images (probability-flow ODE, RK45 rtol 1e-5, Hutchinson, uniform
          dequantisation, 32×32 padded = 1,024 dims): 3.03 ± 0.78 (std over images; 566 NFE).
Expect:   eval metric `fd` ≤ 15 at n = 500 (measured 12.54); floor ≈ 2.9.
`:long` — the same U-Net and batch trained 3× longer (15,000 steps) with an EMA of the weights
          (decay 0.9995, DDPM App. B; evals score the EMA, `raw_*` the raw weights):
          python -m genfm.experiments.run --config=experiments/configs/fashion_ddpm.py:long --workdir=runs/fashion_ddpm_long
          1h03m on the 2-core CPU (4.6 steps/s; two evals of 2 × 500 samples). Measured: test
          ε-loss 0.0378; FD 6.57 (EMA) / 6.76 (raw) vs floor 2.91 at step 15,000 (n = 500,
          DDIM-50, s = 2); at step 7,500, with the learning rate still high, 6.52 (EMA) vs 14.58
          (raw). `diffusion_steps` (n = 500): DDIM 10 / 20 / 50 / 100: FD 8.40 / 6.64 / 6.57 /
          6.51; with x̂_0 clipped to ±1 (`--clip_x0=1`) 7.62 / 6.81 / 6.77 / 6.83 (helps only at
          10 steps). ODE bits/dim of the first 8 test images 2.78 ± 0.77 (476 NFE).
          Expect: `fd` ≤ 8 (measured 6.57); the DDPM-1000 row is not measured for this run.
`:gpu` — the full-size setting (DDPM's CIFAR-10 U-Net shape scaled to 1 channel: 64/128/128,
          2 res blocks, attention at 16 and 8, dropout 0.1, batch 128, 15k steps, lr 2e-4;
          EMA 0.9995, one eval at the end; n = 5000 samples), sized to one 10-minute device
          call with the FID classifier:
          `bash experiments/gpu_check.sh OUT fashion`. Step time measured on an H200
          (`genfm-bench ddpm_train_step`): 23.8 ms ⇒ ~6 min of training plus evals. The run
          itself and its FD are NOT measured yet: no GPU was lent for it so far (the 15 device-
          minutes of 2026-11-30 went to the kernel and LLM benchmarks; none on 2026-12-01).
`:smoke` — sklearn digits (8×8, no padding), a tiny U-Net (8/16, 41,961 params), 150 steps,
          n = 140 DDIM-20 samples; 88 s CPU time (7 min wall under load 13, mostly compiles).
          Its digits classifier (`fashion_lenet.py:smoke`, 10 s) is trained first into
          runs/fashion_lenet_smoke if missing: one command. Measured FD 58.7 vs floor 5.6 (n = 140; the untrained
          network scores 128.5);
          tests/experiments/test_fashion_ddpm_smoke.py holds it to fd ≤ 100 and floor < fd.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "long", "gpu", "smoke")


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
      "remat": "none",                        # checkpoint each U-Net block: none | full | dots
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
      "clip_x0": 0.0,               # > 0: clip x̂_0 to [−c, c] while sampling (1.0: DDPM code)
  })
  c.eval = ml_collections.ConfigDict({
      "num_samples": 500,           # FD sample size n; the floor uses two real sets of n
      "sample_seed": 0,
      "sample_batch_size": 250,
      "num_loss_images": 1000,      # held-out ε-loss on the first 1000 test images
      "grid_cols": 10,
  })
  c.fid_classifier_workdir = "runs/fashion_lenet"   # "" skips the FD
  c.fid_classifier_config = "fashion_lenet.py"      # trained there first if it holds no run
  c.batch_size, c.eval_batch_size = 32, 250
  c.optimizer, c.learning_rate, c.weight_decay = "adam", 1e-3, 0.0
  c.schedule, c.warmup_steps = "warmup_cosine", 100
  c.grad_clip_norm = 1.0
  set_schedule(c, 5000, log=100, eval_=2500, checkpoint=500)
  if variant == "long":                      # the same U-Net, 3× the steps, evaluated on its EMA
    c.name, c.ema_decay = "fashion_ddpm_long", 0.9995
    set_schedule(c, 15_000, log=100, eval_=7_500, checkpoint=1_000)
  if variant == "gpu":
    c.name, c.ema_decay = "fashion_ddpm_gpu", 0.9995
    c.model.base_channels, c.model.num_res_blocks = 64, 2
    c.model.attn_resolutions, c.model.dropout = (16, 8), 0.1
    c.batch_size, c.eval_batch_size, c.learning_rate = 128, 1000, 2e-4
    c.warmup_steps = 1000
    c.eval.num_samples, c.eval.sample_batch_size = 5000, 1000
    # One eval, at the end: the EMA and the raw weights each draw 5,000 samples (~30 s apiece
    # on an H200, estimated), and the FID classifier plus 15k steps nearly fill a device call.
    set_schedule(c, 15_000, log=500, eval_=15_000, checkpoint=2_500)
  if variant == "smoke":
    c.name, c.dataset, c.pad = "fashion_ddpm_smoke", "digits", 0
    c.model.base_channels, c.model.channel_mults, c.model.num_groups = 8, (1, 2), 4
    c.diffusion.sample_steps = 20
    c.eval.num_samples, c.eval.sample_batch_size, c.eval.num_loss_images = 140, 140, 297
    c.fid_classifier_workdir = "runs/fashion_lenet_smoke"
    c.fid_classifier_config = "fashion_lenet.py:smoke"   # 10 s on a CPU, before step 1
    c.batch_size, c.eval_batch_size, c.learning_rate = 64, 297, 3e-3
    c.warmup_steps = 20
    set_schedule(c, 150, log=50, eval_=150, checkpoint=150)
  return c
