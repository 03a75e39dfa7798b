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
  c.ema_decay = 0.0              # > 0: also keep and evaluate an EMA of the weights (ema.py)
  c.init_from = ""               # a trained run's workdir: start from its parameters (init_from.py)
  c.init_from_step = 0           # its checkpoint step; 0 = the newest
  c.trainable = ""               # regex over parameter paths that train (e.g. "blocks/3/"); "" = all
  # Device mesh (experiments/mesh.py): batch over data × fsdp, parameters and optimizer state
  # split over fsdp (their `embed` dim), heads / FFN hidden / vocab over model; -1 = the rest.
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.num_train_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c


def set_schedule(c: ml_collections.ConfigDict, steps: int, *, log: int, eval_: int,
                 checkpoint: int) -> None:
  """Set the run length and the log / eval / checkpoint frequencies together."""
  c.num_train_steps, c.log_every_steps = steps, log
  c.eval_every_steps, c.checkpoint_every_steps = eval_, checkpoint


def digits_smoke(c: ml_collections.ConfigDict) -> None:
  """The seconds-long `:smoke` variant of an image config: sklearn digits, 300 steps."""
  c.dataset = "digits"
  c.batch_size, c.learning_rate = 64, 3e-3
  set_schedule(c, 300, log=50, eval_=300, checkpoint=300)


def check_variant(name: str, variant: str, valid=("", "smoke")) -> None:
  if variant not in valid:
    raise ValueError(f"unknown variant {variant!r} of config {name}; valid: {list(valid)}")
