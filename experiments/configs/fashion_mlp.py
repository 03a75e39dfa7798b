"""MLP (784-512-256-10, ReLU, dropout) on Fashion-MNIST — the README's main job.

Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py --workdir=runs/fashion_mlp
Hardware: CPU, 2 cores.   Run time: ~1 min (see WORKSPACE.md for the measured time).
Expect:   test_accuracy >= 0.88 (full run);  `:smoke` (sklearn digits, seconds) >= 0.95.

`:recipe` — "putting it all together": the same MLP with BatchNorm (1502.03167) before each ReLU,
dropout 0.2 (1207.0580), AdamW (1711.05101) with linear warmup + cosine decay (1608.03983), 20
epochs, trained with OUR optimizer and schedule (`optimizer_impl="genfm"`,
genfm.foundations.optimizers / schedules).
Command:  python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py:recipe --workdir=runs/fashion_mlp_recipe
Hardware: CPU, 2 cores.   Run time: 142 s measured on a shared, loaded machine (load ~14 on 2
          cores); 9380 steps × 12 ms (best step time under the same load) = 114 s of training.
Expect:   test_accuracy >= 0.89 (measured 0.9094; 0.8906 / 0.9042 after 10 / 15 epochs);
          `:recipe_smoke` (sklearn digits, seconds) >= 0.95.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule

VARIANTS = ("", "smoke", "recipe", "recipe_smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  check_variant("fashion_mlp", variant, VARIANTS)
  c = base_config("fashion_mlp", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (512, 256), "dropout": 0.2,
                                       "batch_norm": False})
  set_schedule(c, 4690, log=200, eval_=1000, checkpoint=1000)  # 10 epochs of 60k at batch 128
  if variant.startswith("recipe"):
    c.name = "fashion_mlp_recipe"
    c.optimizer_impl = "genfm"                 # optax | genfm (experiments/optim.py)
    c.model.batch_norm = True
    c.optimizer, c.learning_rate, c.weight_decay = "adamw", 2e-3, 0.05
    c.schedule, c.warmup_steps = "warmup_cosine", 469  # one epoch of warmup
    set_schedule(c, 9380, log=200, eval_=2345, checkpoint=2345)  # 20 epochs
  if variant.endswith("smoke"):
    digits_smoke(c)
    c.model.hidden, c.model.dropout = (128,), 0.0
    if variant == "recipe_smoke":
      c.model.dropout, c.warmup_steps = 0.1, 30
  return c
