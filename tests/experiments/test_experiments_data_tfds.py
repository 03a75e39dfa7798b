"""The tfds: path, offline: mock data through tfds.data_source, and a fast clear failure."""

import socket
import time

import chex
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from genfm.experiments import data  # pylint: disable=g-import-not-at-top
from genfm.experiments.errors import DataError  # pylint: disable=g-import-not-at-top


@pytest.fixture
def no_network(monkeypatch):
  """Any DNS lookup or connection attempt fails the test instead of hanging it."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted in an offline test")

  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  return attempts


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_data_reads_through_data_source(name, shape, tmp_path, no_network):
  with tfds.testing.mock_data(num_examples=10):
    src = data.load(f"tfds:{name}", "train", data_dir=tmp_path)
    info = src.info
    assert (info.name, info.split, info.num_examples) == (f"tfds:{name}", "train", 10)
    assert info.image_shape == shape and info.num_classes == 10
    assert info.features == {"image": (shape, np.dtype(np.uint8)),
                             "label": ((), np.dtype(np.int32))}
    record = src[3]
    assert set(record) == {"image", "label"}  # cifar10's "id" string is dropped
    # Same values as TFDS's own record, only the label dtype changes (int64 -> int32).
    raw = tfds.data_source(name, split="train", download=False, data_dir=tmp_path)[3]
    np.testing.assert_array_equal(record["image"], raw["image"])
    assert record["label"].dtype == np.int32 and int(record["label"]) == int(raw["label"])
    batch = next(data.make_iterator(src, batch_size=4, seed=0, process_index=0,
                                    process_count=1))
  chex.assert_shape(batch["image"], (4, *shape))
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  assert not no_network


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_tfds_unprepared_fails_fast_with_what_to_do(name, tmp_path, no_network):
  start = time.perf_counter()
  with pytest.raises(DataError) as e:
    data.load(f"tfds:{name}", "test", data_dir=tmp_path / "empty")
  elapsed = time.perf_counter() - start
  assert elapsed < 10.0, f"took {elapsed:.1f} s: offline must fail fast"
  msg = str(e.value)
  for needle in ("not prepared", "download_and_prepare", "array_record", "fashion_mnist",
                 str(tmp_path / "empty")):
    assert needle in msg, needle
  assert not no_network


def test_tfds_unknown_dataset_and_split(tmp_path, no_network):
  with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_set_xyz'"):
    data.load("tfds:no_such_set_xyz", "train", data_dir=tmp_path)
  with pytest.raises(DataError, match="valid choices: train, test"):
    data.load("tfds:mnist", "train[:10%]", data_dir=tmp_path)
  assert not no_network
