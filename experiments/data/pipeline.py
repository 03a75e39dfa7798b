"""Deterministic, checkpointable batching of a random-access source with grain.

The pipeline maps a batch number to a batch, so it is a `grain.MapDataset`. There is ONE global
stream, the same for any number of processes: "epoch 0, epoch 1, ..." of ALL records, each epoch
in its own fixed shuffled order (numpy permutation of all records seeded by (seed, epoch)).
Global batch b is positions b·B .. b·B+B-1 of it, B = batch_size · process_count, and process p
of P reads its contiguous slice of that global batch:

  batch b of process p -> positions b·B + p·batch_size .. b·B + (p+1)·batch_size - 1
  -> record indices (-1 = padding past the end) -> gather the records -> {key: [batch_size, ...]}

so a run on P processes trains on exactly the global batches of a run on one process with P
times the per-process batch (the data-parallel equivalence the multi-process launcher test
holds to 1e-5). The loop hands each process's rows to `jax.make_array_from_process_local_data`,
which places them on that process's devices: rows [p·batch_size, (p+1)·batch_size) of the
global array when the mesh lists the processes in order along its batch axes (`jax.make_mesh`
does on CPU and GPU), the same rows in another order otherwise — a batch mean does not notice.
With P = 1 the batches are bitwise those of the per-host-shard pipeline this replaced
(tests/experiments pin them).

`grain.MapDataset.range(num_batches).map(...).to_iter_dataset()` supplies the iterator,
prefetching threads and the checkpointable state. The indices are computed with numpy for a
whole batch: grain's own `shuffle` costs ~35 µs per record in Python (4.5 ms per batch of
128, more than a jitted MLP step on this CPU), the numpy version ~0.1 ms per batch. Likewise
in-memory sources answer a batch with one fancy-index (`source.get_batch(idx_B)`); other
sources and per-record transforms fall back to `source[i]` per record, giving the same batches.
Every process computes the permutation of all records (8 bytes a record: 0.5 MB for 60k); the
gather touches only its own slice.

The iterator's whole state is the number of batches consumed (`get_state()` is a small
dict); `set_state()` on a fresh iterator built with the same arguments continues with
exactly the same batches. The launcher checkpoints that state with the model (orbax).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from genfm.experiments.errors import ConfigError
from genfm.experiments.errors import DataError

Record = dict[str, Any]
_PAD = -1  # index of a padding record


class _BatchIndices:
  """Batch number -> source indices [batch_size] of this process's slice of that global batch
  (the last batch may be shorter; -1 = padding)."""

  def __init__(self, *, num_records: int, process_index: int, process_count: int,
               batch_size: int, seed: int, shuffle: bool, num_real: int, length: int):
    self._num_records = num_records  # records in one epoch (all of them, on every process)
    self._batch_size = batch_size    # per process
    self._global_batch = batch_size * process_count
    self._offset = process_index * batch_size  # this process's slice of a global batch
    self._seed = seed % 2**63  # SeedSequence entries must be non-negative
    self._shuffle = shuffle
    self._num_real = num_real  # positions holding real records (epochs × records; or maxsize)
    self._length = length      # positions including padding (a multiple of B when padded)
    # A batch spans at most 2 epochs and reader threads run a few batches ahead: keep 4.
    self._permutation = functools.lru_cache(maxsize=4)(self._make_permutation)

  def _make_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self._num_records)

  def __call__(self, batch: int) -> np.ndarray:
    start = batch * self._global_batch + self._offset
    pos_B = np.arange(start, min(start + self._batch_size, self._length), dtype=np.int64)
    real_B = pos_B < self._num_real
    epoch_B, idx_B = np.divmod(np.where(real_B, pos_B, 0), self._num_records)
    if self._shuffle:
      offset_B, idx_B = idx_B, np.empty_like(idx_B)
      for epoch in np.unique(epoch_B):
        in_epoch = epoch_B == epoch
        idx_B[in_epoch] = self._permutation(int(epoch))[offset_B[in_epoch]]
    return np.where(real_B, idx_B, _PAD)


class _Gather:
  """Batch number -> batch of records {key: [B, ...]} (plus "mask" when padding).

  Padding rows are all zeros with "mask" 0.0 (real rows 1.0): an eval step sums metrics
  times the mask, so every example counts once and every batch has one shape (one compiled
  step, and the same number of batches on every host).
  """

  def __init__(self, indices: _BatchIndices, source: Any,
               transform: Callable[[Record], Record] | None, pad: bool, filler_index: int):
    self._indices = indices
    self._source = source
    self._transform = transform
    self._pad = pad
    self._filler_index = filler_index  # any valid index: gathered, then zeroed, for padding
    self._vectorized = transform is None and hasattr(source, "get_batch")

  def __call__(self, batch: int) -> Record:
    idx_B = self._indices(batch)
    real_B = idx_B != _PAD
    safe_B = np.where(real_B, idx_B, self._filler_index)
    if self._vectorized:
      out = dict(self._source.get_batch(safe_B))
    else:
      records = [self._source[int(i)] for i in safe_B]
      if self._transform is not None:
        records = [self._transform(r) for r in records]
      out = jax.tree.map(lambda *xs: np.stack(xs), *records)
    if self._pad:
      out = {k: np.where(real_B.reshape((-1,) + (1,) * (np.ndim(v) - 1)), v, np.zeros_like(v))
             for k, v in out.items()}
      out["mask"] = real_B.astype(np.float32)
    return out


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
      global batch B divides it by `process_count`). Process p's batch b is rows
      [p·batch_size, (p+1)·batch_size) of global batch b, the same for any process count.
    seed: shuffle seed; the order is a fixed function of (seed, epoch), not of the processes.
    shuffle: shuffle all records, with a new order every epoch.
    num_epochs: passes over the records; None repeats forever (batches then run across epoch
      boundaries, so no record is dropped).
    drop_remainder: drop a final short global batch (only reachable with a finite
      `num_epochs`); every process then gets the same number of full batches. Without it a
      process's last batch is its slice of the short global batch (shorter, or absent).
    pad_remainder: for evaluation: pad the stream with zero records up to a whole global
      batch and add "mask" float32 [batch_size] (1 real, 0 padding) to every batch. Needs a
      finite `num_epochs`; overrides `drop_remainder`. Every process gets the same number of
      batches of the same shape, and every record is read exactly once across processes.
    process_index: this process, default `jax.process_index()`.
    process_count: number of processes, default `jax.process_count()`.
    transform: a deterministic per-record map (record -> dict) run on the host before
      stacking; it takes the slower per-record path (vectorise into the model step if hot).

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
  num_records = len(source)
  if num_records == 0:
    raise DataError(f"{source!r} holds no records")
  global_batch = batch_size * process_count
  offset = process_index * batch_size  # where this process's slice starts in a global batch
  if num_epochs is None:
    num_real = length = sys.maxsize // 2  # endless: batches run across epoch boundaries
  else:
    num_real = length = num_records * num_epochs
  if pad_remainder:
    # Pad to whole global batches: hosts must run the same number of eval steps or a
    # cross-host collective would wait forever.
    length = math.ceil(num_real / global_batch) * global_batch
    probe = source[0]
    probe = transform(probe) if transform is not None else probe
    if not isinstance(probe, dict) or "mask" in probe:
      keys = sorted(probe) if isinstance(probe, dict) else ""
      raise ConfigError("pad_remainder needs dict records without a 'mask' key; got "
                        f"{type(probe).__name__} {keys}")
  if pad_remainder or drop_remainder or num_epochs is None:
    num_batches = length // global_batch
  else:  # the global batches that reach this process's slice
    num_batches = max(0, math.ceil((length - offset) / global_batch))
  if num_batches == 0:
    batch = (f"batch_size={batch_size}" if process_count == 1 else
             f"the global batch ({process_count} processes × batch_size={batch_size})")
    if drop_remainder and not pad_remainder:
      raise ConfigError(f"{batch} exceeds the {num_real} records of {num_epochs} epoch(s), so "
                        "drop_remainder=True yields no batch; lower batch_size or pass "
                        "drop_remainder=False")
    raise ConfigError(f"process {process_index} gets no batch: its slice of {batch} starts past "
                      f"the {num_real} records of {num_epochs} epoch(s); lower batch_size or "
                      "pass pad_remainder=True")
  indices = _BatchIndices(num_records=num_records, process_index=process_index,
                          process_count=process_count, batch_size=batch_size, seed=int(seed),
                          shuffle=shuffle, num_real=num_real, length=length)
  ds = grain.MapDataset.range(num_batches).map(
      _Gather(indices, source, transform, pad_remainder, filler_index=0))
  # A few reader threads and a short prefetch (in batches): enough to hide the gather behind
  # a training step without flooding a small CPU; grain's defaults are 16 and 500.
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
