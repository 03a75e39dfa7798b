"""Tokenizers: byte-level BPE trained from scratch, and characters.

BPE: Sennrich et al. 2016, arXiv:1508.07909 (merge the most frequent adjacent pair, repeat),
on UTF-8 bytes as in GPT-2 (Radford et al. 2019), so that any string encodes with no unknown
token. Ids 0..255 are the bytes; merge i creates id 256 + i.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
import json
import os

Pair = tuple[int, int]


def _pair_counts(ids: Sequence[int]) -> Counter:
  # Counter keeps insertion order, so ties go to the pair seen first (deterministic training).
  return Counter(zip(ids, ids[1:]))


def _merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
  """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
  out, i = [], 0
  while i < len(ids):
    if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
      out.append(new_id)
      i += 2
    else:
      out.append(ids[i])
      i += 1
  return out


class BPETokenizer:
  """Byte-level BPE: `train`, `encode`, `decode`, `save`, `load`."""

  def __init__(self, merges: Iterable[Pair] = ()):
    self.merges: dict[Pair, int] = {}
    self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for pair in merges:
      self._add_merge(tuple(pair))

  def _add_merge(self, pair: Pair) -> int:
    a, b = pair
    if a not in self.vocab or b not in self.vocab:
      raise ValueError(
          f"merge {pair} refers to an id not in the vocabulary (size {len(self.vocab)})")
    new_id = 256 + len(self.merges)
    self.merges[pair] = new_id
    self.vocab[new_id] = self.vocab[a] + self.vocab[b]
    return new_id

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @classmethod
  def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
    """Learn vocab_size − 256 merges; stops early when no pair occurs twice."""
    if vocab_size < 256:
      raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
    tok = cls()
    ids = list(text.encode("utf-8"))
    for _ in range(vocab_size - 256):
      counts = _pair_counts(ids)
      if not counts:
        break
      pair, count = max(counts.items(), key=lambda kv: kv[1])  # first-seen wins ties
      if count < 2:
        break  # merging a pair seen once would only memorize the training text
      ids = _merge(ids, pair, tok._add_merge(pair))
    return tok

  def encode(self, text: str) -> list[int]:
    """Apply merges in the order they were learned (lowest new id first), as in training."""
    if not isinstance(text, str):
      raise TypeError(f"encode expects str, got {type(text).__name__}")
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
      pair = min(set(zip(ids, ids[1:])), key=lambda p: self.merges.get(p, float("inf")))
      if pair not in self.merges:
        break
      ids = _merge(ids, pair, self.merges[pair])
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Concatenate the bytes; a sequence cut inside a UTF-8 character decodes it as U+FFFD."""
    try:
      data = b"".join(self.vocab[int(i)] for i in ids)
    except KeyError as e:
      raise ValueError(f"token id {e.args[0]} is not in the vocabulary "
                       f"(ids 0..{self.vocab_size - 1})") from None
    return data.decode("utf-8", errors="replace")

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"type": "byte_bpe", "merges": [list(p) for p in self.merges]}, f)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "BPETokenizer":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if data.get("type") != "byte_bpe":
      raise ValueError(f"{path} is not a byte-level BPE tokenizer file (type={data.get('type')!r})")
    return cls(tuple(p) for p in data["merges"])


class CharTokenizer:
  """One id per distinct character of the training text, sorted (the char-level GPT setup)."""

  def __init__(self, chars: Iterable[str]):
    self.chars = sorted(set(chars))
    self.index = {c: i for i, c in enumerate(self.chars)}

  @classmethod
  def train(cls, text: str) -> "CharTokenizer":
    return cls(text)

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> list[int]:
    unknown = sorted(set(text) - self.index.keys())
    if unknown:
      raise ValueError(
          f"characters not in the vocabulary: {unknown[:10]!r}"
          f"{' ...' if len(unknown) > 10 else ''} (vocabulary of {self.vocab_size} characters)")
    return [self.index[c] for c in text]

  def decode(self, ids: Iterable[int]) -> str:
    out = []
    for i in ids:
      if not 0 <= int(i) < self.vocab_size:
        raise ValueError(f"token id {int(i)} is outside the vocabulary 0..{self.vocab_size - 1}")
      out.append(self.chars[int(i)])
    return "".join(out)

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"type": "char", "chars": self.chars}, f)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "CharTokenizer":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if data.get("type") != "char":
      raise ValueError(f"{path} is not a character tokenizer file (type={data.get('type')!r})")
    return cls(data["chars"])
