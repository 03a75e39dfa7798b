"""The contract between an experiment and the shared training loop (`experiments/train.py`).

A task says what data it reads, which model(s) it builds and which of their parameters train,
what one training step does, and its eval metrics; the loop owns everything else (mesh and
sharding, optimizers, jit, checkpoints, resume, `init_from`, EMA, logging, NaN handling, figures
of the loss). To add an experiment family: subclass `Task`, register it in
`experiments/tasks/__init__.py`, and write a config that sets `config.task` to its name.

One model, one loss (most tasks): implement `build_model` and `loss`. Several models
(policy + frozen reference, generator + discriminator, student + teacher): implement
`build_models` (a dict by name), `trainable(name)` (`nnx.Nothing` freezes a whole model), and
`train_step(ctx, batch, key)` with `ctx.update(name, loss_fn)` per optimizer step
(`experiments/step.py`); `config.optimizers.<name>` sets each model's optimizer.
"""

import abc
from typing import Any

import jax
import ml_collections
from flax import nnx

from genfm.experiments.models import config_trainable

Batch = dict[str, jax.Array]


class Task(abc.ABC):
  """One experiment family (image classification, language modelling, diffusion, ...)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def train_source(self) -> Any:
    """A random-access source (`len`, `[i] -> dict of numpy arrays`) of training records."""

  def train_transform(self):
    """An optional per-record function (numpy → numpy) run by the input pipeline: augmentation."""
    return None

  def eval_sources(self) -> dict[str, Any]:
    """Random-access sources to evaluate on, by split name (e.g. {"test": ...})."""
    return {}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model, with parameters initialised from `rngs` (single-model tasks)."""
    raise NotImplementedError(f"{type(self).__name__} implements neither build_model nor "
                              "build_models")

  def build_models(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    """The named models of the run, built in order from one `rngs`; default {"model": ...}."""
    return {"model": self.build_model(rngs)}

  def trainable(self, name: str):
    """The NNX filter of model `name`'s trained parameters (intersected with `nnx.Param`):
    by default all of them, or those whose path matches `config.trainable`. The rest is frozen:
    no gradient, no optimizer state, no weight decay, bit-identical through training."""
    del name
    return config_trainable(self.config)

  def new_parameters(self, name: str):
    """The NNX filter of model `name`'s parameters that a source run of `config.init_from` may
    lack (they keep their fresh initialisation): by default LoRA adapters (`nnx.LoRAParam`)."""
    del name
    return nnx.LoRAParam

  def init_source(self, name: str, source_models: tuple[str, ...]) -> str | None:
    """Which model of the `init_from` run initialises model `name`: the one of the same name,
    else the source's only model; None keeps the fresh initialisation."""
    if name in source_models:
      return name
    return source_models[0] if len(source_models) == 1 else None

  def convert_source(self, name: str, arrays: dict) -> dict:
    """The `init_from` source's flat arrays ({path: array}) for model `name`, in this model's
    layout; by default unchanged. A QLoRA task quantizes the source's fp32 kernels here."""
    del name
    return arrays

  def loss(self, model: nnx.Module, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """Training loss (a scalar) and metrics to log; traced under `jit`, model in train mode.

    `key` is a fresh PRNG key for this step (fold_in(seed, step)), so a resumed run draws the
    same noise as an uninterrupted one.
    """
    raise NotImplementedError(f"{type(self).__name__} implements neither loss nor train_step")

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    """One training step through `ctx` (`experiments/step.py:StepContext`); traced under `jit`.
    Default: one optimizer step of the task's one trained model on `loss`."""
    trained = ctx.trained
    if len(trained) != 1:
      raise NotImplementedError(f"{type(self).__name__} trains {len(trained)} models "
                                f"({', '.join(trained)}); it must define train_step")
    ctx.update(trained[0], lambda model: self.loss(model, batch, key))

  def eval_metrics(self, model, batch: Batch) -> dict[str, jax.Array]:
    """Per-batch *sums* over the valid examples (`batch["mask"]` is 1 for real, 0 for padding),
    including `"count"`; the loop divides every sum by the total count. Model in eval mode (a
    dict of models by name for a task with several)."""
    raise NotImplementedError(f"{type(self).__name__} has eval sources but no eval_metrics")

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    """Host-side work after each evaluation (sample grids, FID, ...); returns extra metrics."""
    del model, workdir, step
    return {}
