"""LeNet-style CNN (conv5×5·16 → pool → conv5×5·32 → pool → 256 → 128 → 10) on Fashion-MNIST.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_lenet.py --workdir=runs/fashion_lenet
Hardware: CPU, 2 cores.   Run time: a few minutes (see WORKSPACE.md for the measured time).
Expect:   test_accuracy >= 0.90 (full run);  `:smoke` (sklearn digits, seconds) >= 0.95.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_lenet", variant)
  c = base_config("fashion_lenet", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict(
      {"name": "lenet", "channels": (16, 32), "hidden": (256, 128), "dropout": 0.2})
  c.num_train_steps = 4690                 # 10 epochs of 60k at batch 128
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  if variant == "smoke":
    c.dataset = "digits"
    c.model.channels, c.model.hidden, c.model.dropout = (8, 16), (64, 32), 0.0
    c.batch_size, c.learning_rate = 64, 3e-3
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 300
    c.log_every_steps = 50
  return c
