"""Small ResNet (stages 16-32-64, BasicBlocks, random crop + flip) on Fashion-MNIST.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_resnet.py --workdir=runs/fashion_resnet
Hardware: CPU, 2 cores: 39 min 40 s wall for the 7,035 steps (3.0-3.4 steps/s, sharing the
          machine with two other runs); any GPU: about a minute.
Expect:   test_accuracy >= 0.93 (full run; measured 0.9307, test loss 0.192; 0.8579 / 0.9098 /
          0.9259 at steps 1,000 / 3,000 / 5,000);  `:smoke` (sklearn digits, seconds) >= 0.95.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_resnet", variant)
  c = base_config("fashion_resnet", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict({"name": "resnet", "widths": (16, 32, 64),
                                       "blocks_per_stage": 2})
  c.augment = ml_collections.ConfigDict({"crop_pad": 2, "flip": True})
  c.learning_rate = 2e-3
  c.weight_decay = 5e-4
  c.schedule = "warmup_cosine"
  c.warmup_steps = 200
  set_schedule(c, 7035, log=200, eval_=1000, checkpoint=500)  # 15 epochs of 60k at batch 128
  if variant == "smoke":
    digits_smoke(c)
    c.model.widths, c.model.blocks_per_stage = (16, 32), 1
    c.augment.crop_pad, c.augment.flip = 0, False        # 8×8 digits: no room to crop
    c.warmup_steps = 20
  return c
