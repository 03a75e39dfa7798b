"""Optimizer and learning-rate schedule from the config's flat keys.

Keys: `optimizer` ∈ {sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw}, `learning_rate`,
`weight_decay` (AdamW's decoupled decay, 1711.05101), `momentum`, `schedule` ∈ {constant, cosine,
warmup_cosine} (cosine: 1608.03983), `warmup_steps`, `grad_clip_norm` (0 disables; 1211.5063).

Knobs nanoGPT's recipe needs (each defaults to the behaviour configs had before it existed):
  `b1`            Adam/AdamW first-moment decay β₁ (Alg. 1 of 1412.6980), default 0.9 (optax).
                  GANs use 0.5 (DCGAN, 1511.06434 §4): less momentum in a two-player game.
  `b2`            Adam/AdamW second-moment decay β₂ (Alg. 1 of 1412.6980), default 0.999 (optax).
                  Small models with small batches train better with 0.99: v tracks g² faster.
  `decay_mask`    which parameters AdamW decays: "all" (default) or "matrices" (ndim ≥ 2:
                  kernels and embedding tables; biases and norm gains/offsets are not decayed,
                  as nanoGPT's `configure_optimizers` and GPT-3 (2005.14165 App. B) do).
  `min_lr_ratio`  floor of the cosine schedules as a fraction of `learning_rate`, default 0:
                  η ends at min_lr_ratio · η_peak (nanoGPT: min_lr = lr / 10, i.e. 0.1).
`b1`, `b2` and `decay_mask` are read by adam/adamw only and `min_lr_ratio` by the cosine schedules
only (like `momentum`, so one config can sweep `optimizer`); their values are always checked.

A task with several trained models gives each its own optimizer and schedule: the sub-dict
`config.optimizers.<model name>` overrides any of `OPTIMIZER_KEYS` for that model (e.g. a GAN's
`optimizers.discriminator.learning_rate`); models it does not name use the top-level keys.

`optimizer_impl` picks who implements them:
  "optax"  the optax built-ins (the default);
  "genfm"  our from-scratch versions, `genfm.foundations.{optimizers,schedules,clipping}`, which
           their tests prove equal to optax step for step — so the two give the same run up to
           float rounding, and a config can train on the code a learner wrote.
"""

import jax
import ml_collections
import optax

from genfm.experiments.errors import ConfigError, unknown_choice

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
IMPLEMENTATIONS = ("optax", "genfm")
DECAY_MASKS = ("all", "matrices")
OPTIMIZER_KEYS = ("optimizer", "optimizer_impl", "learning_rate", "weight_decay", "momentum",
                  "b1", "b2", "decay_mask", "schedule", "warmup_steps", "min_lr_ratio",
                  "grad_clip_norm")


def model_config(config, name: str):
  """`config` with `config.optimizers.<name>` (if any) laid over its optimizer keys."""
  over = (config.get("optimizers", None) or {}).get(name, None)
  if not over:
    return config
  unknown = sorted(set(over) - set(OPTIMIZER_KEYS))
  if unknown:
    raise ConfigError(f"config.optimizers.{name} has unknown key(s) {unknown}; valid: "
                      f"{', '.join(OPTIMIZER_KEYS)}")
  merged = ml_collections.ConfigDict(config.to_dict())
  merged.update(over)
  return merged


def _impl(config) -> str:
  impl = config.get("optimizer_impl", "optax")
  if impl not in IMPLEMENTATIONS:
    raise unknown_choice("config.optimizer_impl", impl, IMPLEMENTATIONS)
  return impl


def _min_lr_ratio(config) -> float:
  ratio = config.get("min_lr_ratio", 0.0)
  if not 0.0 <= ratio <= 1.0:
    raise ConfigError(f"config.min_lr_ratio must be in [0, 1] (the cosine floor as a fraction "
                      f"of learning_rate), got {ratio!r}")
  return float(ratio)


def _b2(config) -> float:
  b2 = config.get("b2", 0.999)
  if not 0.0 <= b2 < 1.0:
    raise ConfigError(f"config.b2 (Adam's β₂) must be in [0, 1), got {b2!r}")
  return float(b2)


def _b1(config) -> float:
  b1 = config.get("b1", 0.9)
  if not 0.0 <= b1 < 1.0:
    raise ConfigError(f"config.b1 (Adam's β₁) must be in [0, 1), got {b1!r}")
  return float(b1)


def matrices_mask(params):
  """True for parameters with ndim ≥ 2 (decayed), False for biases, gains, scalars."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _decay_mask(config):
  """The `mask` argument of adamw: None (decay everything) or a params → bools function."""
  name = config.get("decay_mask", "all")
  if name not in DECAY_MASKS:
    raise unknown_choice("config.decay_mask", name, DECAY_MASKS)
  return None if name == "all" else matrices_mask


def make_schedule(config) -> optax.Schedule:
  """η(step) for `config.schedule`, from optax or from `genfm.foundations.schedules`."""
  lr, steps = config.learning_rate, config.num_train_steps
  name, warmup = config.get("schedule", "constant"), config.get("warmup_steps", 0)
  if name not in SCHEDULES:
    raise unknown_choice("config.schedule", name, SCHEDULES)
  floor = _min_lr_ratio(config) * lr  # η_min of eq. (5), 1608.03983
  if _impl(config) == "genfm":
    from genfm.foundations import schedules  # pylint: disable=g-import-not-at-top
    if name == "constant":
      return lambda count: lr
    if name == "cosine" or (name == "warmup_cosine" and warmup == 0):
      return schedules.get_schedule("cosine", init_value=lr, decay_steps=steps, end_value=floor)
    return schedules.get_schedule("warmup_cosine", init_value=0.0, peak_value=lr,
                                  warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
                                  end_value=floor)
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps, alpha=_min_lr_ratio(config))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup,
                                            decay_steps=max(steps, warmup + 1), end_value=floor)


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
    return optax.adam(schedule, b1=_b1(config), b2=_b2(config))
  return optax.adamw(schedule, b1=_b1(config), b2=_b2(config), weight_decay=config.get("weight_decay", 1e-4),
                     mask=_decay_mask(config))


def _genfm_optimizer(name, schedule, config) -> optax.GradientTransformation:
  from genfm.foundations import optimizers  # pylint: disable=g-import-not-at-top
  kwargs = {"learning_rate": schedule}
  if name in ("momentum", "nesterov"):
    kwargs["momentum"] = config.get("momentum", 0.9)
  if name in ("adam", "adamw"):
    kwargs["b1"], kwargs["b2"] = _b1(config), _b2(config)
  if name == "adamw":
    kwargs["weight_decay"] = config.get("weight_decay", 1e-4)
    kwargs["mask"] = _decay_mask(config)
  return optimizers.get_optimizer(name, **kwargs)


def make_optimizer(config) -> optax.GradientTransformation:
  lr = config.learning_rate
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
    raise ConfigError(f"config.learning_rate must be a number ≥ 0, got {lr!r} (a negative rate "
                      "ascends the loss)")
  name, impl = config.get("optimizer", "adamw"), _impl(config)
  if name not in OPTIMIZERS:
    raise unknown_choice("config.optimizer", name, OPTIMIZERS)
  _b1(config), _b2(config), _decay_mask(config)  # check the values even where this optimizer ignores them
  schedule = make_schedule(config)
  clip = config.get("grad_clip_norm", 0.0)
  if impl == "genfm":
    from genfm.foundations import clipping  # pylint: disable=g-import-not-at-top
    tx = _genfm_optimizer(name, schedule, config)
    return optax.chain(clipping.clip_by_global_norm(clip), tx) if clip else tx
  tx = _optax_optimizer(name, schedule, config)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx
