"""Optimizer and learning-rate schedule from the config's flat keys (optax built-ins).

Keys: `optimizer` ∈ {sgd, momentum, nesterov, adam, adamw}, `learning_rate`, `weight_decay`
(AdamW's decoupled decay, 1711.05101), `momentum`, `schedule` ∈ {constant, cosine,
warmup_cosine} (cosine: 1608.03983), `warmup_steps`, `grad_clip_norm` (0 disables).
Our own from-scratch versions of these live in `genfm.foundations` and are tested against these.
"""

import optax

from genfm.experiments.errors import unknown_choice

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def make_schedule(config) -> optax.Schedule:
  lr, steps = config.learning_rate, config.num_train_steps
  name = config.get("schedule", "constant")
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  if name == "warmup_cosine":
    warmup = config.get("warmup_steps", 0)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup,
                                              decay_steps=max(steps, warmup + 1))
  raise unknown_choice("config.schedule", name, SCHEDULES)


def make_optimizer(config) -> optax.GradientTransformation:
  name, schedule = config.get("optimizer", "adamw"), make_schedule(config)
  momentum = config.get("momentum", 0.9)
  if name == "sgd":
    tx = optax.sgd(schedule)
  elif name in ("momentum", "nesterov"):
    tx = optax.sgd(schedule, momentum=momentum, nesterov=name == "nesterov")
  elif name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    tx = optax.adamw(schedule, weight_decay=config.get("weight_decay", 1e-4))
  else:
    raise unknown_choice("config.optimizer", name, OPTIMIZERS)
  clip = config.get("grad_clip_norm", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx
