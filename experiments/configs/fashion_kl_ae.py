"""KL autoencoder of latent diffusion (2112.10752) on Fashion-MNIST padded to 32×32×1.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_kl_ae.py --workdir=runs/fashion_kl_ae --config.perceptual_classifier_workdir=runs/fashion_lenet --config.fid_classifier_workdir=runs/fashion_lenet
          (variants "" f = 4: 32×32×1 → 8×8×4; :f2 f = 2: → 16×16×2; :smoke on digits)
Hardware: CPU, 2 cores shared with 4 other agents' jobs (load average 9–14 while measured).
Run time: "" 1,200 steps (batch 32, 233,173 params) in 17m17s wall at 0.6–1.7 steps/s under that
          load (a probe of the bare L1 + KL step at load ~2 ran 4.4 steps/s; the LeNet
          perceptual term adds its forward/backward), then one eval of ~35 s (5,000 test images,
          FD on 500, latent stats on 5,000 training images).
          :f2 800 steps (157,007 params) in 16m22s wall under the same load (1.2–1.3 steps/s),
          eval included. `genfm-bench autoencoder` (batch 256, load ~10): f = 4 encode 492
          images/s, decode 194, train (L1 + KL fwd + bwd) 33; f = 2: 400, 185, 39.
Measured: "" (f = 4, 32×32×1 → 8×8×4; /work/runs/fashion_kl_ae): test PSNR 25.12 dB (first
          5,000 test images, D(μ(x)) on the unpadded 28×28, [0, 1] pixels), L1 0.0500 and MSE
          0.0128 on the padded [−1, 1] images, KL 1450 nats per image; FD of the reconstructions
          of the floor's 500 test images to the 500 reference images 2.75 vs the real-vs-real
          floor 2.91 (fashion_lenet classifier): at the floor, within its noise; grid
          reconstructions_step1200.png (the "Lee" print and fine stripes are smoothed).
          latent_stats.json (posterior samples of 5,000 training images, key 0): latent mean
          −0.500, std 1.491, scale_factor 0.6705 (measured, not copied: Stable Diffusion's kl-f8
          uses 0.18215 for its own latents).
          scale_factor · z over 10,000 other training images (5,000–15,000, other keys): std
          1.00006, mean −0.33 (per channel means −0.94, −0.95, −0.05, 0.60: not centred, as in
          the LDM, which scales only).
          :f2 (f = 2, → 16×16×2; /work/runs/fashion_kl_ae_f2): test PSNR 25.64 dB, L1 0.0481,
          MSE 0.0114, KL 5557; FD 2.79 vs floor 2.91; latent mean −1.855, std 3.272,
          scale_factor 0.3056. Twice the latent values per image (16·16·2 = 512 vs 8·8·4 = 256)
          bought +0.5 dB in two-thirds of the steps.
          PatchGAN: not used in these runs (disc_weight 0); the adaptive weight and the hinge
          D are exercised by :smoke and tests, not measured for benefit at this size.
Expect:   "" and :f2 test_psnr ≥ 24.5 and fd ≤ 1.2 · fd_floor; :smoke (sklearn digits 8×8, pad 0,
          f = 2 → 4×4×2, base 8, PatchGAN from step 100 with the adaptive weight, no perceptual
          term, no FD: CI has no LeNet; 300 steps, 34 s through the launcher on a quiet CPU):
          test PSNR 18.84 dB measured, ≥ 17 held by
          tests/experiments/test_experiments_autoencoder.py, which also checks that
          scale_factor · z has unit variance on the training set (±0.03).

Model: `diffusion/autoencoder.py` (LDM Encoder/Decoder without attention), GroupNorm 8 groups;
loss L1 + perceptual (LeNet features, LPIPS-style) + KL·1e-6 in the LDM's summed units;
Adam, cosine decay. The PatchGAN (disc_weight > 0) is off by default: see Measured.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, set_schedule

VARIANTS = ("", "f2", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_kl_ae", variant, VARIANTS)
  c = base_config("fashion_kl_ae", task="autoencoder", dataset="fashion_mnist")
  c.pad = 2                                   # 28×28 → 32×32 (background −1)
  c.ae = ml_collections.ConfigDict({
      "base_channels": 16,
      "channel_mults": (1, 2, 2),             # f = 2^(levels − 1) = 4
      "num_res_blocks": 1,
      "latent_channels": 4,
      "num_groups": 8,
      "rec_loss": "l1",                       # l1 (the LDM's) | l2
      "perceptual_weight": 0.1,               # LDM: 1.0 with LPIPS; ours is ~5× larger
      "kl_weight": 1e-6,                      # LDM kl-f4/f8 configs: 1e-6 (summed units)
      "disc_weight": 0.0,                     # > 0: PatchGAN + adaptive weight (eq. 7, 2012.09841)
      "disc_start": 1000,                     # generator term and D loss on from this step
      "disc_width": 16,
      "disc_layers": 2,
  })
  c.perceptual_classifier_workdir = "runs/fashion_lenet"   # "" ⇒ no perceptual term
  c.fid_classifier_workdir = "runs/fashion_lenet"          # "" skips the FD
  c.fid_classifier_config = "fashion_lenet.py"             # trained there first if it holds none
  c.eval = ml_collections.ConfigDict({
      "num_samples": 500,                     # FD n: reconstructions of the floor's 500 images
      "sample_seed": 0,
      "num_test_images": 5_000,               # PSNR / L1 / KL on the first 5000 test images
      "latent_stats_images": 5_000,           # training images behind latent_stats.json
      "grid_cols": 10,
  })
  c.optimizer, c.learning_rate, c.weight_decay = "adam", 2e-3, 0.0
  c.schedule, c.warmup_steps = "warmup_cosine", 100
  c.batch_size, c.eval_batch_size = 32, 500
  set_schedule(c, 1200, log=100, eval_=1200, checkpoint=400)
  if variant == "f2":
    c.name = "fashion_kl_ae_f2"
    c.ae.channel_mults, c.ae.latent_channels = (1, 2), 2
    set_schedule(c, 800, log=100, eval_=800, checkpoint=400)
  if variant == "smoke":
    c.name, c.dataset, c.pad = "fashion_kl_ae_smoke", "digits", 0
    c.ae.base_channels, c.ae.channel_mults, c.ae.latent_channels = 8, (1, 2), 2
    c.ae.perceptual_weight, c.perceptual_classifier_workdir = 0.0, ""
    c.ae.disc_weight, c.ae.disc_start, c.ae.disc_width, c.ae.disc_layers = 0.1, 100, 8, 1
    c.fid_classifier_workdir = ""
    c.eval.num_samples, c.eval.num_test_images, c.eval.latent_stats_images = 100, 300, 10_000
    c.batch_size, c.eval_batch_size, c.learning_rate = 32, 300, 3e-3
    set_schedule(c, 300, log=100, eval_=300, checkpoint=300)
  return c
