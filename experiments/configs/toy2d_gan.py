"""A GAN (1406.2661, non-saturating loss) on 2-D toy sets: generator and discriminator MLPs,
each with its own AdamW (β₁ 0.5) and learning rate, one discriminator step per generator step,
both weights averaged (EMA 0.999) for evaluation; `:<set>_wgan_gp` trains WGAN-GP (1704.00028).

Command:  python -m genfm.experiments.run --config=experiments/configs/toy2d_gan.py:moons --workdir=runs/toy2d_gan_moons
          (variants :moons, :eight_gaussians, :grid25, :eight_gaussians_wgan_gp, :grid25_wgan_gp,
          :smoke; "" = :moons)
Hardware: CPU, 2 cores.   Run time: 40 s (10k steps, ~350 steps/s, two evals) on an idle CPU;
          the runs below shared it with ~20 other processes (load 20): 8–12 min for the GAN,
          38 min for WGAN-GP (5 critic updates with a double backward each).
Measured (energy distance of 2000 EMA-generator samples to 2000 held-out points / data floor):
          moons 0.0017 / 0.0028, eight_gaussians 0.0063 / 0.0059 (all 8 modes covered); the raw
          (un-averaged) generator 0.0027 and 0.0146; with a constant LR and no EMA the raw
          generator oscillates (moons 0.0082 at 5k steps, 0.0215 at 10k).
Mode collapse (gan2d.mode_coverage: high quality = within 3σ of the nearest centre, Unrolled GAN
          1611.02163 / VEEGAN 1705.07761; a mode is covered with ≥ 20 of 2000 samples; held-out
          data: all modes, 99% high quality), EMA generator at the last step:
            set              objective       steps  modes   high-quality  energy ratio
            eight_gaussians  GAN (NS)        5k*    8 / 8   0.973         0.72
            eight_gaussians  WGAN-GP         10k    8 / 8   0.969         1.28
            grid25           GAN (NS)        10k    8 / 25  0.624         20.7
            grid25           WGAN-GP         10k    13 / 25 0.277         2.08
          (* `--config.num_train_steps=5000 --config.eval_every_steps=5000`, for time.)
          The plain GAN collapses on grid25 (σ = 0.05): at 5k steps 4 modes, at 10k 8 — the
          corner and ±2 diagonal modes, joined by streaks (samples_step10000.png); on FFJORD's wide
          8 Gaussians (σ = 0.35) it keeps all 8 at these settings, so that set shows no collapse
          for either. WGAN-GP on grid25 spreads mass along the grid lines: it reaches 13 modes
          (the two outer rings, not the centre) and a 10× lower energy distance, but only 28% of
          its samples are sharp (0 modes, 8% at 5k steps); the raw, un-averaged generator covers
          5 modes at 15%. So: more modes, blurrier — not the clean "all 25" of the paper, whose toy
          script trains 100k generator steps (we ran 10k at λ = 0.1, its toy value).
Expect:   `energy_ratio` ≤ 2 on moons and eight_gaussians. `:smoke` (moons, 2000 steps, 15 s CPU):
          energy_distance ≤ 0.01 (measured 0.0039, floor 0.0028; the untrained generator
          0.86), held by tests/experiments/test_experiments_gan2d.py.
"""

import ml_collections

from genfm.experiments.configs.common import check_variant, set_schedule
from genfm.experiments.configs.toy2d_ddpm import toy2d_base

DATASETS = ("moons", "eight_gaussians", "grid25")
MIXTURES = ("eight_gaussians", "grid25")
VARIANTS = ("",) + DATASETS + tuple(f"{d}_wgan_gp" for d in MIXTURES) + ("smoke",)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("toy2d_gan", variant, VARIANTS)
  dataset = next((d for d in DATASETS if variant.startswith(d)), "moons")
  c = toy2d_base(f"toy2d_gan_{variant or dataset}", dataset)
  c.task = "gan2d"
  del c.model
  c.gan = ml_collections.ConfigDict({
      "latent_dim": 8, "hidden": 128, "depth": 3,
      "generator_loss": "non_saturating",       # non_saturating | minimax | wgan_gp
      "critic_steps": 1,                        # discriminator updates per generator update
      "gp_lambda": 0.1,                         # WGAN-GP's λ (wgan_gp only); see below
  })
  c.eval.mode_min_count = 20        # a mixture mode counts as covered with ≥ 20 of the 2000
                                    # samples within 3σ of it (its fair share: 250 or 80)
  c.learning_rate = 1e-3
  c.b1 = 0.5                                    # Adam β₁ of DCGAN (1511.06434 §4)
  c.schedule = "cosine"             # constant: the raw generator oscillates (ED 0.0082 at 5k, 0.0215 at 10k)
  c.warmup_steps = 0
  c.ema_decay = 0.999               # evaluate an EMA of both models' weights (raw ones as raw_*)
  # One optimizer per model (two time-scale update rule, 1706.08500: D faster than G).
  c.optimizers = ml_collections.ConfigDict({
      "generator": {"learning_rate": 5e-4},
      "discriminator": {"learning_rate": 1e-3},
  })
  set_schedule(c, 10_000, log=1000, eval_=5000, checkpoint=5000)
  if variant.endswith("_wgan_gp"):
    # Alg. 1 of 1704.00028: n_critic = 5, Adam β₂ = 0.9, constant rates (D takes 5 optimizer
    # steps per loop step, so a cosine schedule would end 5× early). λ = 0.1: the paper's toy
    # script (gan_toy.py) lowers λ from 10 for 2-D data.
    c.gan.generator_loss, c.gan.critic_steps = "wgan_gp", 5
    c.b2, c.schedule = 0.9, "constant"
    c.optimizers.generator.learning_rate = 5e-4
    c.optimizers.discriminator.learning_rate = 5e-4
  if variant == "smoke":
    c.name = "toy2d_gan_smoke"
    set_schedule(c, 2000, log=500, eval_=2000, checkpoint=2000)
  return c
