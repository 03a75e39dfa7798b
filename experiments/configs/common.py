"""Keys every config shares, with the names researchers know from the flax examples."""

import ml_collections


def base_config(name: str, *, task: str, dataset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = name
  c.task = task
  c.dataset = dataset
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.optimizer = "adamw"          # sgd | momentum | nesterov | adam | adamw
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.momentum = 0.9
  c.schedule = "cosine"          # constant | cosine | warmup_cosine
  c.warmup_steps = 0
  c.grad_clip_norm = 0.0         # 0 disables clipping
  c.num_train_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c


def check_variant(name: str, variant: str, valid=("", "smoke")) -> None:
  if variant not in valid:
    raise ValueError(f"unknown variant {variant!r} of config {name}; valid: {list(valid)}")
