"""A GAN (1406.2661, non-saturating loss) on 2-D toy sets: generator and discriminator MLPs,
each with its own AdamW and learning rate, one discriminator step per generator step.

Command:  python -m genfm.experiments.run --config=experiments/configs/toy2d_gan.py:moons --workdir=runs/toy2d_gan_moons
          (variants :moons, :eight_gaussians, :smoke; "" = :moons)
Hardware: CPU, 2 cores.   Run time: see WORKSPACE.md (10k steps).
Expect:   energy distance of 2000 generator samples to 2000 held-out points (eval metric
          `energy_distance`, beside the data floor `energy_floor`) far below the untrained
          generator's; `:smoke` (moons, 2000 steps, ~15 s CPU) is held by
          tests/experiments/test_experiments_gan2d.py to energy_distance ≤ 0.05 — see
          WORKSPACE.md for the measured numbers.
"""

import ml_collections

from genfm.experiments.configs.common import check_variant
from genfm.experiments.configs.toy2d_ddpm import toy2d_base

DATASETS = ("moons", "eight_gaussians")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("toy2d_gan", variant, ("",) + DATASETS + ("smoke",))
  dataset = variant if variant in DATASETS else "moons"
  c = toy2d_base(f"toy2d_gan_{dataset}", dataset)
  c.task = "gan2d"
  del c.model
  c.gan = ml_collections.ConfigDict({
      "latent_dim": 8, "hidden": 128, "depth": 3,
      "generator_loss": "non_saturating",       # non_saturating | minimax
      "critic_steps": 1,                        # discriminator updates per generator update
  })
  c.learning_rate = 1e-3
  c.schedule = "constant"
  c.warmup_steps = 0
  # One optimizer per model (two time-scale update rule, 1706.08500: D faster than G).
  c.optimizers = ml_collections.ConfigDict({
      "generator": {"learning_rate": 5e-4},
      "discriminator": {"learning_rate": 1e-3},
  })
  c.num_train_steps = 10_000
  c.log_every_steps = 1000
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  if variant == "smoke":
    c.name = "toy2d_gan_smoke"
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 2000
    c.log_every_steps = 500
  return c
