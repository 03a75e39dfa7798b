"""Unconditional DCGAN (1511.06434) and WGAN-GP (1704.00028) on Fashion-MNIST padded to 32×32.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_dcgan.py[:wgan_gp] --workdir=runs/fashion_dcgan[_wgan_gp] --config.fid_classifier_workdir=runs/fashion_lenet
          (variants "" = DCGAN, non-saturating loss, batch-norm D; :wgan_gp (layer-norm critic,
          λ = 10, n_critic = 5, Adam 1e-4, β = (0, 0.9)); :smoke)
Hardware: CPU, 2 cores shared with other jobs (load average 3–6 while measured).
Run time: DCGAN 3,000 steps in 7m37s (4–6 steps/s; W = 16, Z = 64, 149,426 params, batch 64,
          evals at 1,500 and 3,000); WGAN-GP 800 generator steps (4,000 critic updates, 5×64
          images per step) in 9m18s (1.5–1.8 steps/s). `genfm-bench gan_step` at these sizes:
          63 ms per DCGAN step (D 21 + G 42), 357 ms per WGAN-GP step (5 × 63 critic + 44 G).
Measured: Fréchet distance with the `fashion_ddpm` protocol (LeNet penultimate features of the
          `fashion_lenet.py` run in /work/runs/fashion_lenet, n = 500 samples vs 500 test images;
          its real-vs-real floor 2.76 — the DDPM's 2.91 came from an earlier LeNet run), class-
          unconditional samples against the same class-mixed reference:
            DCGAN    step 1,500 FD 64.3 (23× floor), step 3,000 FD 28.8 (10.5× floor)
            WGAN-GP  step   400 FD 174.3 (63×),     step   800 FD 129.2 (47×)
          (the DDPM: 12.54 at 5k steps, 6.57 on :long). DCGAN at 3k steps draws recognisable
          shirts, trousers, sneakers, boots, bags and dresses, some smeared; WGAN-GP after 800
          generator steps draws grey garment-shaped blobs without texture: at Alg. 1's rate
          (1e-4) and 5 critic updates per G step it is far from converged on this budget (the
          paper trains 200k generator steps). An earlier run under load ~20 (W = 16): DCGAN FD
          193 → 117 at 250 → 500 steps (19m32s), WGAN-GP 208 → 221 at 75 → 150 steps (22m).
Expect:   DCGAN FD ≤ 40 at 3k steps, WGAN-GP ≤ 150 at 800 (same classifier). `:smoke`
          (Fashion-MNIST, W = 8, Z = 16, 150 steps, no FD: CI has no Fashion LeNet): mean-image
          gap of 200 samples to 200 test images ≤ 0.3 (measured 0.193; untrained G 0.587), held by tests/experiments/test_experiments_gan_image.py. On sklearn digits padded 8 → 32
          the smoke GAN did not learn (LeNet-smoke FD 247 and 214 after 200 / 300 steps vs 212.5
          untrained), hence Fashion-MNIST.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "wgan_gp", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_dcgan", variant, VARIANTS)
  c = base_config("fashion_dcgan", task="gan_image", dataset="fashion_mnist")
  c.pad = 2                                   # 28×28 → 32×32 (background −1)
  c.gan = ml_collections.ConfigDict({
      "latent_dim": 64,
      "width": 16,                # base width W: G 4W → 2W → W, D W → 2W → 4W
      "loss": "non_saturating",   # non_saturating | minimax | wgan_gp
      "critic_steps": 1,          # D updates per G update (n_critic); each takes batch/k images
      "gp_lambda": 10.0,          # λ of eq. (3), 1704.00028 (wgan_gp only)
      "disc_norm": "batch",       # batch (DCGAN) | layer | none (WGAN-GP critic)
  })
  # DCGAN §4: Adam, lr 2e-4, β₁ = 0.5, batch 128, no weight decay, a constant rate.
  c.batch_size, c.eval_batch_size = 64, 500
  c.optimizer, c.learning_rate, c.b1, c.b2, c.weight_decay = "adam", 2e-4, 0.5, 0.999, 0.0
  c.schedule, c.warmup_steps = "constant", 0
  c.eval = ml_collections.ConfigDict({
      "num_samples": 500,         # FD sample size n; the floor uses two real sets of n
      "sample_seed": 0,
      "num_loss_images": 1000,    # held-out D loss / critic gap on the first 1000 test images
      "grid_rows": 10, "grid_cols": 10,
  })
  c.fid_classifier_workdir = "runs/fashion_lenet"   # "" skips the FD
  c.fid_classifier_config = "fashion_lenet.py"      # trained there first if it holds no run
  set_schedule(c, 3000, log=100, eval_=1500, checkpoint=1500)
  if variant == "wgan_gp":
    # Alg. 1 of 1704.00028: λ = 10, n_critic = 5, Adam α = 1e-4, β = (0, 0.9); batch m per
    # critic update, so the loop's batch holds 5m images.
    c.name = "fashion_dcgan_wgan_gp"
    c.gan.loss, c.gan.critic_steps, c.gan.disc_norm = "wgan_gp", 5, "layer"
    c.batch_size = 5 * 64
    c.learning_rate, c.b1, c.b2 = 1e-4, 0.0, 0.9
    set_schedule(c, 800, log=50, eval_=400, checkpoint=400)
  if variant == "smoke":
    # Fashion-MNIST itself (no download; 60k images load in seconds), tiny networks, no FD: a
    # CI machine has no Fashion LeNet, and sklearn digits padded 8 → 32 did not train here.
    c.name = "fashion_dcgan_smoke"
    c.gan.latent_dim, c.gan.width = 16, 8
    c.learning_rate = 5e-4
    c.eval.num_samples, c.eval.num_loss_images = 200, 200
    c.fid_classifier_workdir = ""
    set_schedule(c, 150, log=50, eval_=150, checkpoint=150)
  return c
