"""LeNet-style CNN (conv5×5·16 → pool → conv5×5·32 → pool → 256 → 128 → 10) on Fashion-MNIST.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_lenet.py --workdir=runs/fashion_lenet
Hardware: CPU, 2 cores.   Run time: a few minutes (see WORKSPACE.md for the measured time).
Expect:   test_accuracy >= 0.90 (full run);  `:smoke` (sklearn digits, seconds) >= 0.95.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_lenet", variant)
  c = base_config("fashion_lenet", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict(
      {"name": "lenet", "channels": (16, 32), "hidden": (256, 128), "dropout": 0.2})
  set_schedule(c, 4690, log=200, eval_=1000, checkpoint=1000)  # 10 epochs of 60k at batch 128
  if variant == "smoke":
    digits_smoke(c)
    c.model.channels, c.model.hidden, c.model.dropout = (8, 16), (64, 32), 0.0
  return c
