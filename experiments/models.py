"""The named models of a run, each split into trainable and frozen parts, and the run's state.

A task builds one or more named NNX models (`Task.build_models`: {"model": GPT} for most tasks;
{"policy": ..., "reference": ...}, {"generator": ..., "discriminator": ...} for others) and says
which parameters of each train (`Task.trainable(name)`, an NNX filter; by default every
`nnx.Param`, narrowed by the path pattern `config.trainable`). Each model is split once,
    nnx.split(model, trainable, nnx.Param, ...)  →  graphdef, trainable, frozen, rest,
so the step differentiates the trainable part only (`jax.value_and_grad` of a function of it:
frozen parameters are constants of the trace, so no gradient is computed for them), and the
optimizer, its state, its weight decay and the EMA see the trainable part only. `rest` holds
BatchNorm statistics and RNG stream counters. Models without a trainable parameter (a frozen
reference or teacher) get no optimizer.

The run's state, checkpointed whole:
    {"step": int32,
     "models":     {name: {"params": trainable, "frozen": frozen, "rest": rest}},
     "opt_state":  {name: optax state}                  (trained models only)
     "ema_params": {name: EMA of the trainable part}}   (with config.ema_decay > 0)
A frozen part is stored once per checkpoint (no optimizer moments, no EMA copy).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.experiments import optim
from genfm.experiments.ema import ema_decay
from genfm.experiments.errors import ConfigError
from genfm.foundations import partitioning


path_str = partitioning.path_str   # ('blocks', 0, 'kernel') → 'blocks/0/kernel' (`trainable`)


def path_pattern(pattern: str):
  """An NNX filter: variables whose path ('blocks/0/attn/kernel') matches the regex `pattern`
  anywhere (`re.search`), e.g. 'blocks/3/' (one layer), 'head' or '^(?!encoder/)'."""
  try:
    rx = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"config.trainable={pattern!r} is not a regular expression ({e}); it "
                      "selects parameters by path, e.g. 'blocks/3/' or 'head'") from None
  return lambda path, value: rx.search(path_str(path)) is not None


def config_trainable(config):
  """The default trainable filter: every `nnx.Param`, or those matching `config.trainable`."""
  pattern = config.get("trainable", "")
  return nnx.Param if not pattern else nnx.All(nnx.Param, path_pattern(pattern))


def count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """The static half of one named model: its graphdefs (train and eval mode) and filters."""
  name: str
  graph_train: nnx.GraphDef
  graph_eval: nnx.GraphDef
  trainable: object                 # the NNX filter of the trained parameters
  trained: bool                     # has at least one trainable parameter


class ModelSet:
  """Builds the task's models, splits them, and owns their optimizers.

  `values[name]` = {"params", "frozen", "rest"} of the freshly initialised models; `txs` and
  `schedules` hold one optimizer and LR schedule per trained model (`config.optimizers.<name>`
  overrides the top-level optimizer keys for that model, see `optim.model_config`).
  """

  def __init__(self, task, config):
    rngs = nnx.Rngs(config.seed, params=config.seed, dropout=config.seed + 1)
    built = task.build_models(rngs)
    if not isinstance(built, dict) or not built or not all(
        isinstance(k, str) and isinstance(v, nnx.Module) for k, v in built.items()):
      raise TypeError(f"{type(task).__name__}.build_models must return a non-empty dict "
                      f"{{name: nnx.Module}}, got {type(built).__name__}")
    self.defs: dict[str, ModelDef] = {}
    self.values: dict[str, dict] = {}
    # Logical axes of every parameter (the model class's PARAM_AXES), for the mesh's layout.
    self.param_axes: dict[str, dict[str, tuple]] = {}
    self.param_shapes: dict[str, dict[str, tuple]] = {}
    for name, model in built.items():
      self.param_axes[name] = partitioning.param_axes(model)
      self.param_shapes[name] = {partitioning.path_str(p): tuple(v.shape) for p, v in
                                 nnx.to_flat_state(nnx.state(model, nnx.Param))}
      trainable = nnx.All(nnx.Param, task.trainable(name))
      model.train()
      graph_train, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
      model.eval()
      graph_eval = nnx.split(model, trainable, nnx.Param, ...)[0]
      self.defs[name] = ModelDef(name, graph_train, graph_eval, trainable, count(params) > 0)
      self.values[name] = {"params": params, "frozen": frozen, "rest": rest}
    self.names = tuple(self.defs)
    self.trained = tuple(n for n in self.names if self.defs[n].trained)
    if not self.trained:
      raise ConfigError(
          f"no parameter of {', '.join(self.names)} is trainable (config.trainable="
          f"{config.get('trainable', '')!r} matches none of their paths, e.g. "
          f"{self.example_paths()}); widen the pattern")
    overrides = config.get("optimizers", None) or {}
    extra = sorted(set(overrides) - set(self.trained))
    if extra:
      raise ConfigError(f"config.optimizers names {extra}, which this task does not train; "
                        f"its trained models: {', '.join(self.trained)}")
    self.txs, self.schedules = {}, {}
    for name in self.trained:
      c = optim.model_config(config, name)
      self.txs[name], self.schedules[name] = optim.make_optimizer(c), optim.make_schedule(c)
    self.ema_decay = ema_decay(config)

  def example_paths(self, n: int = 3) -> str:
    paths = [path_str(p) for v in self.values.values() for p, _ in nnx.to_flat_state(v["frozen"])]
    return ", ".join(repr(p) for p in paths[:n]) + (" ..." if len(paths) > n else "")

  # --- the run's state ------------------------------------------------------------------------

  def initial_state(self, values: dict | None = None) -> dict:
    """The state of a fresh run from `values` (default: the fresh initialisation)."""
    values = self.values if values is None else values
    state = {"step": jnp.zeros((), jnp.int32),
             "models": {n: dict(values[n]) for n in self.names},
             "opt_state": {n: self.txs[n].init(values[n]["params"]) for n in self.trained}}
    if self.ema_decay:                  # ē_0 = θ_0, in buffers of its own (both are donated)
      state["ema_params"] = {n: jax.tree.map(jnp.copy, values[n]["params"]) for n in self.trained}
    return state

  def counts(self) -> tuple[int, int]:
    """(trainable, total) parameter counts over every model."""
    trainable = sum(count(v["params"]) for v in self.values.values())
    return trainable, trainable + sum(count(v["frozen"]) for v in self.values.values())

  def merge(self, name: str, params, frozen, rest, *, train: bool, copy: bool = False):
    d = self.defs[name]
    return nnx.merge(d.graph_train if train else d.graph_eval, params, frozen, rest, copy=copy)

  def eval_models(self, state: dict, *, ema: bool):
    """Eval-mode models of `state` (EMA weights for trained models when `ema`): the one model
    itself for a single-model task, else a dict by name (what `Task.eval_metrics` receives)."""
    out = {}
    for n in self.names:
      v = state["models"][n]
      params = state["ema_params"][n] if ema and n in state.get("ema_params", {}) else v["params"]
      out[n] = self.merge(n, params, v["frozen"], v["rest"], train=False)
    return out[self.names[0]] if len(out) == 1 else out
