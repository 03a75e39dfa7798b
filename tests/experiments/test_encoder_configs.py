"""The encoder (BERT, `mlm` task) and encoder–decoder (T5, `seq2seq` task) experiments: the
generated dates equal the `datetime` reference, the splits are disjoint, the eval metrics equal
independent computations, bad configs fail clearly, and the smoke configs reach their stated
accuracies through the launcher."""

import datetime
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments.configs import shakespeare_bert, toy_t5
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import mlm, seq2seq
from genfm.transformers import bert, t5

# strptime patterns of the four source formats, an independent parser of the generated text.
PARSE = ("%B %d, %Y", "%d %B %Y", "%d %b %Y", "%d/%m/%Y")
_WORDS = ("the", "king", "doth", "love", "thee", "and", "my", "lord", "shall", "not", "be",
          "so", "sweet", "a", "night", "O", "what", "is", "in", "name", "fair")


def _log_softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


# -- seq2seq: dates -----------------------------------------------------------------------


def test_date_pairs_equal_datetime_and_parse_back():
  rng = np.random.default_rng(0)
  days, fmts = rng.integers(0, seq2seq.NUM_DAYS, 500), rng.integers(0, 4, 500)
  for (src, iso), k, f in zip(seq2seq.date_pairs(days, fmts), days, fmts):
    d = seq2seq.FIRST_DAY + datetime.timedelta(days=int(k))
    assert (src, iso) == (seq2seq.write_date(d, int(f)), d.isoformat())
    assert datetime.datetime.strptime(src, PARSE[f]).date() == d  # the source says the date


def _t5_config(**model):
  c = toy_t5.get_config("smoke")
  c.model.update(model)
  c.eval_examples = 12
  return c


def test_seq2seq_records_splits_and_shapes():
  task = seq2seq.Seq2SeqTask(_t5_config())
  train, val = task.train_source(), task.eval_sources()["validation"]
  assert len(val) == 12 and len(train) == 4 * (seq2seq.NUM_DAYS - 1096)  # 1,096 held out
  targets = lambda src: {task.decode(r) for r in src.arrays["targets"]}
  assert not targets(train) & targets(val)  # no held-out date is trained on, in any format
  for src in (train, val):
    a = src.arrays
    assert a["source"].shape[1] == task.src_len == 18 and a["targets"].shape[1] == 11
    np.testing.assert_array_equal(a["decoder_inputs"][:, 0], seq2seq.START)
    np.testing.assert_array_equal(a["decoder_inputs"][:, 1:], a["targets"][:, :-1])
    np.testing.assert_array_equal(a["targets"][:, -1], seq2seq.END)
  for i in (0, 1, 2, 3, 7, len(train) - 1):
    r = train[i]
    src, iso = task.decode(r["source"]), task.decode(r["targets"])
    assert datetime.datetime.strptime(src, PARSE[i % 4]).date().isoformat() == iso
    np.testing.assert_array_equal(r["source"], task.encode(src, task.src_len))


def test_seq2seq_eval_metrics_equal_independent_computation(loop_eval):
  task = seq2seq.Seq2SeqTask(_t5_config())
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  metrics, count = loop_eval(task, model, batch_size=5)  # 5 ∤ 12: a padded last batch
  assert count == 12
  a = task.eval_sources()["validation"].arrays
  src = jnp.asarray(a["source"])
  logits = nnx.jit(lambda m: m(src, jnp.asarray(a["decoder_inputs"]), src != 0))(model)
  logp = _log_softmax(logits)
  ce = -np.take_along_axis(logp, a["targets"][..., None], -1)[..., 0]
  np.testing.assert_allclose(metrics["loss"], ce.mean(), rtol=1e-5)
  acc = (np.asarray(logits).argmax(-1) == a["targets"]).mean()
  np.testing.assert_allclose(metrics["token_accuracy"], acc, rtol=1e-6)
  # Exact match by string comparison of greedily decoded text (cache = recompute is tested in
  # tests/transformers/test_transformers_t5.py).
  tokens, _ = nnx.jit(lambda m: t5.greedy_decode(m, src, 11, start_id=seq2seq.START,
                                                 enc_valid_BS=src != 0))(model)
  exact = [task.decode(row) == iso and seq2seq.END in row.tolist()
           for row, (_, iso) in zip(np.asarray(tokens), task.eval_pairs)]
  assert metrics["exact_match"] == np.mean(exact)


def test_seq2seq_bad_configs_fail_clearly():
  with pytest.raises(ConfigError, match="valid choices: dates"):
    seq2seq.Seq2SeqTask(_with(_t5_config(), dataset="roman"))
  with pytest.raises(ConfigError, match="widht"):
    seq2seq.Seq2SeqTask(_t5_config(widht=3))
  with pytest.raises(ConfigError, match="eval_examples"):
    seq2seq.Seq2SeqTask(_with(_t5_config(), eval_examples=10**6))


def _with(c, **overrides):
  c.update(overrides)
  return c


@pytest.mark.slow
def test_toy_t5_smoke_reaches_its_stated_exact_match(tmp_path, launch):
  proc = launch("toy_t5.py:smoke", tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "summary.json") as f:
    s = json.load(f)
  # Stated in the config docstring: exact-sequence accuracy >= 0.85 on 200 held-out dates
  # (measured 0.895; an untrained model scores 0).
  assert s["finished"] and s["validation_exact_match"] >= 0.85, s
  assert "ok" in (tmp_path / f"samples_step{s['step']}.txt").read_text()


# -- mlm: Shakespeare characters ----------------------------------------------------------


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  """A small deterministic ASCII corpus in a private GENFM_DATA_DIR."""
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(_WORDS, size=rng.integers(3, 9))) + "." for _ in range(400)]
  path = tmp_path / "data" / "shakespeare" / "shakespeare.txt"
  path.parent.mkdir(parents=True)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path / "data"))


def _bert_config(**overrides):
  c = shakespeare_bert.get_config("smoke")
  c.model.update({"max_len": 16, "num_layers": 1, "num_heads": 2, "d_model": 16, "d_ff": 32})
  c.eval_windows = 23
  c.update(overrides)
  return c


def test_mlm_eval_windows_are_masked_once_80_10_10(corpus):
  task = mlm.MaskedLMTask(_bert_config())
  a = task.eval_sources()["validation"].arrays
  val = task.tokenizer.encode(data.load_text("shakespeare", "validation"))
  T = 16
  for w in range(len(a["targets"])):  # targets are the raw text windows
    assert task.decode(a["targets"][w]) in data.load_text("shakespeare", "validation")
  chosen = a["weights"] == 1
  np.testing.assert_array_equal(chosen.sum(1), 2)  # round(0.15 · 16) per window
  np.testing.assert_array_equal(a["inputs"][~chosen], a["targets"][~chosen])
  assert (a["inputs"][chosen] == task.mask_id).mean() > 0.6
  assert len(val) > T and task.mask_id == task.tokenizer.vocab_size
  assert task.model_config.vocab_size == task.mask_id + 1


def test_mlm_eval_metrics_equal_independent_computation(corpus, loop_eval):
  task = mlm.MaskedLMTask(_bert_config())
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  metrics, count = loop_eval(task, model, batch_size=5)  # 5 ∤ 23: a padded last batch
  a = task.eval_sources()["validation"].arrays
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(a["inputs"]))
  w = a["weights"] == 1
  masked = w & (a["inputs"] == task.mask_id)
  assert count == w.sum()
  ce = -np.take_along_axis(_log_softmax(logits), a["targets"][..., None], -1)[..., 0]
  correct = np.asarray(logits).argmax(-1) == a["targets"]
  np.testing.assert_allclose(metrics["loss"], ce[w].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], correct[w].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["mask_accuracy"], correct[masked].mean(), rtol=1e-6)


def test_mlm_training_loss_is_bert_loss_on_freshly_masked_windows(corpus):
  task = mlm.MaskedLMTask(_bert_config())
  model = task.build_model(nnx.Rngs(0))
  batch = task.train_source().get_batch(np.arange(0, 80, 10))
  key = jax.random.key(3)
  loss, metrics = nnx.jit(lambda m, b: task.loss(m, b, key))(model, batch)
  inputs, targets, weights = bert.mask_tokens(key, jnp.asarray(batch["inputs"]),
                                              mask_id=task.mask_id, num_random=task.mask_id)
  logits = nnx.jit(lambda m, x: m(x))(model, inputs)
  np.testing.assert_allclose(loss, bert.mlm_loss(logits, targets, weights), rtol=1e-5)
  assert not np.array_equal(inputs, batch["inputs"])  # the model saw corrupted windows
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_mlm_bad_configs_fail_clearly(corpus):
  with pytest.raises(ConfigError, match="valid choices: shakespeare"):
    mlm.MaskedLMTask(_bert_config(dataset="wiki"))
  with pytest.raises(ConfigError, match="mask_rate"):
    mlm.MaskedLMTask(_bert_config(mask_rate=0.0))
  bad = _bert_config()
  bad.model.norm_placement = "sandwich"
  with pytest.raises(ConfigError, match="valid choices: pre, post"):
    mlm.MaskedLMTask(bad)


@pytest.mark.usefixtures("shakespeare_corpus")
@pytest.mark.slow
def test_shakespeare_bert_smoke_reaches_its_stated_accuracy(tmp_path, launch):
  proc = launch("shakespeare_bert.py:smoke", tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "summary.json") as f:
    s = json.load(f)
  # Stated in the config docstring: >= 0.21 at the [MASK] positions (measured 0.251), above
  # the 0.165 of always answering the most frequent character (space).
  assert s["finished"] and s["validation_mask_accuracy"] >= 0.21, s
