"""Residual vs plain: the same 20-layer sigmoid MLP with and without identity shortcuts.

Model "deep_mlp" (experiments/tasks/classify.py): flatten → Linear(784, 128) →
`genfm.foundations.residual.DeepNet` (20 square sigmoid layers, LeCun-normal weights) →
Linear(128, 10). `:plain` has h_{l+1} = φ(h_l W_l); `:residual` has h_{l+1} = h_l + φ(h_l W_l)
(eq. (1) of He et al. 1512.03385). Same seed, so both start from identical weights; only the
shortcut differs. Through 20 sigmoid layers (φ' ≤ 1/4) the plain net's gradient vanishes
(first-layer gradient 1.9e-12 vs 19 with shortcuts, tests/foundations/test_foundations_residual.py)
and the plain net never leaves chance; Adam does not rescue it either (digits smoke with Adam at
1e-3 / 3e-3: plain 0.074, residual 0.950 / 0.960).

Command:  python -m genfm.experiments.run --config=experiments/configs/foundations_residual.py:residual --workdir=runs/residual
          python -m genfm.experiments.run --config=experiments/configs/foundations_residual.py:plain --workdir=runs/plain
Hardware: CPU, 2 cores.   Run time: 7.2 ms of CPU per step; 96 s (residual) / 116 s (plain)
          session wall, 29 / 33 s of CPU, on the shared machine (load ~13).
Expect:   SGD + momentum 0.9, η = 0.05 cosine, 5 epochs: residual test_accuracy >= 0.85 (measured
          0.8642) while plain stays at chance, <= 0.15 (measured 0.1000, test loss 2.3026 = ln 10);
          `residual_smoke` >= 0.90 and `plain_smoke` <= 0.20 on sklearn digits, seconds (measured
          0.966 vs 0.074).
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule

VARIANTS = ("plain", "residual", "plain_smoke", "residual_smoke", "smoke")


def get_config(variant: str = "residual") -> ml_collections.ConfigDict:
  check_variant("foundations_residual", variant, VARIANTS)
  if variant == "smoke":                 # every config has a `:smoke`: the default's
    variant = "residual_smoke"
  kind = variant.removesuffix("_smoke")
  c = base_config(f"foundations_residual_{kind}", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict({"name": "deep_mlp", "width": 128, "depth": 20,
                                       "residual": kind == "residual", "activation": "sigmoid"})
  c.optimizer, c.learning_rate, c.weight_decay = "momentum", 0.05, 0.0
  set_schedule(c, 2345, log=200, eval_=2345, checkpoint=2345)  # 5 epochs of 60k at batch 128
  if variant.endswith("_smoke"):
    digits_smoke(c)
    c.model.width = 64
    c.learning_rate = 0.05                     # digits_smoke sets Adam's 3e-3; keep SGD's
  return c
