"""MLP on scikit-learn's 8×8 digits — the seconds-long smoke test of the whole platform.

Command:  python -m genfm.experiments.run --config=experiments/configs/digits_mlp.py --workdir=runs/digits_mlp
Hardware: any CPU (2 cores here).   Run time: ~10 s.
Expect:   test_accuracy >= 0.95 (tests/experiments/test_experiments_configs.py holds it).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "digits_mlp"
  c.task = "classify"
  c.dataset = "digits"
  c.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (128,), "dropout": 0.0})
  c.seed = 0
  c.batch_size = 64
  c.eval_batch_size = 512
  c.optimizer = "adamw"
  c.learning_rate = 3e-3
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.num_train_steps = 400
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  if variant not in ("", "smoke"):
    raise ValueError(f"unknown variant {variant!r} of digits_mlp; valid: '' or 'smoke'")
  return c
