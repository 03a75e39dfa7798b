"""The training step: a task's `train_step(ctx, batch, key)` inside the loop's jitted step.

The loop owns jit, shardings, checkpoints, resume, EMA, the NaN stop, metrics and progress; the
task owns what one step does, through a `StepContext`:

    ctx.update(name, loss_fn)   one optimizer step of model `name` on loss_fn(model) →
                                (loss, metrics): the gradient of its trainable part only, its own
                                optimizer; BatchNorm statistics and RNG counts it advanced are kept
    ctx.model(name, train=...)  the current model `name` (after this step's updates so far), as a
                                copy: use it inside another model's loss (the frozen reference of
                                DPO, the discriminator in the generator's loss, a teacher); its
                                parameters are constants there, so no gradient reaches them
    ctx.log(**metrics)          step-level metrics (not tied to one model)

The default `Task.train_step` is one `update` of the task's one trained model with `Task.loss`.
A GAN calls `update("discriminator", ...)` k times and then `update("generator", ...)`; a policy
samples from `ctx.model("policy")` with the KV cache and then updates it.

Metrics: with one trained model they keep their plain names (loss, grad_norm, learning_rate,
and the task's own), as before; with several each model's go under its own name,
`<name>/loss`, `<name>/grad_norm`, ... (a model updated k times in a step reports the mean).
`learning_rate` is the model's schedule at the loop's step; optax schedules count optimizer
updates, so a model updated k times per step walks its schedule k times faster (give it a
constant schedule, as WGAN-GP's Alg. 1 does, or an `optimizers.<name>` schedule sized for it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments.ema import ema_update
# Ours (tested equal to optax.tree.norm): optax.global_norm is deprecated, optax.tree.norm is new.
from genfm.foundations.clipping import global_norm


class StepContext:
  """What a task's `train_step` sees: the models, their optimizers, and a metrics record."""

  def __init__(self, models, state: dict, key: jax.Array):
    self._models, self.step, self.key = models, state["step"], key
    self._values = {n: dict(v) for n, v in state["models"].items()}
    self._opt = dict(state["opt_state"])
    self._metrics: dict[str, list[dict]] = {}
    self._extra: dict = {}

  @property
  def trained(self) -> tuple[str, ...]:
    """Names of the models that have trainable parameters (and an optimizer)."""
    return self._models.trained

  def model(self, name: str, *, train: bool = False) -> nnx.Module:
    """A copy of model `name` with its current values, in eval mode unless `train`."""
    self._check(name)
    v = self._values[name]
    return self._models.merge(name, v["params"], v["frozen"], v["rest"], train=train, copy=True)

  def update(self, name: str, loss_fn) -> tuple[jax.Array, dict]:
    """Differentiate `loss_fn(model) -> (scalar loss, metrics)` with respect to the trainable
    part of model `name` (train mode) and apply its optimizer; returns (loss, metrics)."""
    self._check(name)
    if name not in self._models.txs:
      raise ValueError(f"model {name!r} has no trainable parameters (frozen); only "
                       f"{', '.join(self._models.trained)} can be updated")
    v = self._values[name]
    d = self._models.defs[name]

    def f(params):
      # copy=True: fresh Variables owned by this trace, so BatchNorm may update its statistics.
      m = self._models.merge(name, params, v["frozen"], v["rest"], train=True, copy=True)
      loss, metrics = loss_fn(m)
      return loss, (metrics, nnx.split(m, d.trainable, nnx.Param, ...)[3])

    (loss, (metrics, rest)), grads = jax.value_and_grad(f, has_aux=True)(v["params"])
    tx = self._models.txs[name]
    updates, self._opt[name] = tx.update(grads, self._opt[name], v["params"])
    self._values[name] = {**v, "params": optax.apply_updates(v["params"], updates), "rest": rest}
    self._metrics.setdefault(name, []).append(
        {"loss": loss, **metrics, "grad_norm": global_norm(grads),
         "learning_rate": self._models.schedules[name](self.step)})
    return loss, metrics

  def log(self, **metrics) -> None:
    self._extra.update(metrics)

  def _check(self, name: str) -> None:
    if name not in self._values:
      raise KeyError(f"no model {name!r}; this task's models: {', '.join(self._values)}")

  def result(self) -> tuple[dict, dict]:
    """(new models and optimizer states, flat metrics)."""
    flat = dict(self._extra)
    single = len(self._models.trained) == 1
    for name, records in self._metrics.items():
      mean = records[0] if len(records) == 1 else jax.tree.map(
          lambda *xs: jnp.mean(jnp.stack(xs)), *records)
      flat.update(mean if single else {f"{name}/{k}": x for k, x in mean.items()})
    return {"models": self._values, "opt_state": self._opt}, flat


def make_train_step(task, config, models):
  """The pure step `(state, batch) -> (state, metrics)`, to be jitted with shardings."""
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])     # same noise on resume
    ctx = StepContext(models, state, key)
    task.train_step(ctx, batch, key)
    new, metrics = ctx.result()
    if not metrics:
      raise ValueError(f"{type(task).__name__}.train_step updated no model")
    new_state = {"step": state["step"] + 1, **new}
    if models.ema_decay:
      new_state["ema_params"] = {
          n: ema_update(state["ema_params"][n], new["models"][n]["params"], models.ema_decay,
                        state["step"]) for n in models.trained}
    return new_state, metrics

  return train_step


def on_leaves(train_step, treedef):
  """`train_step` as a function of the state's leaves: (leaves, batch) -> (leaves, metrics).

  The state's parameters and optimizer moments are nnx `State`/`Variable` pytrees, which JAX
  flattens in Python on every call of a jitted function: 217 leaves of the char GPT cost ~4 ms
  of dispatch per step, ~10 % of its step on a 2-core CPU (issue #15). A flat list of arrays is
  flattened in C++ (~1.5 ms). The loop keeps the leaves and rebuilds the state
  (`jax.tree.unflatten(treedef, leaves)`) only where it reads it: checkpoints, evals, the end.
  """
  def step(leaves, batch):
    new_state, metrics = train_step(jax.tree.unflatten(treedef, leaves), batch)
    new_leaves, new_treedef = jax.tree.flatten(new_state)
    if new_treedef != treedef:  # at trace time: a step must return the state it was given
      raise ValueError(f"the train step changed the state's structure: {treedef} -> "
                       f"{new_treedef}")
    return new_leaves, metrics
  return step
