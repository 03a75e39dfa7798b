"""Latent diffusion (2112.10752) on Fashion-MNIST: the class-conditional DDPM of fashion_ddpm.py
trained on the frozen KL autoencoder's 8×8×4 latents (f = 4) instead of 32×32×1 pixels.

The autoencoder run (`fashion_kl_ae.py`) is trained first into `latent_autoencoder_workdir` when
that workdir holds no finished run; its encoder's posterior parameters for the 60,000 training
images are computed once at start (`DiffusionImageTask.with_latents`), the denoiser trains on
z·s with z a fresh posterior sample each step and s = 1/std(z) measured on the training set
(latent_stats.json of the autoencoder run); samples are decoded to pixels and scored with the
same FD protocol as fashion_ddpm (n = 500, LeNet features, real-vs-real floor).
Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_ldm.py --workdir=runs/fashion_ldm
Hardware: CPU, 2 cores (shared with four other jobs, load 8–15).
Run time: 45m52s for 22,000 steps of batch 32 (7–21 steps/s with the load; a U-Net of base 32,
          mults (1, 2), 2 res blocks on 8×8×4 latents, 3.34 GFLOP per step vs the pixel
          U-Net's 11.36), including 2–3 min to encode the training set once and two evals.
          22,000 latent steps take the wall time of ≈ 2,500 pixel steps of fashion_ddpm.py
          (`genfm-bench latent_vs_pixel`: 0.070 vs 0.69 s per step, 157 s encoding).
Measured: FD (n = 500, guided s = 2, DDIM-50, decoded to pixels) 6.29 at step 11,000 and 5.98 at
          22,000, floor 2.91; the pixel run at equal wall time (its step 2,500): 31.24, at its
          end (5,000 steps): 12.54. Test ε-loss 0.0628 (on latents: not comparable with pixels).
Expect:   `fd` ≤ 7 (measured 5.98).
`:t2i` — text-to-image in latent space (the Stable Diffusion recipe): fashion_t2i.py's task and
          frozen CLIP text tower (runs/captions_clip), this latent U-Net with 4-head
          cross-attention at 8×8 and the middle block (967,396 trained parameters), guidance
          s = 3, 10,000 steps, 39m25s wall under load:
          python -m genfm.experiments.run --config=experiments/configs/fashion_ldm.py:t2i --workdir=runs/fashion_ldm_t2i
          Measured on 500 held-out prompts: class accuracy 0.932 (LeNet's own test accuracy
          0.918), attribute agreement 0.986, FD 6.20 (0.858 / 0.971 / 11.25 at step 5,000).
          Expect: class_accuracy ≥ 0.9, fd ≤ 8. Guidance sweep: `t2i_sweep` (WORKSPACE.md).
`:smoke` — sklearn digits (8×8) through the digits autoencoder (`fashion_kl_ae.py:smoke`, f = 2 →
          4×4×2 latents; trained first into runs/fashion_kl_ae_smoke if missing), tiny U-Net,
          150 steps, n = 140 DDIM-20 samples; FD held ≤ 100 (with floor < fd) by
          tests/experiments/test_fashion_ldm.py.
"""

import ml_collections

from genfm.experiments.configs import fashion_ddpm, fashion_t2i
from genfm.experiments.configs.common import check_variant, set_schedule

VARIANTS = ("", "t2i", "smoke")
T2I_STEPS = 10_000
# fashion_ddpm trains 5,000 pixel steps; its FD at step 2,500 (31.2) is the equal-wall-time point:
# `genfm-bench latent_vs_pixel` measured 0.690 vs 0.070 s per step (9.8×) and 157 s to encode the
# training set once (= 2,240 latent steps), so 2,500 pixel steps buy 2,500 · 9.8 − 2,240 ≈ 22,000.
LATENT_STEPS = 22_000


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_ldm", variant, VARIANTS)
  if variant == "t2i":       # text-to-image in latent space: the Stable Diffusion recipe
    c = fashion_t2i.get_config("")
  else:
    c = fashion_ddpm.get_config("smoke" if variant == "smoke" else "")
  c.name = "fashion_ldm" + (f"_{variant}" if variant else "")
  c.latent_autoencoder_workdir = "runs/fashion_kl_ae"
  c.latent_autoencoder_config = "fashion_kl_ae.py"     # trained there first if missing
  c.model.base_channels = 32
  c.model.channel_mults = (1, 2)            # 8 → 4; self-attention in the middle block (4×4)
  c.model.num_res_blocks = 2
  set_schedule(c, LATENT_STEPS, log=500, eval_=LATENT_STEPS // 2, checkpoint=2000)
  if variant == "t2i":
    c.model.num_heads = 4                   # 16-d heads for the cross-attention
    c.model.cross_attn_resolutions = (8,)   # + the middle block (4×4)
    set_schedule(c, T2I_STEPS, log=500, eval_=T2I_STEPS // 2, checkpoint=2000)
  if variant == "smoke":
    c.latent_autoencoder_workdir = "runs/fashion_kl_ae_smoke"
    c.latent_autoencoder_config = "fashion_kl_ae.py:smoke"
    c.model.base_channels, c.model.channel_mults, c.model.num_groups = 8, (1, 2), 4
    c.model.num_res_blocks = 1
    set_schedule(c, 150, log=50, eval_=150, checkpoint=150)
  return c
