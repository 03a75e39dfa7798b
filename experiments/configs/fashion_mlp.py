"""MLP (784-512-256-10, ReLU, dropout) on Fashion-MNIST — the README's main job.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py --workdir=runs/fashion_mlp
Hardware: CPU, 2 cores.   Run time: ~1 min (see WORKSPACE.md for the measured time).
Expect:   test_accuracy >= 0.88 (full run);  `:smoke` (sklearn digits, seconds) >= 0.95.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_mlp", variant)
  c = base_config("fashion_mlp", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (512, 256), "dropout": 0.2,
                                       "batch_norm": False})
  set_schedule(c, 4690, log=200, eval_=1000, checkpoint=1000)  # 10 epochs of 60k at batch 128
  if variant == "smoke":
    digits_smoke(c)
    c.model.hidden, c.model.dropout = (128,), 0.0
  return c
