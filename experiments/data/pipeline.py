"""Deterministic, checkpointable batching of a random-access source with grain.

The pipeline is a `grain.MapDataset` chain, the shape grain's own docs recommend:

  source -> shard [process_index::process_count] -> shuffle(seed; a new order each epoch)
         -> repeat(num_epochs) -> map(transform) -> [pad + "mask"] -> batch -> iterator

Each step is a pure function of the record index, so the iterator's whole state is the
number of batches consumed (`get_state()` is a small dict); `set_state()` on a fresh
iterator built with the same arguments continues with exactly the same batches. The
launcher checkpoints that state with the model (orbax), so a resumed run sees the same data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from genfm.experiments.errors import ConfigError
from genfm.experiments.errors import DataError

Record = dict[str, Any]


class _PadWithMask:
  """Index -> record of `parent` with "mask" 1.0, or an all-zero record with "mask" 0.0.

  Used for evaluation: the last batch is filled to `batch_size` with zero records that the
  metric ignores through the mask, so every example is seen once and every batch has the
  same shape (one compiled eval step, and the same number of batches on every host).
  """

  def __init__(self, parent: grain.MapDataset, template: Record):
    self._parent = parent
    self._num_real = len(parent)
    self._zeros = {k: np.zeros_like(v) for k, v in template.items()}
    self._zeros["mask"] = np.float32(0.0)

  def __call__(self, index: int) -> Record:
    if index >= self._num_real:
      return dict(self._zeros)
    record = dict(self._parent[index])
    record["mask"] = np.float32(1.0)
    return record


def make_iterator(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    pad_remainder: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    transform: Callable[[Record], Record] | None = None,
) -> grain.DatasetIterator:
  """Batches `source` into an iterator of {key: np.ndarray [batch_size, ...]}.

  Args:
    source: a random-access source (`__len__`, `__getitem__` -> dict), e.g. `data.load(...)`.
    batch_size: records per batch on this process (the per-host batch: a launcher with a
      global batch divides it by `process_count`).
    seed: shuffle seed; the order is a fixed function of (seed, epoch, shard).
    shuffle: shuffle within this process's shard, with a new order every epoch.
    num_epochs: passes over the shard; None repeats forever (batches then run across epoch
      boundaries, so no record is dropped).
    drop_remainder: drop a final short batch (only reachable with a finite `num_epochs`).
    pad_remainder: for evaluation: pad the final batch with zero records up to `batch_size`
      and add "mask" float32 [B] (1 real, 0 padding) to every batch. Needs a finite
      `num_epochs`; overrides `drop_remainder`. Every process gets the same number of
      batches, even when the shards differ in length by one.
    process_index: this process's shard, default `jax.process_index()`.
    process_count: number of shards, default `jax.process_count()`. Shards are
      `records[process_index::process_count]`: disjoint, and together they cover the set.
    transform: a deterministic per-record map (record -> dict), applied before batching.

  Returns:
    A grain `DatasetIterator` (`next()`, `get_state()`, `set_state(state)`).

  Raises:
    ConfigError: bad argument values, or a setting that would yield no batch.
    DataError: an empty source.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  _check_args(batch_size, num_epochs, pad_remainder, process_index, process_count)
  num_total = len(source)
  if num_total == 0:
    raise DataError(f"{source!r} holds no records")
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]
  num_local = len(ds)
  if num_local == 0:
    raise ConfigError(f"shard {process_index} of {process_count} is empty: the source holds "
                      f"only {num_total} records")
  if shuffle:
    ds = ds.shuffle(seed=int(seed))  # reshuffled per epoch by repeat(reseed_each_epoch=True)
  ds = ds.repeat(num_epochs)
  if transform is not None:
    ds = ds.map(transform)
  if pad_remainder:
    # Pad every host to the largest shard's batch count: hosts must run the same number of
    # eval steps or a cross-host collective would wait forever.
    longest = math.ceil(num_total / process_count) * num_epochs
    padded_len = math.ceil(longest / batch_size) * batch_size
    template = ds[0]
    if not isinstance(template, dict) or "mask" in template:
      raise ConfigError("pad_remainder needs dict records without a 'mask' key; got "
                        f"{type(template).__name__} {sorted(template) if isinstance(template, dict) else ''}")
    ds = grain.MapDataset.range(padded_len).map(_PadWithMask(ds, template))
    drop_remainder = True  # the length is now a multiple of batch_size
  elif num_epochs is not None and drop_remainder and num_local * num_epochs < batch_size:
    raise ConfigError(f"batch_size={batch_size} exceeds the {num_local * num_epochs} records of "
                      f"{num_epochs} epoch(s) on this shard, so drop_remainder=True yields no "
                      "batch; lower batch_size or pass drop_remainder=False")
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  # A few reader threads and a short prefetch: enough to hide the per-record Python work
  # behind a training step without flooding a small CPU; grain's defaults are 16 and 500.
  read_options = grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1),
                                   prefetch_buffer_size=8)
  return iter(ds.to_iter_dataset(read_options))


def _check_args(batch_size, num_epochs, pad_remainder, process_index, process_count):
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
  if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer))
                                 or num_epochs < 1):
    raise ConfigError(f"num_epochs must be None (repeat forever) or a positive integer; got "
                      f"{num_epochs!r}")
  if pad_remainder and num_epochs is None:
    raise ConfigError("pad_remainder=True needs a finite num_epochs (use num_epochs=1 for "
                      "evaluation); an endless stream has no last batch to pad")
  if not (isinstance(process_count, (int, np.integer)) and process_count >= 1
          and isinstance(process_index, (int, np.integer))
          and 0 <= process_index < process_count):
    raise ConfigError(f"need 0 <= process_index < process_count; got process_index="
                      f"{process_index!r}, process_count={process_count!r}")
