"""Runs a run depends on, trained first when missing: one command for a whole pipeline.

A diffusion run scores its samples with a classifier run (the FD's feature map); a latent
diffusion run reads a frozen autoencoder run; a text-to-image run a CLIP run. `ensure_run` looks
in the named workdir for a finished launcher run of the right task and data set, trains it there
from `config_spec` ("name.py[:variant]" under experiments/configs) when it holds none and a spec
is given, and otherwise stops with one line saying which command makes it.
"""

import importlib
import json
import os

from absl import logging

from genfm.experiments import train
from genfm.experiments.errors import ConfigError


def finished(workdir: str) -> bool:
  """Whether `workdir` holds a launcher run that reached its last step."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      return bool(json.load(f).get("finished"))
  except (OSError, ValueError):
    return False


def read_config(workdir: str) -> dict:
  """The config.json the launcher wrote into `workdir` ({} when there is none)."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def ensure_run(workdir: str, config_spec: str, *, key: str, spec_key: str, task: str,
               dataset: str, hint: str, skip: str = "", what: str = "") -> None:
  """A finished `task` run on `dataset` in `workdir` (the value of config field `key`), trained
  now from `config_spec` (config field `spec_key`) if it has none; `hint` is the config to
  suggest, `skip` how to do without it, `what` its name in the log (default: the task). Every failure is one ConfigError line."""
  if not finished(workdir):
    if not config_spec:
      raise ConfigError(
          f"{key}={workdir!r} holds no finished {task} run. Train one: `python -m "
          f"genfm.experiments.run --config=experiments/configs/{hint} --workdir={workdir}`, or "
          f"set --{spec_key}={hint} to train it first automatically" + (f", or {skip}" if skip
                                                                        else ""))
    name, _, variant = config_spec.partition(":")
    try:
      module = importlib.import_module(f"genfm.experiments.configs.{name.removesuffix('.py')}")
      config = module.get_config(variant) if variant else module.get_config()
    except (ImportError, ValueError) as e:
      raise ConfigError(f"{spec_key}={config_spec!r}: {e}") from None
    logging.info("training the %s %s into %s first (once)", what or f"{task} run", config_spec,
                 workdir)
    train.train_and_evaluate(config, workdir)
  cfg = read_config(workdir)
  if cfg.get("task") != task or cfg.get("dataset") != dataset:
    raise ConfigError(f"{key}={workdir!r} holds a {cfg.get('task')!r} run on "
                      f"{cfg.get('dataset')!r}; it must hold a {task!r} run on {dataset!r}")


MISSING = "<missing>"
# Keys that runs recorded before the key existed lack: their absent value is this default.
DEFAULTS = {"latent_autoencoder_workdir": ""}


def lookup(config: dict, dotted: str):
  """The value at `dotted` ("diffusion.schedule") of a recorded config, its DEFAULTS entry, or
  MISSING."""
  for k in dotted.split("."):
    if not isinstance(config, dict) or k not in config:
      return DEFAULTS.get(dotted, MISSING)
    config = config[k]
  return config


def config_difference(ours: dict, theirs: dict, keys, *,
                      fixed: dict | None = None) -> tuple[str, object, object] | None:
  """The first of `keys` on which a run we build on (`theirs`: its config.json) differs from
  ours, as (key, their value, our value); None when they agree. `fixed` sets our side of a key
  outright (the task a teacher must have run). Under "model" only the fields ours sets count (a
  later config may add fields); `*_workdir` paths compare as absolute paths."""
  for key in keys:
    want = (fixed or {}).get(key, lookup(ours, key))
    got = lookup(theirs, key)
    if key == "model" and isinstance(got, dict) and isinstance(want, dict):
      got = {k: got.get(k) for k in want}
    if key.endswith("_workdir") and got and want and MISSING not in (got, want):
      got, want = os.path.abspath(got), os.path.abspath(want)
    if got != want:
      return key, got, want
  return None
