"""FFJORD (1810.01367): a continuous normalising flow with an MLP field on 2-D toy sets, trained
by maximum likelihood with adjoint gradients (1806.07366) and Hutchinson's trace estimate.

Command:  python -m genfm.experiments.run --config=experiments/configs/toy2d_ffjord.py:moons --workdir=runs/toy2d_ffjord_moons
          (variants :moons, :eight_gaussians, :smoke; "" = :moons)
Hardware: CPU, 2 cores (shared with 4 other jobs, load ~20, so times are pessimistic).
Run time: 6–7.5 min (2,000 steps of batch 256, 3–8 steps/s under load; one eval). Training NFE
          per forward solve (rtol = atol = 1e-4) grows as the flow learns: moons 27 → 59,
          eight_gaussians 38 → 45.
Measured (test NLL in nats per point, exact trace, all 10,000 test points, rtol = atol = 1e-5;
          NFE of the forward density solve at eval): moons 2.408 (NFE 78; 5m49s),
          eight_gaussians 2.838 (NFE 51; 7m21s; the true mixture density scores 2.825 on the
          same points). Energy distance of 2,000 samples / floor: moons 0.0006 / 0.0028,
          eight_gaussians 0.0047 / 0.0059. 2,500 steps on moons: 2.404 (13 min under load).
          Against the DDPM (toy2d_ddpm.py, 10k steps) read as the VP SDE's probability-flow ODE
          (diffusion/likelihood.py, exact trace, RK45 1e-5, ~640 NFE, eps = 1e-5) on the same
          test points: moons 2.445, eight_gaussians 2.868 (standard errors over points ~0.01).
Expect:   test_nll ≤ 2.45 (moons) and ≤ 2.88 (eight_gaussians); density mass on the plotted
          grid `grid_mass` ≈ 1. `:smoke` (moons, 200 steps, ~40 s CPU): test_nll ≤ 2.85
          (measured 2.774, NFE 32; untrained flow 4.14, N(0, I) 3.87, the data's Gaussian fit
          3.30), held by tests/experiments/test_experiments_cnf2d.py.
"""

import ml_collections

from genfm.experiments.configs.common import check_variant, set_schedule
from genfm.experiments.configs.toy2d_ddpm import toy2d_base

DATASETS = ("moons", "eight_gaussians")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("toy2d_ffjord", variant, ("",) + DATASETS + ("smoke",))
  dataset = variant if variant in DATASETS else "moons"
  c = toy2d_base(f"toy2d_ffjord_{dataset}", dataset)
  c.task = "cnf2d"
  del c.model
  c.cnf = ml_collections.ConfigDict({
      "hidden": 64, "depth": 3,                 # ConcatMLPField: 3 tanh layers of 64
      "T": 1.0,                                 # data at t = 0, N(0, I) at t = T
      "train_estimator": "rademacher",          # rademacher | gaussian | exact (trace)
      "rtol": 1e-4, "atol": 1e-4,               # training solves (forward and adjoint)
      "eval_rtol": 1e-5, "eval_atol": 1e-5,     # test NLL, samples and the density grid
  })
  c.batch_size = 256
  c.learning_rate = 1e-3
  c.weight_decay = 1e-5
  c.schedule = "cosine"
  c.warmup_steps = 0
  set_schedule(c, 2000, log=250, eval_=2000, checkpoint=1000)
  if variant == "smoke":
    c.name = "toy2d_ffjord_smoke"
    set_schedule(c, 200, log=50, eval_=200, checkpoint=200)
  return c
