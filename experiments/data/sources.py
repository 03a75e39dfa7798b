"""Random-access data sources held in memory: images, 2-D toy points and LM windows.

Every source here satisfies grain's `RandomAccessDataSource` protocol (`__len__`,
`__getitem__`), so `grain.MapDataset.source(src)` reads it directly; `get_batch(idx_B)`
answers a whole batch with one numpy fancy-index, the fast path of `pipeline.py`.
Records are dicts of numpy arrays:

  images  {"image": uint8 [H, W, C], "label": int32 []}
  toys    {"x": float32 [2]}
  text    {"inputs": int32 [T], "targets": int32 [T]}   (targets = inputs shifted by one)

The character-level next-token windows follow nanoGPT's `get_batch` (inputs
`data[i:i+T]`, targets `data[i+1:i+1+T]`), the setup of char-rnn / GPT-2 (no arXiv id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a loaded split holds.

  Attributes:
    name: the name given to `data.load` (e.g. "fashion_mnist", "tfds:cifar10").
    split: "train", "test" or "validation".
    num_examples: number of records.
    features: {key: (shape, dtype)} of one record, e.g. {"image": ((28, 28, 1), uint8)}.
    num_classes: number of label classes, or None when records carry no label.
    image_shape: (H, W, C) of "image", or None for non-image sets.
  """
  name: str
  split: str
  num_examples: int
  features: Mapping[str, tuple[tuple[int, ...], np.dtype]]
  num_classes: int | None = None
  image_shape: tuple[int, int, int] | None = None


class ArraySource:
  """A split held as numpy arrays with a shared leading axis; record i is {key: array[i]}.

  The arrays are made read-only: sources are shared between iterators (and cached per
  process by the loaders), so a transform that writes into a record must copy it first.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], info: DatasetInfo):
    if not arrays:
      raise ValueError("ArraySource needs at least one array")
    lengths = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in arrays.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
      raise ValueError(f"ArraySource arrays need one shared leading axis; got lengths {lengths}")
    self._arrays = {}
    for key, value in arrays.items():
      value = np.asarray(value)
      if value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
      self._arrays[key] = value
    self._len = next(iter(lengths.values()))
    if info.num_examples != self._len:
      raise ValueError(f"info.num_examples={info.num_examples} but arrays hold {self._len} rows")
    self.info = info

  @property
  def arrays(self) -> Mapping[str, np.ndarray]:
    """The whole split as read-only arrays, e.g. {"image": [N, H, W, C], "label": [N]}."""
    return self._arrays

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    # `a[i, ...]` returns a 0-d ndarray (not a numpy scalar) for 1-D arrays, so every value
    # of the record is an np.ndarray, as the record contract says.
    return {key: value[index, ...] for key, value in self._arrays.items()}

  def get_batch(self, idx_B: np.ndarray) -> dict[str, np.ndarray]:
    """Records `idx_B` stacked, {key: [B, ...]}: one fancy-index per array (the fast path)."""
    return {key: value[idx_B] for key, value in self._arrays.items()}

  def __repr__(self) -> str:
    # Short on purpose: grain logs the source's repr in its dataset lineage.
    return f"ArraySource({self.info.name!r}, split={self.info.split!r}, n={self._len})"


def info_from_arrays(name: str, split: str, arrays: Mapping[str, np.ndarray], *,
                     num_classes: int | None = None) -> DatasetInfo:
  """`DatasetInfo` describing `arrays` (one record = one row of each array)."""
  features = {k: (tuple(v.shape[1:]), v.dtype) for k, v in arrays.items()}
  image_shape = tuple(arrays["image"].shape[1:]) if "image" in arrays else None
  num_examples = len(next(iter(arrays.values())))
  return DatasetInfo(name=name, split=split, num_examples=num_examples, features=features,
                     num_classes=num_classes, image_shape=image_shape)


class WindowSource:
  """Next-token windows over a 1-D token array, for language models.

  Record i starts at token `s = i * stride` and is
  `{"inputs": tokens[s:s+T], "targets": tokens[s+1:s+T+1]}` as int32 [T] (T = seq_len).
  `stride=1` (default) makes every offset a record, so a shuffled pass samples windows at
  uniformly random offsets as nanoGPT's `get_batch` does; `stride=seq_len` gives
  non-overlapping windows that cover the text once, for evaluation.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, *, stride: int = 1):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be a 1-D integer array; got shape {tokens.shape}, "
                       f"dtype {tokens.dtype}")
    if int(seq_len) < 1 or int(stride) < 1:
      raise ValueError(f"seq_len and stride must be >= 1; got seq_len={seq_len}, stride={stride}")
    if tokens.shape[0] < seq_len + 1:
      raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens for one window; got "
                       f"{tokens.shape[0]}")
    if tokens.size and (tokens.min() < np.iinfo(np.int32).min or
                        tokens.max() > np.iinfo(np.int32).max):
      raise ValueError("token ids do not fit in int32")
    self._tokens = tokens.astype(np.int32)  # [N] (a private copy: callers may reuse theirs)
    self._tokens.flags.writeable = False
    self.seq_len = int(seq_len)
    self.stride = int(stride)
    # Windows need T + 1 tokens: start s is valid while s + T + 1 <= N.
    self._len = (tokens.shape[0] - self.seq_len - 1) // self.stride + 1

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f"window {index} out of range for {self._len} windows")
    start = index * self.stride
    chunk_T1 = self._tokens[start:start + self.seq_len + 1]  # [T + 1]
    return {"inputs": chunk_T1[:-1], "targets": chunk_T1[1:]}

  def get_batch(self, idx_B: np.ndarray) -> dict[str, np.ndarray]:
    """Windows `idx_B` stacked: {"inputs": int32 [B, T], "targets": int32 [B, T]}."""
    idx_B = np.asarray(idx_B, dtype=np.int64)
    if idx_B.size and (idx_B.min() < 0 or idx_B.max() >= self._len):
      raise IndexError(f"windows {idx_B.min()}..{idx_B.max()} out of range for {self._len}")
    pos_BT1 = (idx_B * self.stride)[:, None] + np.arange(self.seq_len + 1)  # [B, T + 1]
    chunk_BT1 = self._tokens[pos_BT1]
    return {"inputs": chunk_BT1[:, :-1], "targets": chunk_BT1[:, 1:]}

  def __repr__(self) -> str:
    return (f"WindowSource(tokens={self._tokens.shape[0]}, seq_len={self.seq_len}, "
            f"stride={self.stride}, n={self._len})")
