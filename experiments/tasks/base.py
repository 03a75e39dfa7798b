"""The contract between an experiment and the shared training loop (`experiments/train.py`).

A task says what data it reads, which model it builds, its training loss and its eval metrics;
the loop owns everything else (mesh and sharding, optimizer, jit, checkpoints, resume, logging,
NaN handling, figures of the loss). To add an experiment family: subclass `Task`, register it in
`experiments/tasks/__init__.py`, and write a config that sets `config.task` to its name.
"""

import abc
from typing import Any

import jax
import ml_collections
from flax import nnx

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

  @abc.abstractmethod
  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model, with parameters initialised from `rngs`."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """Training loss (a scalar) and metrics to log; traced under `jit`, model in train mode.

    `key` is a fresh PRNG key for this step (fold_in(seed, step)), so a resumed run draws the
    same noise as an uninterrupted one.
    """

  def eval_metrics(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Per-batch *sums* over the valid examples (`batch["mask"]` is 1 for real, 0 for padding),
    including `"count"`; the loop divides every sum by the total count. Model in eval mode."""
    raise NotImplementedError(f"{type(self).__name__} has eval sources but no eval_metrics")

  def after_eval(self, model: nnx.Module, workdir: str, step: int) -> dict[str, float]:
    """Host-side work after each evaluation (sample grids, FID, ...); returns extra metrics."""
    del model, workdir, step
    return {}
