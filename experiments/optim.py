"""Optimizer and learning-rate schedule from the config's flat keys.

Keys: `optimizer` ∈ {sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw}, `learning_rate`,
`weight_decay` (AdamW's decoupled decay, 1711.05101), `momentum`, `schedule` ∈ {constant, cosine,
warmup_cosine} (cosine: 1608.03983), `warmup_steps`, `grad_clip_norm` (0 disables; 1211.5063).

`optimizer_impl` picks who implements them:
  "optax"  the optax built-ins (the default);
  "genfm"  our from-scratch versions, `genfm.foundations.{optimizers,schedules,clipping}`, which
           their tests prove equal to optax step for step — so the two give the same run up to
           float rounding, and a config can train on the code a learner wrote.
"""

import optax

from genfm.experiments.errors import unknown_choice

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
IMPLEMENTATIONS = ("optax", "genfm")


def _impl(config) -> str:
  impl = config.get("optimizer_impl", "optax")
  if impl not in IMPLEMENTATIONS:
    raise unknown_choice("config.optimizer_impl", impl, IMPLEMENTATIONS)
  return impl


def make_schedule(config) -> optax.Schedule:
  """η(step) for `config.schedule`, from optax or from `genfm.foundations.schedules`."""
  lr, steps = config.learning_rate, config.num_train_steps
  name, warmup = config.get("schedule", "constant"), config.get("warmup_steps", 0)
  if name not in SCHEDULES:
    raise unknown_choice("config.schedule", name, SCHEDULES)
  if _impl(config) == "genfm":
    from genfm.foundations import schedules  # pylint: disable=g-import-not-at-top
    if name == "constant":
      return lambda count: lr
    if name == "cosine" or (name == "warmup_cosine" and warmup == 0):
      return schedules.get_schedule("cosine", init_value=lr, decay_steps=steps)
    return schedules.get_schedule("warmup_cosine", init_value=0.0, peak_value=lr,
                                  warmup_steps=warmup, decay_steps=max(steps, warmup + 1))
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup,
                                            decay_steps=max(steps, warmup + 1))


def _optax_optimizer(name, schedule, config) -> optax.GradientTransformation:
  momentum = config.get("momentum", 0.9)
  if name == "sgd":
    return optax.sgd(schedule)
  if name in ("momentum", "nesterov"):
    return optax.sgd(schedule, momentum=momentum, nesterov=name == "nesterov")
  if name == "adagrad":
    return optax.adagrad(schedule)
  if name == "rmsprop":
    return optax.rmsprop(schedule)
  if name == "adam":
    return optax.adam(schedule)
  return optax.adamw(schedule, weight_decay=config.get("weight_decay", 1e-4))


def _genfm_optimizer(name, schedule, config) -> optax.GradientTransformation:
  from genfm.foundations import optimizers  # pylint: disable=g-import-not-at-top
  kwargs = {"learning_rate": schedule}
  if name in ("momentum", "nesterov"):
    kwargs["momentum"] = config.get("momentum", 0.9)
  if name == "adamw":
    kwargs["weight_decay"] = config.get("weight_decay", 1e-4)
  return optimizers.get_optimizer(name, **kwargs)


def make_optimizer(config) -> optax.GradientTransformation:
  name, impl = config.get("optimizer", "adamw"), _impl(config)
  if name not in OPTIMIZERS:
    raise unknown_choice("config.optimizer", name, OPTIMIZERS)
  schedule = make_schedule(config)
  clip = config.get("grad_clip_norm", 0.0)
  if impl == "genfm":
    from genfm.foundations import clipping  # pylint: disable=g-import-not-at-top
    tx = _genfm_optimizer(name, schedule, config)
    return optax.chain(clipping.clip_by_global_norm(clip), tx) if clip else tx
  tx = _optax_optimizer(name, schedule, config)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx
