"""Instruction tasks: seeded, split by item and template, answers right, short, in the alphabet."""

import collections
import datetime
import os
import re
import string

import pytest

from genfm.experiments.data import instructions as ins
from genfm.experiments.data import text
from genfm.transformers.tokenizer import CharTokenizer

_NEED_CORPUS = pytest.mark.skipif(
    not text.corpus_path().is_file(), reason=f"Shakespeare cache absent ({text.corpus_path()}); "
    f"run `{text.FETCH_COMMAND}` once with internet (install.sh does)")
WORD_TASKS = ("reverse", "upper", "count")
# Every task, the word tasks skipped without the corpus they draw their words from.
ALL = [pytest.param(t, marks=_NEED_CORPUS) if t in WORD_TASKS else t for t in ins.TASKS]
# The Shakespeare corpus alphabet, written out so that a change on either side shows up here.
ALPHABET = ('\n !"&\'()*,-./0123456789:;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_'
            'abcdefghijklmnopqrstuvwxyz{}')
FIELD_RES = {"a": r"(?P<a>\d+)", "b": r"(?P<b>\d+)", "w": r"(?P<w>[a-z]+)", "c": r"(?P<c>[a-z])",
             "d": r"(?P<d>.+)"}
DATE_FORMATS = ("%B %d, %Y", "%d %B %Y", "%d %b %Y", "%d/%m/%Y")


def _fields(ex: ins.Example) -> dict[str, str]:
  """The template fields of `ex.prompt`, parsed back with a regex built from its template."""
  template = ins.templates(ex.task)[ex.template]
  pattern = "".join(re.escape(literal) + (FIELD_RES[name] if name else "")
                    for literal, name, _, _ in string.Formatter().parse(template))
  m = re.fullmatch(pattern + ": ", ex.prompt)
  assert m, f"{ex.prompt!r} does not match template {ex.template} of {ex.task}"
  return m.groupdict()


def _parse_date(written: str) -> datetime.date:
  for fmt in DATE_FORMATS:
    try:
      return datetime.datetime.strptime(written, fmt).date()
    except ValueError:
      pass
  raise AssertionError(f"{written!r} is in none of the four written formats")


def _item(ex: ins.Example):
  """The thing train and test must not share: an unordered operand pair, a word, a day."""
  f = _fields(ex)
  if ex.task == "add":
    return tuple(sorted((int(f["a"]), int(f["b"]))))
  if ex.task == "date":
    return _parse_date(f["d"])
  return f["w"]


def _expected(ex: ins.Example) -> str:
  """The answer, computed without the module."""
  f = _fields(ex)
  if ex.task == "add":
    a, b = int(f["a"]), int(f["b"])
    assert 10 <= a <= 999 and 10 <= b <= 999, ex.prompt
    return str(a + b)
  if ex.task == "reverse":
    return "".join(reversed(f["w"]))
  if ex.task == "upper":
    return f["w"].upper()
  if ex.task == "count":
    return str(sum(ch == f["c"] for ch in f["w"]))
  return _parse_date(f["d"]).isoformat()


@pytest.mark.parametrize("task", ALL)
def test_generate_is_deterministic_in_its_arguments(task):
  a = ins.generate(task, "train", 200, seed=3)
  assert a == ins.generate(task, "train", 200, seed=3)
  assert a != ins.generate(task, "train", 200, seed=4)
  assert a[:50] == ins.generate(task, "train", 50, seed=3)  # n only cuts the stream
  assert a != ins.generate(task, "test", 200, seed=3)
  assert len({ex.prompt for ex in a}) > 100  # not one example repeated


@pytest.mark.parametrize("task", ALL)
def test_train_and_test_items_are_disjoint(task):
  # Enough samples that a wrong rule would collide: the train draws cover most train items.
  n_train = 20_000 if task in ("add", "date") else 4_000
  train = {_item(ex) for ex in ins.generate(task, "train", n_train)}
  test = {_item(ex) for ex in ins.generate(task, "test", 1_000)}
  heldout = {_item(ex) for ex in ins.generate(task, "heldout", 1_000)}
  assert len(test) > 200 and len(heldout) > 200
  assert not train & test, sorted(train & test)[:5]
  assert not train & heldout, sorted(train & heldout)[:5]


@_NEED_CORPUS
def test_words_are_frequent_lowercase_and_split():
  train, test = ins.words("train"), ins.words("test")
  assert ins.words("heldout") == test
  assert not set(train) & set(test) and len(train) + len(test) == ins.NUM_WORDS
  assert 0.1 < len(test) / ins.NUM_WORDS < 0.3  # WORD_TEST_EVERY = 5
  assert all(re.fullmatch("[a-z]{3,8}", w) for w in train + test)
  counts = collections.Counter(re.findall(r"[A-Za-z']+", text.load_text("shakespeare", "train")))
  for ws in (train, test):  # most frequent first
    assert all(counts[u] >= counts[v] for u, v in zip(ws, ws[1:]))
  assert min(counts[w] for w in train + test) >= max(
      counts[w] for w in counts if re.fullmatch("[a-z]{3,8}", w) and w not in train + test)
  # Golden: the ranking and the hash split (a change here changes every data set: bump VERSION).
  assert train[:4] == ("and", "you", "that", "not") and test[:3] == ("the", "for", "are")


@pytest.mark.parametrize("task", ALL)
def test_heldout_templates_only_in_heldout(task):
  n_train = len(ins.TRAIN_TEMPLATES[task])
  n_all = len(ins.templates(task))
  assert n_train >= 3 and n_all > n_train
  for split, want in (("train", range(n_train)), ("test", range(n_train)),
                      ("heldout", range(n_train, n_all))):
    examples = ins.generate(task, split, 300)
    assert {ex.template for ex in examples} == set(want), split  # all of them, no others
    for ex in examples:
      _fields(ex)  # the prompt is its template, filled in, then ": "


@pytest.mark.parametrize("task", ALL)
def test_answers_match_an_independent_computation(task):
  for split in ins.SPLITS:
    for ex in ins.generate(task, split, 300, seed=1):
      assert ex.task == task
      assert ex.answer == _expected(ex), ex
      assert ex.response == ex.answer + "\n"
      assert ins.is_correct(ex, ex.response) and ins.reward(ex, ex.response) == 1.0


@_NEED_CORPUS
def test_count_answers_include_zero_and_repeats():
  answers = {ex.answer for ex in ins.generate("count", "train", 500)}
  assert {"0", "1", "2"} <= answers


@pytest.mark.parametrize("task", ALL)
def test_examples_fit_the_context_in_the_corpus_alphabet(task):
  for split in ins.SPLITS:
    for ex in ins.generate(task, split, 500, seed=2):
      s = ex.prompt + ex.response
      assert len(s) <= 48, s
      assert set(s) <= set(ALPHABET), set(s) - set(ALPHABET)
      assert ex.prompt.endswith(": ") and "\n" not in ex.prompt
      assert ex.response.count("\n") == 1 and ex.response.endswith("\n")


def test_longest_possible_example_fits():
  # The longest value of every field, in every template (train and held-out).
  longest = {"a": 999, "b": 999, "w": "abcdefgh", "c": "a", "d": "September 30, 2029"}
  answers = {"add": "1998", "reverse": "abcdefgh", "upper": "ABCDEFGH", "count": "8",
             "date": "2029-09-30"}
  for task in ins.TASKS:
    for tmpl in ins.templates(task):
      s = tmpl.format(**longest) + ins.SEP + answers[task] + ins.END
      assert len(s) <= ins.MAX_CHARS == 48, (task, s)


@_NEED_CORPUS
def test_char_tokenizer_of_the_corpus_encodes_every_example():
  tok = CharTokenizer.train(text.load_text("shakespeare", "train"))
  for split in ins.SPLITS:
    for ex in ins.mixture(ins.TASKS, split, 1_000, seed=5):
      assert tok.decode(tok.encode(ex.prompt + ex.response)) == ex.prompt + ex.response


def test_answer_of_and_is_correct_edge_cases():
  ex = ins.Example("add", "add 12 and 345: ", "357\n", "357", 0)
  assert ins.answer_of("357\n") == "357"
  assert ins.answer_of("357\nadd 1 and 2: 3\n") == "357"
  assert ins.answer_of("357") == "357"  # no END: everything
  assert ins.answer_of("") == "" and ins.answer_of("\n357\n") == ""
  assert ins.is_correct(ex, "357\n") and ins.is_correct(ex, "357\nthen more text")
  assert not ins.is_correct(ex, "357")  # never stopped
  assert ins.is_correct(ex, "357", require_end=False)  # a sampler that cut END off
  assert not ins.is_correct(ex, "")
  assert not ins.is_correct(ex, "", require_end=False)
  assert not ins.is_correct(ex, " 357\n") and not ins.is_correct(ex, "3570\n")
  assert not ins.is_correct(ex, "\n357\n")
  assert ins.reward(ex, "357\nxyz") == 1.0 and ins.reward(ex, "358\n") == 0.0
  assert ins.reward(ex, "357") == 0.0 and ins.reward(ex, "357", require_end=False) == 1.0
  with pytest.raises(ValueError, match="answer \\+ END"):
    ins.Example("add", "add 12 and 345: ", "357", "357", 0)


def test_mixture_cycles_tasks_from_generate():
  tasks = ("date", "add")
  mix = ins.mixture(tasks, "test", 7, seed=2)
  assert [ex.task for ex in mix] == ["date", "add"] * 3 + ["date"]
  assert mix[0::2] == ins.generate("date", "test", 4, seed=2)
  assert mix[1::2] == ins.generate("add", "test", 3, seed=2)
  assert ins.mixture("add", "test", 3, seed=2) == ins.generate("add", "test", 3, seed=2)
  assert [ex.task for ex in ins.mixture(tasks, "train", 1)] == ["date"]


def test_cached_writes_once_then_reads_the_file(tmp_path, monkeypatch):
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path))
  want = ins.mixture(("add", "date"), "heldout", 40, seed=7)
  got = ins.cached(("add", "date"), "heldout", 40, seed=7)
  assert got == want
  (path,) = (tmp_path / "instructions").iterdir()  # default folder; no tmp file left behind
  assert path.name == f"v{ins.VERSION}_add-date_heldout_n40_seed7.jsonl"
  assert len(path.read_text().splitlines()) == 40
  mtime = path.stat().st_mtime_ns

  def no_generate(*args, **kwargs):
    raise AssertionError("cached generated again instead of reading its file")

  monkeypatch.setattr(ins, "generate", no_generate)
  monkeypatch.setattr(ins, "mixture", no_generate)
  assert ins.cached(["add", "date"], "heldout", 40, seed=7) == want
  assert path.stat().st_mtime_ns == mtime
  with pytest.raises(AssertionError, match="generated again"):  # another key is another file
    ins.cached(("add", "date"), "heldout", 40, seed=8)


def test_cached_rewrites_an_unreadable_file(tmp_path):
  want = ins.cached("add", "train", 5, cache=tmp_path)
  path = tmp_path / f"v{ins.VERSION}_add_train_n5_seed0.jsonl"
  path.write_text('{"task": "add"}\n')
  assert ins.cached("add", "train", 5, cache=tmp_path) == want
  assert ins.cached("add", "train", 5, cache=tmp_path) == want  # and it was rewritten
  assert sorted(os.listdir(tmp_path)) == [path.name]


def test_bad_input_names_what_is_valid(tmp_path):
  with pytest.raises(ValueError, match="unknown instruction task 'sum'; valid choices: add, "
                     "count, date, reverse, upper$"):
    ins.generate("sum", "train", 3)
  with pytest.raises(ValueError, match="unknown instruction split 'validation'; valid choices: "
                     "heldout, test, train$"):
    ins.generate("add", "validation", 3)
  with pytest.raises(ValueError, match="n .* must be >= 1, got 0$"):
    ins.generate("add", "train", 0)
  with pytest.raises(ValueError, match="must be an int >= 1, got 2.5$"):
    ins.mixture(("add",), "train", 2.5)
  with pytest.raises(ValueError, match="unknown instruction task 'sum'"):
    ins.mixture(("add", "sum"), "train", 3)
  with pytest.raises(ValueError, match="at least one of add, reverse"):
    ins.mixture((), "train", 3)
  with pytest.raises(ValueError, match="distinct"):
    ins.mixture(("add", "add"), "train", 3)
  with pytest.raises(ValueError, match="n .* must be >= 1, got -1$"):
    ins.cached("add", "train", -1, cache=tmp_path)
  with pytest.raises(ValueError, match="unknown instruction split"):
    ins.words("dev")
  assert not os.listdir(tmp_path)
