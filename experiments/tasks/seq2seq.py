"""Toy translation with a T5-style encoder–decoder (Raffel et al. 2019, arXiv:1910.10683):
written dates → ISO 8601, generated in code (offline, deterministic).

    "March 7, 1987" | "7 March 1987" | "7 Mar 1987" | "07/03/1987"   →   "1987-03-07"

The model reads the source characters (encoder, padding masked) and is trained by teacher forcing
(decoder input = target shifted right after a start token, targets end with an end token):

    L(θ) = −(1/|y|) Σ_t log p_θ(y_t | y_<t, x)        (nats per target token)

Dates run from 1970-01-01 to 2029-12-31. Every 20th day (from the first) is held out: the
validation set is `eval_examples` held-out dates, each written in one of the four formats in
turn; training pairs are every other day in every format. Evaluation greedy-decodes with the
KV cache and reports `validation_exact_match` (the whole ISO string and the end token right),
plus teacher-forced `validation_loss` and `validation_token_accuracy` (per example, averaged).
Ids: 0 pad, 1 start, 2 end, then the characters in sorted order. `after_eval` writes decoded
examples to `workdir/samples_step{N}.txt`.
"""

import dataclasses
import datetime
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.transformers import t5

DATASETS = ("dates",)
PAD, START, END = 0, 1, 2
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
FORMATS = ("{month} {day}, {year}", "{day} {month} {year}", "{day} {mon} {year}",
           "{dd}/{mm}/{year}")
FIRST_DAY, NUM_DAYS = datetime.date(1970, 1, 1), 21915  # through 2029-12-31
HOLDOUT_EVERY = 20
T5_FIELDS = tuple(f.name for f in dataclasses.fields(t5.T5Config) if f.name != "vocab_size")


def write_date(d: datetime.date, fmt: int) -> str:
  """`d` in source format `fmt` (an index into FORMATS)."""
  return FORMATS[fmt].format(month=MONTHS[d.month - 1], mon=MONTHS[d.month - 1][:3], day=d.day,
                             year=d.year, dd=f"{d.day:02d}", mm=f"{d.month:02d}")


def date_pairs(days: np.ndarray, fmts: np.ndarray) -> list[tuple[str, str]]:
  """(source, ISO target) for day offsets from FIRST_DAY and format indices.

  Equal to `write_date` / `date.isoformat` per pair (tested); the calendar arithmetic runs in
  numpy datetime64, so 10^5 pairs take a fraction of a second.
  """
  dt = np.datetime64(FIRST_DAY.isoformat(), "D") + np.asarray(days, np.int64)
  iso = np.datetime_as_string(dt, unit="D").tolist()
  year = dt.astype("datetime64[Y]").astype(np.int64) + 1970
  month = dt.astype("datetime64[M]").astype(np.int64) % 12 + 1
  day = (dt - dt.astype("datetime64[M]")).astype(np.int64) + 1
  writers = (lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",
             lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
             lambda y, m, d: f"{d} {MONTHS[m - 1][:3]} {y}",
             lambda y, m, d: f"{d:02d}/{m:02d}/{y}")
  return [(writers[f](y, m, d), t) for f, y, m, d, t in
          zip(np.asarray(fmts).tolist(), year.tolist(), month.tolist(), day.tolist(), iso)]


def _alphabet() -> list[str]:
  chars = set("0123456789-")
  for f in range(len(FORMATS)):
    for m in range(1, 13):
      chars |= set(write_date(datetime.date(2000, m, 28), f))
  return sorted(chars)


class Seq2SeqTask(Task):
  """Generated (source, target) string pairs → T5(`config.model`) → teacher-forced CE."""

  def __init__(self, config):
    super().__init__(config)
    if config.dataset not in DATASETS:
      raise unknown_choice("config.dataset (a toy translation for the seq2seq task)",
                           config.dataset, DATASETS)
    self.chars = _alphabet()
    self.index = {c: i + 3 for i, c in enumerate(self.chars)}
    self.model_config = self._t5_config(config, len(self.chars) + 3)
    days = np.arange(NUM_DAYS)
    held = days[days % HOLDOUT_EVERY == 0]
    n_eval = config.get("eval_examples", 1000)
    if not 1 <= n_eval <= len(held):
      raise ConfigError(f"config.eval_examples must be in 1..{len(held)} (held-out dates), "
                        f"got {n_eval}")
    # Evenly spread over the held-out dates, formats in turn.
    eval_days = held[np.round(np.linspace(0, len(held) - 1, n_eval)).astype(int)]
    eval_pairs = date_pairs(eval_days, np.arange(n_eval) % len(FORMATS))
    train_days = days[days % HOLDOUT_EVERY != 0]
    train_pairs = date_pairs(np.repeat(train_days, len(FORMATS)),
                             np.tile(np.arange(len(FORMATS)), len(train_days)))
    self.src_len = max(len(s) for s, _ in eval_pairs + train_pairs)  # 18 ("September 30, ...")
    self.tgt_len = len("yyyy-mm-dd") + 1  # + end token
    self._train = self._source("train", train_pairs)
    self._eval = self._source("validation", eval_pairs)
    self.eval_pairs = eval_pairs

  @staticmethod
  def _t5_config(config, vocab_size: int) -> t5.T5Config:
    unknown = sorted(set(config.model.keys()) - set(T5_FIELDS))
    if unknown:
      raise ConfigError(f"unknown key(s) {unknown} under config.model; valid: "
                        f"{', '.join(T5_FIELDS)}")
    try:
      return t5.T5Config(vocab_size=vocab_size, **config.model)
    except ValueError as e:
      raise ConfigError(f"config.model: {e}") from None

  def encode(self, s: str, length: int) -> np.ndarray:
    """int32 [length]: the characters' ids, padded with 0."""
    ids = np.zeros(length, np.int32)
    ids[:len(s)] = [self.index[c] for c in s]
    return ids

  def decode(self, ids) -> str:
    """Characters up to the first end token (pad and start are dropped)."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == END:
        break
      if i >= 3:
        out.append(self.chars[i - 3])
    return "".join(out)

  def _encode_all(self, strings: list[str], length: int) -> np.ndarray:
    """`encode` of every string, int32 [N, length], vectorised (one byte lookup table)."""
    table = np.zeros(256, np.int32)  # NUL padding → 0 (pad)
    for c, i in self.index.items():
      table[ord(c)] = i
    raw = "".join(x.ljust(length, "\0") for x in strings).encode("ascii")
    return table[np.frombuffer(raw, np.uint8).reshape(len(strings), length)]

  def _source(self, split: str, pairs: list[tuple[str, str]]) -> ArraySource:
    S, T = self.src_len, self.tgt_len
    src_NS = self._encode_all([s for s, _ in pairs], S)
    out_NT = self._encode_all([t for _, t in pairs], T)
    lengths = np.array([len(t) for _, t in pairs])
    out_NT[np.arange(len(pairs)), lengths] = END                      # y, then <end>
    in_NT = np.concatenate([np.full((len(pairs), 1), START, np.int32), out_NT[:, :-1]], axis=1)
    arrays = {"source": src_NS, "decoder_inputs": in_NT, "targets": out_NT}
    return ArraySource(arrays, info_from_arrays("dates", split, arrays))

  # -- Task contract --------------------------------------------------------------------------

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"validation": self._eval}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return t5.T5(self.model_config, rngs=rngs)

  def _forced(self, model, batch: Batch):
    src_BS = batch["source"]
    logits_BTV = model(src_BS, batch["decoder_inputs"], src_BS != PAD)
    targets_BT = batch["targets"]
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    return ce_BT, correct_BT, (targets_BT != PAD).astype(jnp.float32)

  def loss(self, model, batch: Batch, key: jax.Array):
    del key
    ce_BT, correct_BT, w_BT = self._forced(model, batch)
    n = jnp.maximum(jnp.sum(w_BT), 1.0)
    return jnp.sum(ce_BT * w_BT) / n, {"token_accuracy": jnp.sum(correct_BT * w_BT) / n}

  def eval_metrics(self, model, batch: Batch):
    ce_BT, correct_BT, w_BT = self._forced(model, batch)
    src_BS = batch["source"]
    tokens_BT, _ = t5.greedy_decode(model, src_BS, self.tgt_len, start_id=START,
                                    enc_valid_BS=src_BS != PAD, use_cache=True)
    targets_BT = batch["targets"]
    # Exact: every target position up to and including <end> right (pads after it ignored).
    exact_B = jnp.all((tokens_BT == targets_BT) | (targets_BT == PAD), axis=1)
    mask_B = batch["mask"]
    per_ex = lambda x_BT: jnp.sum(x_BT * w_BT, 1) / jnp.maximum(jnp.sum(w_BT, 1), 1.0)
    return {"exact_match": jnp.sum(exact_B * mask_B), "loss": jnp.sum(per_ex(ce_BT) * mask_B),
            "token_accuracy": jnp.sum(per_ex(correct_BT) * mask_B), "count": jnp.sum(mask_B)}

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    n = min(self.config.get("num_samples", 8), len(self.eval_pairs))
    src_BS = jnp.asarray(self._eval.arrays["source"][:n])
    tokens_BT, _ = t5.greedy_decode(model, src_BS, self.tgt_len, start_id=START,
                                    enc_valid_BS=src_BS != PAD)
    lines = []
    for (src, want), row in zip(self.eval_pairs[:n], np.asarray(tokens_BT)):
      got = self.decode(row)
      lines.append(f"{src!r:>22} -> {got!r} {'ok' if got == want else f'(want {want!r})'}")
    with open(os.path.join(workdir, f"samples_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, greedy decoding with the KV cache\n" + "\n".join(lines) + "\n")
    return {}
