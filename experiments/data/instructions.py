"""Instruction-following tasks for supervised fine-tuning (and verifiable rewards) of a tiny
character-level GPT: generated offline, seeded, each example short enough for a 64-character
context (prompt + response ≤ MAX_CHARS = 48) and written only in the Shakespeare corpus alphabet.

  from genfm.experiments.data import instructions as ins
  train = ins.mixture(ins.TASKS, "train", 50_000, seed=0)   # or ins.cached(...) to keep a JSONL
  ex = train[0]                                 # Example(task, prompt, response, answer, template)
  text = ex.prompt + ex.response                # what SFT trains on (loss on the response only)
  ins.reward(ex, model_continuation)            # 1.0 iff it is `ex.answer` then END

Every prompt ends with SEP = ": " and the response is the answer then END = "\\n" (the model stops
there). One example per task (train templates first, then held-out ones, as in `templates`):

  task     prompt                           response        item                 templates
  add      "add 12 and 345: "               "357\\n"         2–3-digit operands   4 + 2
  reverse  "reverse honour: "               "ruonoh\\n"      a corpus word        4 + 2
  upper    "uppercase honour: "             "HONOUR\\n"      a corpus word        4 + 2
  count    "count 'o' in honour: "          "2\\n"           word and a letter    4 + 2
  date     "March 7, 1987 in ISO: "         "1987-03-07\\n"  a day, 4 written     4 + 2
                                                           formats (seq2seq's)

Words are the NUM_WORDS most frequent all-lowercase words of 3–8 letters in the Shakespeare train
split (ties broken alphabetically). Several phrasings per task, with some kept back to test
generalisation to unseen instructions, follow FLAN (Wei et al. 2021, arXiv:2109.01652).

Splits. Items (operand pairs, words, days) are split by a fixed rule, never by the seed:
  "train"    train items, train templates;
  "test"     test items (never in "train"), train templates: generalisation to new items;
  "heldout"  test items, held-out templates: generalisation to new phrasings.
Test items: an unordered operand pair or a word whose blake2b hash is 0 mod ADD_TEST_EVERY /
WORD_TEST_EVERY; a day whose offset from seq2seq.FIRST_DAY is 0 mod seq2seq.HOLDOUT_EVERY (the
seq2seq task's held-out dates). Each example draws its template and item uniformly, from a
`random.Random` seeded by (VERSION, task, split, seed), so `generate(..., n)` is a prefix of
`generate(..., n + k)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
import dataclasses
import datetime
import functools
import hashlib
import json
import operator
import os
import pathlib
import random
import re
import string

from genfm.experiments.data.text import cache_dir
from genfm.experiments.data.text import load_text
from genfm.experiments.errors import ConfigError
from genfm.experiments.errors import unknown_choice
from genfm.experiments.tasks.seq2seq import FIRST_DAY
from genfm.experiments.tasks.seq2seq import FORMATS
from genfm.experiments.tasks.seq2seq import HOLDOUT_EVERY
from genfm.experiments.tasks.seq2seq import NUM_DAYS
from genfm.experiments.tasks.seq2seq import write_date

TASKS = ("add", "reverse", "upper", "count", "date")
SPLITS = ("train", "test", "heldout")
END = "\n"          # ends every response; generation stops there
SEP = ": "          # ends every prompt; the answer follows it directly
MAX_CHARS = 48      # len(prompt + response) bound, for a 64-character context
VERSION = 1         # bump when any output changes: it keys the random streams and `cached` files
NUM_WORDS = 2000
WORD_LENGTHS = (3, 8)
ADD_TEST_EVERY = 10
WORD_TEST_EVERY = 5

# Fields: {a} {b} operands, {w} word, {c} letter, {d} written date. SEP is appended.
TRAIN_TEMPLATES = {
    "add": ("add {a} and {b}", "{a} plus {b}", "sum of {a} and {b}", "{a} and {b} added"),
    "reverse": ("reverse {w}", "{w} backwards", "spell {w} backwards", "reverse the word {w}"),
    "upper": ("uppercase {w}", "{w} in capitals", "write {w} in caps", "{w} in all caps"),
    "count": ("count '{c}' in {w}", "how many '{c}' in {w}", "number of '{c}' in {w}",
              "in {w}, count '{c}'"),
    "date": ("{d} in ISO", "ISO date of {d}", "{d} as yyyy-mm-dd", "write {d} in ISO"),
}
HELDOUT_TEMPLATES = {
    "add": ("total of {a} and {b}", "{a} increased by {b}"),
    "reverse": ("{w} reversed", "write {w} back to front"),
    "upper": ("{w} in upper case", "shout {w}"),
    "count": ("times '{c}' occurs in {w}", "{w} has how many '{c}'"),
    "date": ("convert {d} to ISO", "{d} as an ISO date"),
}


@dataclasses.dataclass(frozen=True)
class Example:
  """One task instance: the model reads `prompt` and should write `response` (= answer + END)."""
  task: str
  prompt: str    # ends with SEP
  response: str  # answer + END
  answer: str    # what `is_correct` compares against
  template: int  # index into templates(task); >= len(TRAIN_TEMPLATES[task]) means held out

  def __post_init__(self):
    if self.response != self.answer + END:
      raise ValueError(f"Example.response must be answer + END, got {self.response!r} for "
                       f"answer {self.answer!r}")


def templates(task: str) -> tuple[str, ...]:
  """All prompt templates of `task`: the train ones, then the held-out ones (`Example.template`)."""
  _check_task(task)
  return TRAIN_TEMPLATES[task] + HELDOUT_TEMPLATES[task]


def generate(task: str, split: str, n: int, *, seed: int = 0) -> list[Example]:
  """`n` examples of `task` for `split`; the same arguments always give the same list."""
  _check_task(task)
  _check_split_n(split, n)
  rng = random.Random(f"instructions/v{VERSION}/{task}/{split}/{seed}")
  test_items = split != "train"
  pool = HELDOUT_TEMPLATES[task] if split == "heldout" else TRAIN_TEMPLATES[task]
  first = len(TRAIN_TEMPLATES[task]) if split == "heldout" else 0
  out = []
  for _ in range(n):
    k = rng.randrange(len(pool))
    fields, answer = _ITEMS[task](rng, test_items)
    out.append(Example(task, pool[k].format(**fields) + SEP, answer + END, answer, first + k))
  return out


def mixture(tasks: str | Sequence[str], split: str, n: int, *, seed: int = 0) -> list[Example]:
  """`n` examples cycling through `tasks` in order (example i is of tasks[i % len(tasks)]), so
  every prefix is balanced; each task's examples are `generate(task, split, ., seed=seed)`."""
  tasks = _task_tuple(tasks)
  _check_split_n(split, n)
  k = len(tasks)
  per_task = [generate(t, split, (n - i + k - 1) // k, seed=seed) if i < n else []
              for i, t in enumerate(tasks)]
  return [per_task[j % k][j // k] for j in range(n)]


def cached(tasks: str | Sequence[str], split: str, n: int, *, seed: int = 0,
           cache: str | os.PathLike | None = None) -> list[Example]:
  """`mixture(tasks, split, n, seed=seed)`, kept as JSONL (one Example per line) in `cache`
  (default: cache_dir() / "instructions"): written once, read back on later calls."""
  tasks = _task_tuple(tasks)
  _check_split_n(split, n)
  folder = pathlib.Path(cache) if cache is not None else cache_dir() / "instructions"
  path = folder / f"v{VERSION}_{'-'.join(tasks)}_{split}_n{n}_seed{seed}.jsonl"
  if path.is_file():
    try:
      lines = path.read_text(encoding="utf-8").splitlines()
      examples = [Example(**json.loads(line)) for line in lines]
    except (ValueError, TypeError):  # not our format: regenerate (the content is deterministic)
      examples = []
    if len(examples) == n:
      return examples
  examples = mixture(tasks, split, n, seed=seed)
  folder.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(dataclasses.asdict(ex)) + "\n" for ex in examples)
  os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
  return examples


def answer_of(generated: str) -> str:
  """What a model answered: its continuation of the prompt up to (not including) the first END;
  all of `generated` when there is no END."""
  return generated.split(END, 1)[0]


def is_correct(example: Example, generated: str, *, require_end: bool = True) -> bool:
  """Exact match of `answer_of(generated)` with `example.answer` (no stripping or normalising).

  `generated` is the continuation after `example.prompt`. By default the model must also have
  stopped (END present); pass `require_end=False` when the sampler already cut END off.
  """
  if require_end and END not in generated:
    return False
  return answer_of(generated) == example.answer


def reward(example: Example, generated: str, *, require_end: bool = True) -> float:
  """The verifiable reward: 1.0 if `is_correct(example, generated)`, else 0.0."""
  return float(is_correct(example, generated, require_end=require_end))


# A second, stylistic preference for preference learning (experiments/tasks/preference.py): the
# preferred response puts a full stop right before END ("357.\n"); a rule any reader can check,
# which no instruction-tuned model follows by itself.
STYLE = "."


def follows_style(generated: str) -> bool:
  """The style rule on a continuation: it has END and its answer ends with STYLE."""
  return END in generated and answer_of(generated).endswith(STYLE)


def correct_modulo_style(example: Example, generated: str) -> bool:
  """`is_correct`, with one trailing STYLE allowed."""
  return END in generated and answer_of(generated).removesuffix(STYLE) == example.answer


def words(split: str) -> tuple[str, ...]:
  """The corpus words of `split`'s items ("test" and "heldout" share theirs), by frequency."""
  _check_split_n(split, 1)
  return _words(split != "train")


# -- items: (template fields, answer), drawn from the train or the test items --------------------


def _is_test_item(key: str, every: int) -> bool:
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") % every == 0


def _operand(rng: random.Random) -> int:
  return rng.randrange(10, 100) if rng.random() < 0.5 else rng.randrange(100, 1000)


def _add(rng: random.Random, test: bool):
  while True:  # ~10 tries for a test pair
    a, b = _operand(rng), _operand(rng)
    if _is_test_item(f"{min(a, b)},{max(a, b)}", ADD_TEST_EVERY) == test:
      return {"a": a, "b": b}, str(a + b)


def _reverse(rng: random.Random, test: bool):
  w = rng.choice(_words(test))
  return {"w": w}, w[::-1]


def _upper(rng: random.Random, test: bool):
  w = rng.choice(_words(test))
  return {"w": w}, w.upper()


def _count(rng: random.Random, test: bool):
  w = rng.choice(_words(test))
  # 3/4 a letter of the word (answers 1..), 1/4 any letter (mostly 0).
  c = rng.choice(w) if rng.random() < 0.75 else rng.choice(string.ascii_lowercase)
  return {"c": c, "w": w}, str(w.count(c))


def _date(rng: random.Random, test: bool):
  if test:
    day = HOLDOUT_EVERY * rng.randrange((NUM_DAYS - 1) // HOLDOUT_EVERY + 1)
  else:
    day = HOLDOUT_EVERY
    while day % HOLDOUT_EVERY == 0:
      day = rng.randrange(NUM_DAYS)
  d = FIRST_DAY + datetime.timedelta(days=day)
  return {"d": write_date(d, rng.randrange(len(FORMATS)))}, d.isoformat()


_ITEMS = {"add": _add, "reverse": _reverse, "upper": _upper, "count": _count, "date": _date}


@functools.lru_cache(maxsize=1)
def _ranked_words() -> tuple[str, ...]:
  """The NUM_WORDS most frequent all-lowercase 3–8-letter words of the train text."""
  lo, hi = WORD_LENGTHS
  counts = Counter(w for w in re.findall(r"[A-Za-z']+", load_text("shakespeare", "train"))
                   if lo <= len(w) <= hi and w.isascii() and w.isalpha() and w.islower())
  return tuple(sorted(counts, key=lambda w: (-counts[w], w))[:NUM_WORDS])


@functools.lru_cache(maxsize=2)
def _words(test: bool) -> tuple[str, ...]:
  return tuple(w for w in _ranked_words() if _is_test_item(w, WORD_TEST_EVERY) == test)


# -- argument checks: one line each, naming what is valid ---------------------------------------


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise unknown_choice("instruction task", task, TASKS)


def _check_split_n(split: str, n: int) -> None:
  if split not in SPLITS:
    raise unknown_choice("instruction split", split, SPLITS)
  try:
    n = operator.index(n)
  except TypeError:
    raise ConfigError(f"n (the number of examples) must be an int >= 1, got {n!r}") from None
  if n < 1:
    raise ConfigError(f"n (the number of examples) must be >= 1, got {n}")


def _task_tuple(tasks: str | Sequence[str]) -> tuple[str, ...]:
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  if not tasks:
    raise ConfigError(f"tasks must name at least one of {', '.join(TASKS)}")
  for t in tasks:
    _check_task(t)
  if len(set(tasks)) != len(tasks):
    raise ConfigError(f"tasks must be distinct, got {tasks}")
  return tasks
