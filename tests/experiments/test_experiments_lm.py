"""The language-model task: fast encoders equal the tokenizers, tokens round-trip through the
task, the eval metric equals an independent mean CE (and nats/char for BPE), MoE losses enter
the objective, samples are written, bad prompts fail clearly, and the smoke config trains."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments.configs import shakespeare_bpe, shakespeare_char
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import lm
from genfm.transformers.tokenizer import BPETokenizer, CharTokenizer

_WORDS = ("the", "king", "doth", "love", "thee", "and", "my", "lord", "shall", "not", "be",
          "so", "sweet", "a", "night", "O", "what", "is", "in", "name", "aaa", "fair")


def _corpus(seed: int = 0, n_lines: int = 600) -> str:
  """A deterministic ASCII play: speaker lines and lines of words (~20k characters)."""
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n_lines):
    if i % 4 == 0:
      lines.append(rng.choice(["HAMLET.", "KING.", "OPHELIA."]))
    lines.append(" ".join(rng.choice(_WORDS, size=rng.integers(3, 9))) + rng.choice([",", ".", "!"]))
  return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  """A small corpus in a private GENFM_DATA_DIR; returns (train text, validation text)."""
  path = tmp_path / "data" / "shakespeare" / "shakespeare.txt"
  path.parent.mkdir(parents=True)
  path.write_text(_corpus(), encoding="utf-8")
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path / "data"))
  return data.load_text("shakespeare", "train"), data.load_text("shakespeare", "validation")


def _char_config(**overrides):
  c = shakespeare_char.get_config("smoke")
  c.model.update({"context_len": 16, "num_layers": 1, "num_heads": 2, "d_model": 32})
  c.eval_windows, c.sample_new_tokens, c.num_samples = 23, 8, 2
  c.update(overrides)
  return c


def _bpe_config(tmp_path, **model):
  c = shakespeare_bpe.get_config("smoke")
  c.vocab_size, c.bpe_train_chars, c.bpe_cache_dir = 280, 3000, str(tmp_path / "bpe")
  c.model.update({"context_len": 16, "num_layers": 1, "num_heads": 2, "d_model": 32, **model})
  c.eval_windows, c.sample_new_tokens = 17, 4
  return c


# -- encoders ------------------------------------------------------------------------------


def test_bpe_encode_equals_tokenizer_encode():
  toy = BPETokenizer.train("aaabdaaabac", 259)  # the classic example, 3 merges
  assert lm.bpe_encode(toy, "aaabdaaabac").tolist() == [258, 100, 258, 97, 99]
  tok = BPETokenizer.train(_corpus(1)[:3000], 300)
  # Runs of one byte (overlapping pairs), unseen words, non-ASCII (multi-byte) characters.
  for s in (_corpus(2)[:1500], "aaaaaaa aaaa a", "naïve — ünïcödé ✓ aaa", "x"):
    assert lm.bpe_encode(tok, s).tolist() == tok.encode(s), s


def test_char_encode_equals_tokenizer_encode_and_rejects_unknown():
  text = _corpus(3)[:2000]
  tok = CharTokenizer.train(text)
  ids = lm.char_encode(tok, text)
  assert ids.dtype == np.int32 and ids.tolist() == tok.encode(text)
  with pytest.raises(ValueError, match="not in the vocabulary"):
    lm.char_encode(tok, "HAMLET§")


def test_eval_windows_are_disjoint_evenly_spread_and_in_range():
  starts = lm.eval_window_starts(1000, 16, 10)
  assert len(starts) == 10 and starts[0] == 0
  assert np.all(np.diff(starts) >= 16)                     # target sets are disjoint
  assert starts[-1] + 16 + 1 <= 1000                        # last window fits
  assert starts[-1] >= 1000 - 2 * 16 - 1                    # and reaches the end of the split
  assert len(lm.eval_window_starts(100, 16, 50)) == 99 // 16  # all slots when fewer exist
  with pytest.raises(ConfigError, match="fewer than one window"):
    lm.eval_window_starts(10, 16, 5)


# -- the task ------------------------------------------------------------------------------


def test_tokens_round_trip_through_the_task(corpus, tmp_path):
  train_text, val_text = corpus
  for config in (_char_config(), _bpe_config(tmp_path)):
    task = lm.LanguageModelTask(config)
    assert task.decode(task.train_tokens) == train_text
    assert task.decode(task.encode(val_text)) == val_text
    src = task.train_source()
    T = task.model_config.context_len
    rec = src[37]
    chex.assert_shape([rec["inputs"], rec["targets"]], (T,))
    np.testing.assert_array_equal(rec["targets"][:-1], rec["inputs"][1:])  # shifted by one
    assert task.decode(rec["inputs"]) in train_text
  char = lm.LanguageModelTask(_char_config())
  assert char.decode(char.train_source()[100]["inputs"]) == train_text[100:116]  # 1 id = 1 char
  assert os.listdir(tmp_path / "bpe")  # the trained merges were cached
  again = lm.LanguageModelTask(_bpe_config(tmp_path))  # loaded from the cache: same merges
  assert again.tokenizer.merges == lm.LanguageModelTask(_bpe_config(tmp_path)).tokenizer.merges


def _numpy_ce(model, windows_WT1):
  """Σ −log softmax(logits)[target] in float64, one window at a time."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))  # one window: [1, T] → [1, T, V]
  total = 0.0
  for w in windows_WT1:
    logits_TV = np.asarray(forward(state, jnp.asarray(w[None, :-1])), np.float64)[0]
    z_TV = logits_TV - logits_TV.max(-1, keepdims=True)
    logp_TV = z_TV - np.log(np.exp(z_TV).sum(-1, keepdims=True))
    total -= logp_TV[np.arange(len(w) - 1), w[1:]].sum()
  return total


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_eval_metric_equals_independent_mean_ce(corpus, tmp_path, kind, loop_eval):
  _, val_text = corpus
  task = lm.LanguageModelTask(_char_config() if kind == "char" else _bpe_config(tmp_path))
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  T = task.model_config.context_len
  metrics, count = loop_eval(task, model, batch_size=5)  # 5 ∤ n: a padded last batch
  # Independent windows: encode the validation text afresh; slot w holds tokens [w·T, w·T + T].
  val_ids = np.asarray(task.tokenizer.encode(val_text))
  slots = (len(val_ids) - 1) // T
  chosen = sorted({int(round(x)) for x in np.linspace(0, slots - 1, task.config.eval_windows)})
  windows = np.stack([val_ids[s * T:s * T + T + 1] for s in chosen])
  assert count == windows.shape[0] * T == task.eval_tokens
  nats = _numpy_ce(model, windows)
  np.testing.assert_allclose(metrics["loss"], nats / count, rtol=2e-5)
  if kind == "bpe":  # nats per character of the same targets (ASCII text: 1 byte = 1 char)
    chars = sum(len(task.decode(w[1:])) for w in windows)
    assert chars > count                                   # BPE tokens hold several chars
    np.testing.assert_allclose(metrics["loss_per_char"], nats / chars, rtol=2e-5)
  else:
    assert "loss_per_char" not in metrics


def test_moe_loss_adds_weighted_balance_and_z_losses(corpus, tmp_path):
  task = lm.LanguageModelTask(_bpe_config(tmp_path, num_experts=4, top_k=2, d_ff=64))
  task.config.load_balance_weight, task.config.router_z_weight = 0.5, 0.25
  model = task.build_model(nnx.Rngs(0))
  batch = data.WindowSource(task.train_tokens, 16).get_batch(np.arange(0, 80, 10))
  loss, metrics = nnx.jit(lambda m, b: task.loss(m, b, None))(model, batch)
  logits_BTV, aux = nnx.jit(lambda m, x: m(x, return_aux=True))(model, batch["inputs"])
  # Routing capacity depends on the tokens routed together, so the reference CE is taken from
  # the same batched forward pass, in float64.
  z_BTV = np.asarray(logits_BTV, np.float64)
  z_BTV -= z_BTV.max(-1, keepdims=True)
  logp_BTV = z_BTV - np.log(np.exp(z_BTV).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp_BTV, batch["targets"][..., None], -1).mean()
  np.testing.assert_allclose(metrics["ce"], ce, rtol=2e-5)
  np.testing.assert_allclose(loss, ce + 0.5 * aux["load_balance"] + 0.25 * aux["router_z"],
                             rtol=2e-5)
  assert 1.0 <= float(metrics["load_balance"]) <= 4.0     # 1 at balance, E when collapsed
  dense = lm.LanguageModelTask(_bpe_config(tmp_path))
  assert set(dense.loss(dense.build_model(nnx.Rngs(0)), batch, None)[1]) == {"ce"}


def test_after_eval_writes_deterministic_samples_from_the_prompt(corpus, tmp_path):
  task = lm.LanguageModelTask(_char_config())
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  extra = task.after_eval(model, str(tmp_path), 7)
  assert extra == {"validation_chars_per_token": 1.0}
  first = (tmp_path / "samples_step7.txt").read_text()
  samples = first.split("-" * 40 + "\n")[1:]
  assert len(samples) == 2 and all(s.startswith("HAMLET.\n") for s in samples)
  assert all(len(s.rstrip("\n")) >= len("HAMLET.\n") + 8 - 1 for s in samples)
  task.after_eval(model, str(tmp_path), 7)
  assert (tmp_path / "samples_step7.txt").read_text() == first  # key = fold_in(seed, step)


def test_bad_prompts_and_configs_give_clear_errors(corpus):
  with pytest.raises(ConfigError, match=r"cannot be encoded.*'§'"):
    lm.LanguageModelTask(_char_config(sample_prompt="HAMLET§"))
  with pytest.raises(ConfigError, match="context_len=16"):
    lm.LanguageModelTask(_char_config(sample_prompt="HAMLET. the king"))  # 16 + 8 > 16
  with pytest.raises(ConfigError, match="valid choices: bpe, char"):
    lm.LanguageModelTask(_char_config(tokenizer="word"))
  bad_model = _char_config()
  bad_model.model.num_kv_heads = 3
  with pytest.raises(ConfigError, match="not divisible"):
    lm.LanguageModelTask(bad_model)
  bad_key = _char_config()
  bad_key.model.widht = 3
  with pytest.raises(ConfigError, match="widht"):
    lm.LanguageModelTask(bad_key)


def test_config_parameter_counts_match_their_docstrings():
  from genfm.transformers import gpt
  counts = {}
  for mod, variant in ((shakespeare_char, ""), (shakespeare_char, "modern"),
                       (shakespeare_char, "big"), (shakespeare_char, "big_gpu"),
                       (shakespeare_bpe, ""), (shakespeare_bpe, "moe")):
    c = mod.get_config(variant)
    vocab = 84 if c.tokenizer == "char" else c.vocab_size
    cfg = gpt.GPTConfig(vocab_size=vocab, **c.model)
    counts[mod.__name__.split(".")[-1] + ":" + variant] = (gpt.param_count(cfg),
                                                           gpt.param_count(cfg, active=True))
    shapes = jax.eval_shape(lambda: nnx.state(gpt.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == gpt.param_count(cfg)
  assert counts["shakespeare_char:"][0] == 812_288
  assert counts["shakespeare_char:modern"][0] == 811_648          # equal within 0.1%
  assert counts["shakespeare_char:big"][0] == counts["shakespeare_char:big_gpu"][0] == 10_778_112
  assert counts["shakespeare_bpe:"][0] == 867_072
  assert counts["shakespeare_bpe:moe"] == (1_390_848, 866_560)     # active = dense within 0.1%


# -- through the launcher ------------------------------------------------------------------


@pytest.mark.usefixtures("shakespeare_corpus")
@pytest.mark.slow
def test_char_smoke_config_reaches_its_stated_loss(tmp_path, launch):
  proc = launch("shakespeare_char.py:smoke", tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "summary.json") as f:
    s = json.load(f)
  # Stated in the config: <= 2.6 nats/char, far below the uniform ln 84 = 4.43.
  assert s["finished"] and s["validation_loss"] <= 2.6, s
  sample = (tmp_path / "samples_step300.txt").read_text()
  assert sample.count("HAMLET.\n") == 2


@pytest.mark.usefixtures("shakespeare_corpus")
def test_launcher_reports_a_bad_prompt_in_one_line(tmp_path, launch):
  proc = launch("shakespeare_char.py:smoke", tmp_path, "--config.sample_prompt=HAMLET§", timeout=600)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "sample_prompt" in proc.stderr and "'§'" in proc.stderr


def test_bench_fused_decode_equals_sampling_generate():
  from genfm.experiments import bench_lm
  from genfm.transformers import gpt, sampling
  cfg = gpt.GPTConfig(vocab_size=11, context_len=12, num_layers=1, num_heads=2, d_model=16)
  model = gpt.GPT(cfg, rngs=nnx.Rngs(3))
  model.eval()
  prompt_BT = jax.random.randint(jax.random.key(4), (2, 4), 0, 11)
  want = sampling.generate(model, prompt_BT, 8, use_cache=False)[0]
  graphdef, state = nnx.split(model)
  for use_cache in (True, False):
    got = bench_lm.fused_greedy(graphdef, state, prompt_BT, 8, use_cache)
    chex.assert_shape(got, (2, 12))
    np.testing.assert_array_equal(got, want)
