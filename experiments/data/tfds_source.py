"""TFDS image classification sets (`tfds:mnist`, `tfds:cifar10`, ...) without TensorFlow.

Reads a split prepared in the array_record format through `tfds.data_source` with
`download=False`: nothing downloads at run time. A set that is not prepared fails in well
under a second with a `DataError` saying how to prepare it (with internet) or which embedded
set to use; letting TFDS download instead would retry DNS for minutes on an offline machine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from genfm.experiments.data.sources import DatasetInfo
from genfm.experiments.errors import DataError

TFDS_PREFIX = "tfds:"
_EMBEDDED_HINT = ("or use an embedded set that needs no internet: 'fashion_mnist', "
                  "'mnist_subset', 'digits'")


class TfdsSource:
  """Random access to one prepared TFDS split, as {"image": uint8 [H, W, C], "label": int32 []}.

  Same interface as `ArraySource` (`info`, `__len__`, `__getitem__`), but records are read
  from the array_record files on demand instead of held in memory. Features other than
  "image" and "label" (e.g. cifar10's "id") are dropped.
  """

  def __init__(self, source: Any, info: DatasetInfo):
    self._source = source
    self.info = info

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._source[int(index)]
    out = {"image": np.asarray(record["image"], dtype=np.uint8)}
    if "label" in self.info.features:
      out["label"] = np.asarray(record["label"], dtype=np.int32)
    return out

  def __repr__(self) -> str:
    return f"TfdsSource({self.info.name!r}, split={self.info.split!r}, n={len(self)})"


def _not_prepared(tfds_name: str, split: str, data_dir: str | None, why: str) -> DataError:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return DataError(
      f"TFDS dataset {tfds_name!r} (split {split!r}) is not prepared in {where} ({why}). "
      "Nothing downloads at run time: on a machine with internet, prepare it once with "
      f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}'"
      f"{', data_dir=' + repr(data_dir) if data_dir else ''}).download_and_prepare("
      "file_format='array_record')\"` (or `tfds build "
      f"{tfds_name} --file_format=array_record`; preparing may need `pip install tensorflow`) "
      f"and copy the folder here; {_EMBEDDED_HINT}.")


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None) -> TfdsSource:
  """Opens `name` = "tfds:<dataset>[/<config>][:<version>]" at `split` without downloading."""
  tfds_name = name[len(TFDS_PREFIX):]
  if not tfds_name:
    raise DataError(f"dataset {name!r} names no TFDS set; write e.g. 'tfds:mnist'")
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"dataset {name!r} needs tensorflow-datasets (`pip install "
                    f"tensorflow-datasets`); {_EMBEDDED_HINT}") from e
  try:
    # try_gcs stays False and download=False: no network access on any path below.
    source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _diagnose(tfds, tfds_name, split, data_dir, e) from e
  features = source.dataset_info.features
  if "image" not in features:
    raise DataError(f"TFDS dataset {tfds_name!r} has no 'image' feature (features: "
                    f"{sorted(features.keys())}); the tfds: path supports image sets")
  image_shape = tuple(features["image"].shape)
  if len(image_shape) != 3 or None in image_shape:
    raise DataError(f"TFDS dataset {tfds_name!r} has images of variable shape {image_shape}; "
                    "the tfds: path needs a fixed [H, W, C] (e.g. mnist, cifar10)")
  feature_specs = {"image": (image_shape, np.dtype(np.uint8))}
  num_classes = None
  if "label" in features:
    feature_specs["label"] = ((), np.dtype(np.int32))
    num_classes = getattr(features["label"], "num_classes", None)
  info = DatasetInfo(name=name, split=split, num_examples=len(source), features=feature_specs,
                     num_classes=num_classes, image_shape=image_shape)
  return TfdsSource(source, info)


def _diagnose(tfds: Any, tfds_name: str, split: str, data_dir: str | None,
              error: Exception) -> DataError:
  """Turns what `tfds.data_source` raised into a one-line `DataError` with what to do."""
  if isinstance(error, DataError):
    return error
  if isinstance(error, tfds.core.DatasetNotFoundError):
    return DataError(f"unknown TFDS dataset {tfds_name!r}: {str(error).splitlines()[0]} "
                     f"(see https://www.tensorflow.org/datasets/catalog); {_EMBEDDED_HINT}")
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception:  # pylint: disable=broad-exception-caught
    builder = None
  if builder is not None and not builder.is_prepared():
    return _not_prepared(tfds_name, split, data_dir, "no dataset_info.json found")
  if builder is not None and split not in builder.info.splits:
    return DataError(f"TFDS dataset {tfds_name!r} has no split {split!r}; its splits: "
                     f"{', '.join(sorted(builder.info.splits))}")
  first_line = (str(error).splitlines() or [type(error).__name__])[0]
  return _not_prepared(tfds_name, split, data_dir,
                       f"{type(error).__name__}: {first_line}; it must be in array_record "
                       "format, not tfrecord")
