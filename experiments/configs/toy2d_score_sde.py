"""Score SDE (VP, β 0.1→20, ε-parameterised score) with an MLP denoiser on 2-D toy sets.

Command:  python -m genfm.experiments.run --config=experiments/configs/toy2d_score_sde.py:moons --workdir=runs/toy2d_sde_moons
          (variants :moons, :eight_gaussians, :swiss_roll, :moons_ve, :smoke; "" = :moons)
Hardware: CPU, 2 cores (shared, load ~10, so times are pessimistic).   Run time: 1.5–2.5 min
          (10k steps, 100–240 steps/s under load; two evals with Euler–Maruyama 1000 steps).
Measured (energy distance / floor, n = 2000): moons 0.0032 / 0.0028 (ratio 1.16), eight_gaussians
          0.0069 / 0.0059 (1.16), swiss_roll 0.0031 / 0.0028 (1.12), moons_ve 0.0015 / 0.0028 (0.55).
Expect:   energy distance of 2000 reverse-SDE (Euler–Maruyama, 1000 steps) samples to 2000
          held-out points within 2× the data-vs-data floor measured in the same run
          (eval metric `energy_ratio` ≤ 2). `:smoke` (moons, 2000 steps, probability-flow ODE
          with 100 Heun steps, ~20 s CPU): energy_distance ≤ 0.01 (measured 0.0033).
Switch sampler with --config.diffusion.sampler=pc (Langevin corrector) or =ode
(--config.diffusion.ode_method=euler|heun|rk45).
"""

import ml_collections

from genfm.experiments.configs.common import check_variant
from genfm.experiments.configs.toy2d_ddpm import DATASETS, toy2d_base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("toy2d_score_sde", variant, ("",) + DATASETS + ("moons_ve", "smoke"))
  dataset = variant if variant in DATASETS else "moons"
  c = toy2d_base(f"toy2d_score_sde_{variant or 'moons'}", dataset)
  c.diffusion = ml_collections.ConfigDict({
      "kind": "sde",
      "sde": "vp",                  # vp | subvp | ve
      "beta_min": 0.1, "beta_max": 20.0,        # VP / sub-VP (score_sde defaults)
      "sigma_min": 0.01, "sigma_max": 10.0,     # VE: σ_max ≈ the largest data distance
      "prediction": "eps",          # eps (s_θ = −ε_θ / s(t)) | score (s_θ = network output)
      "sampler": "euler_maruyama",  # euler_maruyama | pc | ode
      "sample_steps": 1000,
      "corrector_steps": 1,         # pc only
      "snr": 0.16,                  # pc only (score_sde VP setting)
      "ode_method": "heun",         # ode only: euler | heun | rk45
      "t_eps": 1e-3,                # smallest t trained on and sampled to
  })
  c.num_train_steps = 10_000
  c.log_every_steps = 1000
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  if variant == "moons_ve":
    c.diffusion.sde = "ve"
  if variant == "smoke":
    c.name = "toy2d_score_sde_smoke"
    c.diffusion.sampler, c.diffusion.sample_steps = "ode", 100
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 2000
    c.log_every_steps = 500
  return c
