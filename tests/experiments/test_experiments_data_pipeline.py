"""grain batching: shapes, epochs, seeds, checkpoint round trip, process slices of one global
stream (the same global batches for any process count), eval padding."""

import itertools
import json

import chex
import grain
import numpy as np
import pytest

from genfm.experiments import data
from genfm.experiments.errors import ConfigError


def _indexed_source(n, name="index"):
  """Record i = {"idx": int32 i, "v": float32 [3] = (i+1)·(1, 2, 3)}: no record is all zero."""
  idx = np.arange(n, dtype=np.int32)
  arrays = {"idx": idx, "v": ((idx[:, None] + 1) * np.arange(1, 4)).astype(np.float32)}
  info = data.DatasetInfo(name=name, split="train", num_examples=n,
                          features={"idx": ((), np.dtype(np.int32)),
                                    "v": ((3,), np.dtype(np.float32))})
  return data.ArraySource(arrays, info)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _one_host(**kw):
  return dict(process_index=0, process_count=1, **kw)


def test_image_batches_have_the_record_shapes():
  src = data.load("digits", "train")
  it = data.make_iterator(src, batch_size=32, seed=0, **_one_host())
  assert isinstance(it, grain.DatasetIterator)
  batch = next(it)
  assert set(batch) == {"image", "label"}
  chex.assert_shape(batch["image"], (32, 8, 8, 1))
  chex.assert_shape(batch["label"], (32,))
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  # Batch rows are records of the source: image i carries label i.
  lookup = {im.tobytes(): lbl for im, lbl in zip(src.arrays["image"], src.arrays["label"])}
  assert [lookup[im.tobytes()] for im in batch["image"]] == batch["label"].tolist()


def test_each_epoch_is_a_fresh_permutation():
  src = _indexed_source(12)
  it = data.make_iterator(src, batch_size=4, seed=3, num_epochs=3, **_one_host())
  batches = list(it)
  assert len(batches) == 9
  order = np.concatenate([b["idx"] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b["v"] for b in batches]),
                                (order[:, None] + 1) * np.arange(1, 4))
  epochs = order.reshape(3, 12)
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))  # every record once per epoch
  assert len({tuple(e) for e in epochs}) == 3  # reshuffled each epoch
  assert not np.array_equal(epochs[0], np.arange(12))


def test_shuffle_is_deterministic_per_seed_and_differs_across_seeds():
  src = _indexed_source(64)

  def order(seed, shuffle=True):
    it = data.make_iterator(src, batch_size=8, seed=seed, shuffle=shuffle, num_epochs=1,
                            **_one_host())
    return np.concatenate([b["idx"] for b in it])

  np.testing.assert_array_equal(order(0), order(0))
  assert not np.array_equal(order(0), order(1))
  np.testing.assert_array_equal(order(0, shuffle=False), np.arange(64))


@pytest.mark.parametrize("num_epochs", [None, 2])
def test_restored_state_continues_with_identical_batches(num_epochs):
  src = _indexed_source(10)
  kw = dict(batch_size=4, seed=7, num_epochs=num_epochs, **_one_host(),
            transform=lambda r: {**r, "v": r["v"] * 2.0})
  it = data.make_iterator(src, **kw)
  _take(it, 2)
  state = it.get_state()
  state = json.loads(json.dumps(state))  # what a checkpoint stores must survive serialisation
  # 3 more batches cross the epoch boundary (10 records, batch 4): the reshuffle is reproduced.
  expected = _take(it, 3)
  resumed = data.make_iterator(src, **kw)
  resumed.set_state(state)
  got = _take(resumed, 3)
  for a, b in zip(expected, got):
    chex.assert_trees_all_equal(a, b)
  # ...and a fresh iterator does not give those batches (the state did the work).
  fresh = _take(data.make_iterator(src, **kw), 3)
  assert any(not np.array_equal(a["idx"], b["idx"]) for a, b in zip(expected, fresh))


def _single_host_reference(n, batch_size, seed, num_batches):
  """The batches of the single-host pipeline before #14, written out independently: the
  stream "epoch 0, epoch 1, ..." with epoch e = permutation of range(n) seeded by [seed, e]."""
  stream = np.concatenate([np.random.default_rng([seed, e]).permutation(n)
                           for e in range(num_batches * batch_size // n + 1)])
  return [stream[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def test_one_process_batches_are_bitwise_the_single_host_ones():
  src = _indexed_source(10)
  it = data.make_iterator(src, batch_size=4, seed=7, **_one_host())
  got = [next(it)["idx"].tolist() for _ in range(6)]
  # Recorded from the pipeline before #14 (a shard per host): a one-process run is unchanged.
  assert got == [[8, 0, 7, 1], [3, 6, 2, 4], [5, 9, 9, 0], [8, 6, 7, 1], [3, 4, 2, 5],
                 [1, 5, 3, 4]]
  for seed in (0, 123, -5):
    it = data.make_iterator(_indexed_source(23), batch_size=5, seed=seed, **_one_host())
    for expected in _single_host_reference(23, 5, seed % 2**63, 12):
      np.testing.assert_array_equal(next(it)["idx"], expected)
  padded = data.make_iterator(src, batch_size=4, seed=7, num_epochs=1, pad_remainder=True,
                              **_one_host())
  assert [b["idx"].tolist() for b in padded] == [[8, 0, 7, 1], [3, 6, 2, 4], [5, 9, 0, 0]]


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("kw", [
    dict(num_epochs=None),
    dict(num_epochs=3),
    dict(num_epochs=2, shuffle=False),
    dict(num_epochs=1, pad_remainder=True),
    dict(num_epochs=2, drop_remainder=False),
])
def test_processes_read_their_slice_of_the_one_process_global_batch(count, kw):
  src, b = _indexed_source(23), 3   # 23 records: global batches straddle epoch ends
  one = data.make_iterator(src, batch_size=b * count, seed=5, **_one_host(), **kw)
  hosts = [data.make_iterator(src, batch_size=b, seed=5, process_index=p, process_count=count,
                              **kw) for p in range(count)]
  for _ in range(8 if kw["num_epochs"] is None else 100):
    try:
      expected = next(one)
    except StopIteration:
      for it in hosts:  # every host ends where the global stream ends
        with pytest.raises(StopIteration):
          next(it)
      break
    parts = [next(it, None) for it in hosts]
    parts = [p for p in parts if p is not None]  # a short last batch may not reach every host
    chex.assert_trees_all_equal(_concat(parts), expected)


def _concat(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("n,count,b", [(100, 3, 3), (10, 4, 3), (8, 2, 3), (3, 4, 1)])
def test_eval_batches_cover_every_record_once_with_equal_counts(n, count, b):
  src = _indexed_source(n)
  counts, real = [], []
  for index in range(count):
    batches = list(data.make_iterator(src, batch_size=b, seed=0, shuffle=False, num_epochs=1,
                                      drop_remainder=False, pad_remainder=True,
                                      process_index=index, process_count=count))
    counts.append(len(batches))
    assert all(len(x["idx"]) == b for x in batches)
    real += [int(i) for x in batches for i, m in zip(x["idx"], x["mask"]) if m]
  assert counts == [-(-n // (b * count))] * count   # ceil(n / global batch) on every host
  assert sorted(real) == list(range(n))


def test_shard_default_is_this_jax_process():
  import jax
  src = _indexed_source(6)
  it = data.make_iterator(src, batch_size=6, seed=0, shuffle=False, num_epochs=None)
  p = jax.process_index()
  np.testing.assert_array_equal(next(it)["idx"], np.arange(6 * p, 6 * p + 6) % 6)
  with pytest.raises(ConfigError, match="process_index < process_count"):
    data.make_iterator(src, batch_size=1, seed=0, process_index=jax.process_count())


def test_pad_remainder_masks_padding_with_zero_records():
  src = _indexed_source(10)
  it = data.make_iterator(src, batch_size=4, seed=1, num_epochs=1, drop_remainder=False,
                          pad_remainder=True, **_one_host())
  batches = list(it)
  assert len(batches) == 3
  for b in batches:
    assert b["mask"].dtype == np.float32
    chex.assert_shape([b["mask"], b["idx"], b["v"]], [(4,), (4,), (4, 3)])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  idx = np.concatenate([b["idx"] for b in batches])
  assert sorted(idx[:10]) == list(range(10))
  np.testing.assert_array_equal(idx[10:], 0)
  np.testing.assert_array_equal(batches[-1]["v"][2:], 0.0)


def test_pad_remainder_gives_every_host_the_same_batch_count():
  src = _indexed_source(9)  # shards of 3, 2, 2, 2 records for 4 hosts
  counts, real = [], []
  for index in range(4):
    batches = list(data.make_iterator(src, batch_size=2, seed=0, num_epochs=1,
                                      pad_remainder=True, process_index=index,
                                      process_count=4))
    counts.append(len(batches))
    real += [int(i) for b in batches for i, m in zip(b["idx"], b["mask"]) if m]
  assert counts == [2, 2, 2, 2]
  assert sorted(real) == list(range(9))  # masked-in rows: each record exactly once


def test_drop_remainder_false_keeps_the_short_last_batch():
  src = _indexed_source(10)
  batches = list(data.make_iterator(src, batch_size=4, seed=0, num_epochs=1,
                                    drop_remainder=False, **_one_host()))
  assert [len(b["idx"]) for b in batches] == [4, 4, 2] and "mask" not in batches[0]
  batches = list(data.make_iterator(src, batch_size=4, seed=0, num_epochs=1, **_one_host()))
  assert [len(b["idx"]) for b in batches] == [4, 4]


@pytest.mark.parametrize("kw,needle", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=2, num_epochs=0), "num_epochs must be None"),
    (dict(batch_size=2, pad_remainder=True), "needs a finite num_epochs"),
    (dict(batch_size=2, process_index=2, process_count=2), "process_index < process_count"),
    (dict(batch_size=64, num_epochs=1), "yields no batch"),
    (dict(batch_size=4, num_epochs=1, process_index=1, process_count=3),
     r"global batch \(3 processes × batch_size=4\) exceeds the 10 records"),
    (dict(batch_size=4, num_epochs=1, drop_remainder=False, process_index=3, process_count=4),
     "process 3 gets no batch"),
])
def test_bad_arguments_raise_config_error(kw, needle):
  kw = {"process_index": 0, "process_count": 1, **kw}
  with pytest.raises(ConfigError, match=needle):
    data.make_iterator(_indexed_source(10), seed=0, **kw)
  assert issubclass(ConfigError, ValueError)


class _PerRecordOnly:
  """The same records without `get_batch`/`arrays`: forces the per-record gather path."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    return self._source[i]


@pytest.mark.parametrize("kw", [
    dict(num_epochs=3, drop_remainder=False),
    dict(num_epochs=None),
    dict(num_epochs=1, pad_remainder=True, process_index=1, process_count=3),
    dict(num_epochs=2, shuffle=False, process_index=2, process_count=4),
])
def test_vectorized_gather_equals_per_record_path(kw):
  kw = {"process_index": 0, "process_count": 1, **kw}
  src = _indexed_source(23)
  fast = data.make_iterator(src, batch_size=5, seed=4, **kw)
  slow = data.make_iterator(_PerRecordOnly(src), batch_size=5, seed=4, **kw)
  doubled = data.make_iterator(src, batch_size=5, seed=4, **kw,
                               transform=lambda r: {**r, "v": r["v"] * 2.0})
  for _ in range(7 if kw["num_epochs"] is None else 100):
    try:
      a = next(fast)
    except StopIteration:
      with pytest.raises(StopIteration):
        next(slow)
      break
    b, c = next(slow), next(doubled)
    chex.assert_trees_all_equal(a, b)
    np.testing.assert_array_equal(c["v"], 2.0 * a["v"])  # transform ran on every record
    np.testing.assert_array_equal(c["idx"], a["idx"])


def test_window_get_batch_equals_records():
  tokens = np.random.default_rng(2).integers(0, 1000, size=300)
  src = data.WindowSource(tokens, seq_len=16, stride=3)
  idx_B = np.array([0, 5, len(src) - 1, 5])
  batch = src.get_batch(idx_B)
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(batch[key], np.stack([src[int(i)][key] for i in idx_B]))
  with pytest.raises(IndexError):
    src.get_batch(np.array([len(src)]))
