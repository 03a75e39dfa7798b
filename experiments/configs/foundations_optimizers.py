"""Our from-scratch optimizers (genfm.foundations.optimizers) compared on the same MLP.

The model, data order, initialisation, schedule (cosine, 1608.03983) and step count are shared;
only the update rule and its learning rate change. Variants: one per optimizer, and a seconds-long
`<optimizer>_smoke` of each on sklearn digits. `optimizer_impl="genfm"`: the updates come from
foundations/optimizers.py (set `--config.optimizer_impl=optax` for the built-ins; the two agree
step for step, see tests/foundations/test_foundations_optimizers.py).

Command:  python -m genfm.experiments.run --config=experiments/configs/foundations_optimizers.py:adam --workdir=runs/opt_adam
          (sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw)
Hardware: CPU, 2 cores.   Run time: 22-62 s each (5 epochs, MLP 784-256-10; machine shared).
Expect:   test_accuracy >= 0.84 for every optimizer; measured sgd 0.849, momentum 0.862,
          nesterov 0.861, adagrad 0.855, rmsprop 0.877, adam 0.874, adamw 0.872.
          `<optimizer>_smoke` (sklearn digits, 300 steps, seconds) >= 0.93; measured 0.950-0.970.
"""

import ml_collections

from genfm.experiments.configs.common import base_config, check_variant, digits_smoke, set_schedule

# Learning rate per optimizer (a short sweep on digits; the usual defaults of each family).
LEARNING_RATES = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "adagrad": 0.05,
                  "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}
# Digits smoke runs are 300 steps on 1500 images: the adaptive methods get Adam's usual 3e-3.
SMOKE_LEARNING_RATES = {**LEARNING_RATES, "sgd": 0.2, "rmsprop": 3e-3, "adam": 3e-3,
                        "adamw": 3e-3}
VARIANTS = (tuple(LEARNING_RATES) + tuple(f"{name}_smoke" for name in LEARNING_RATES)
            + ("smoke",))


def get_config(variant: str = "adam") -> ml_collections.ConfigDict:
  check_variant("foundations_optimizers", variant, VARIANTS)
  if variant == "smoke":                 # every config has a `:smoke`: the default's
    variant = "adam_smoke"
  name = variant.removesuffix("_smoke")
  c = base_config(f"foundations_optimizers_{name}", task="classify", dataset="fashion_mnist")
  c.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (256,), "dropout": 0.0,
                                       "batch_norm": False})
  c.optimizer_impl = "genfm"                   # optax | genfm (experiments/optim.py)
  c.optimizer, c.learning_rate, c.schedule = name, LEARNING_RATES[name], "cosine"
  c.weight_decay = 0.05 if name == "adamw" else 0.0  # decoupled, × η (optax convention)
  set_schedule(c, 2345, log=200, eval_=2345, checkpoint=2345)  # 5 epochs of 60k at batch 128
  if variant.endswith("_smoke"):
    digits_smoke(c)
    c.model.hidden = (128,)
    c.learning_rate = SMOKE_LEARNING_RATES[name]
  return c
