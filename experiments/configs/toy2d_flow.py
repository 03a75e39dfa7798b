"""Flow matching, rectified flow (1-RF and 2-RF by reflow) and OT-CFM with an MLP on 2-D toy sets.

Papers: 2210.02747 (FM, path "fm" with σ_min), 2209.03003 (RF, path "rf"; reflow), 2302.00482
(OT-CFM, minibatch OT coupling). t = 0 noise, t = 1 data; Euler from 0 to 1 at eval.

Command:  python -m genfm.experiments.run --config=experiments/configs/toy2d_flow.py:rf_moons --workdir=runs/toy2d_flow_rf_moons
          variants <method>_<dataset>, method ∈ fm | rf | otcfm | reflow, dataset ∈ moons |
          eight_gaussians | swiss_roll ("" = rf_moons), and :smoke. A reflow (2-RF) run reads a
          finished rf run of the same data set, given as both its pair source and its init:
          --config=...:reflow_moons --config.diffusion.reflow_from=runs/toy2d_flow_rf_moons
          --config.init_from=runs/toy2d_flow_rf_moons   (these are the defaults).
          Table: python -m genfm.experiments.flow_table --runs=runs --prefix=toy2d_flow_ reads
          <runs>/<prefix><method>_<dataset> (ddpm = toy2d_ddpm.py:<dataset>); see flow_table.py.
Hardware: CPU, 2 cores shared with ~4 other jobs (load 5–10, so times are pessimistic).
Run time: fm / rf 1–1.5 min, reflow 1–2.5 min (incl. 50k Euler-100 pairs), otcfm 4.5–9.5 min (the
          host's exact 256×256 assignment, ~40 ms/step under load, dominates), 10k steps each.
Measured: (2026-12-03, eval = Euler-100, n = 2000; energy distance / floor = ratio; straightness,
          eq. 2 of 2209.03003) moons floor 0.0028: fm 0.0008 (0.28, S 1.19), rf 0.0008 (0.28,
          S 1.21), otcfm 0.0009 (0.31, S 0.0034), reflow 0.0008 (0.28, S 0.0001);
          eight_gaussians floor 0.0059: fm 0.0045 (0.77, 1.92), rf 0.0045 (0.77, 1.94), otcfm
          0.0043 (0.73, 0.0035), reflow 0.0045 (0.77, 0.0001); swiss_roll floor 0.0028: fm 0.0009
          (0.33, 1.25), rf 0.0009 (0.32, 1.27), otcfm 0.0010 (0.37, 0.0024), reflow 0.0009 (0.33,
          0.0001). flow_table at 1 Euler step: 2-RF 0.33 / 0.80 / 0.35 × floor, OT-CFM 0.51 /
          0.98 / 0.62, 1-RF 419 / 330 / 419 (moons / eight_gaussians / swiss_roll).
          One floor is noisy: over 5 test splits it spans 0.0011–0.0028 (moons), 0.0009–0.0059
          (eight_gaussians), 0.0017–0.0047 (swiss_roll), so ratios below 1 mean "at the floor".
Expect:   energy distance of 2000 Euler-100 samples to 2000 held-out points within 2× the
          data-vs-data floor measured in the same run (`energy_ratio` ≤ 2) for every variant;
          2-RF at 1 Euler step (flow_table) ≤ 3× the floor (the issue's aim), straightness < 0.01.
          `:smoke` (moons, rf, 1500 steps, Euler 20, ~25 s): energy_distance ≤ 0.01 (measured
          0.0039; floor 0.0028; a Gaussian fit of the data 0.027, N(0, I) 0.19), straightness
          1.16; reflow from it (500 steps on 5000 pairs) 0.0030, held in the launcher test to a
          fall of more than 10× (300 steps on 4000 Euler-20 pairs).
"""

import ml_collections

from genfm.experiments.configs.common import check_variant
from genfm.experiments.configs.toy2d_ddpm import DATASETS, toy2d_base

METHODS = ("fm", "rf", "otcfm", "reflow")
VARIANTS = ("", "smoke") + tuple(f"{m}_{d}" for m in METHODS for d in DATASETS)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("toy2d_flow", variant, VARIANTS)
  method, dataset = variant.split("_", 1) if "_" in variant else ("rf", "moons")
  c = toy2d_base(f"toy2d_flow_{method}_{dataset}", dataset)
  c.diffusion = ml_collections.ConfigDict({
      "kind": "flow",
      "path": "fm" if method == "fm" else "rf",    # fm: Lipman's σ_min path; rf: straight line
      "sigma_min": 0.01 if method == "fm" else 0.0,
      "coupling": "ot" if method == "otcfm" else "independent",
      "sampler": "euler",                          # euler | heun | rk45
      "sample_steps": 100,
      "reflow_from": "",                           # workdir of a finished flow run ⇒ 2-RF
      "reflow_pairs": 50_000,                      # (noise, ODE(noise)) couplings drawn from it
      "reflow_steps": 100,                         # its sampler's steps for those couplings
      "reflow_seed": 0,
  })
  c.num_train_steps = 10_000
  c.log_every_steps = 1000
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  if method == "reflow":
    c.diffusion.reflow_from = c.init_from = f"runs/toy2d_flow_rf_{dataset}"
    c.learning_rate = 1e-3                         # fine-tuning the 1-RF model on its couplings
  if variant == "smoke":
    c.name = "toy2d_flow_smoke"
    c.diffusion.sample_steps = 20
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 1500
    c.log_every_steps = 500
  return c
