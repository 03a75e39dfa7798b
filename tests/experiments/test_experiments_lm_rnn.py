"""The char-level LSTM LM task: its eval windows and count are the GPT task's, its eval metric
equals an independent CE, the model is causal, carried-state sampling equals recomputing the
whole prefix, parameter counts match the formula and the GPT's, bad configs fail in one line,
the smoke config trains through the launcher, and the vanishing-gradient experiment shows the
tanh RNN's gradient decaying faster than the LSTM's."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import rnn_gradients
from genfm.experiments.configs import shakespeare_char, shakespeare_lstm
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import lm, lm_rnn
from genfm.transformers import gpt


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  """A small deterministic play in a private GENFM_DATA_DIR (~12k characters)."""
  rng = np.random.default_rng(0)
  words = ("the", "king", "doth", "love", "thee", "and", "my", "lord", "shall", "not", "O")
  lines = []
  for i in range(400):
    if i % 4 == 0:
      lines.append(str(rng.choice(["HAMLET.", "KING.", "OPHELIA."])))
    lines.append(" ".join(rng.choice(words, size=rng.integers(3, 8))) + ".")
  path = tmp_path / "data" / "shakespeare" / "shakespeare.txt"
  path.parent.mkdir(parents=True)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  monkeypatch.setenv("GENFM_DATA_DIR", str(tmp_path / "data"))


def _config(**model):
  c = shakespeare_lstm.get_config("smoke")
  c.model.update({"context_len": 16, "d_model": 24, **model})
  c.eval_windows, c.sample_new_tokens = 23, 8
  return c


def test_eval_windows_and_metric_match_the_gpt_task_and_an_independent_ce(corpus, loop_eval):
  task = lm_rnn.RNNLanguageModelTask(_config())
  gpt_cfg = shakespeare_char.get_config("smoke")
  gpt_cfg.model.context_len, gpt_cfg.eval_windows, gpt_cfg.sample_new_tokens = 16, 23, 8
  ref = lm.LanguageModelTask(gpt_cfg)
  np.testing.assert_array_equal(task.eval_sources()["validation"].starts,
                                ref.eval_sources()["validation"].starts)
  assert task.eval_tokens == ref.eval_tokens == 23 * 16
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  metrics, count = loop_eval(task, model, batch_size=5)      # 5 ∤ 23: a padded last batch
  windows = np.stack([np.concatenate([w["inputs"], w["targets"][-1:]])
                      for w in task.eval_sources()["validation"]])
  logits = np.asarray(model(jnp.asarray(windows[:, :-1])), np.float64)   # [W, T, V]
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nats = -np.take_along_axis(logp, windows[:, 1:, None], -1).sum()
  assert count == task.eval_tokens
  np.testing.assert_allclose(metrics["loss"], nats / count, rtol=2e-5)


def test_rnn_lm_is_causal_and_carried_sampling_equals_recompute(corpus):
  task = lm_rnn.RNNLanguageModelTask(_config(cell="lstm", num_layers=2))
  model = task.build_model(nnx.Rngs(1))
  model.eval()
  fwd = nnx.jit(lambda m, t: m(t))
  x = jax.random.randint(jax.random.key(0), (2, 10), 0, task.tokenizer.vocab_size)
  y = x.at[:, 7].set((x[:, 7] + 1) % task.tokenizer.vocab_size)
  lx, ly = fwd(model, x), fwd(model, y)
  np.testing.assert_array_equal(lx[:, :7], ly[:, :7])      # t < 7 does not see token 7
  assert float(jnp.max(jnp.abs(lx[:, 7] - ly[:, 7]))) > 1e-4
  out = nnx.jit(lambda m, p: lm_rnn.generate(m, p, 6, key=jax.random.key(0),
                                                temperature=0.0))(model, x[:, :5])
  assert out.shape == (2, 11)
  np.testing.assert_array_equal(out[:, :5], x[:, :5])
  # Greedy from the carry = argmax of a recompute over the whole prefix (the model is causal,
  # so one forward over out[:, :-1] gives every prefix's last logits).
  np.testing.assert_array_equal(out[:, 5:], jnp.argmax(fwd(model, out[:, :-1])[:, 4:], -1))


def test_parameter_counts_match_the_formula_and_the_gpt():
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  c = shakespeare_lstm.get_config()
  cfg = lm_rnn.RNNLMConfig(vocab_size=84, **c.model)
  n = count(jax.eval_shape(lambda: lm_rnn.RNNLM(cfg, rngs=nnx.Rngs(0))))
  D, V = 220, 84
  assert n == lm_rnn.param_count(cfg) == 2 * V * D + V + 2 * 4 * (2 * D * D + D) == 813_204
  g = shakespeare_char.get_config()
  n_gpt = gpt.param_count(gpt.GPTConfig(vocab_size=84, **g.model))
  assert n_gpt == 812_288 and abs(n / n_gpt - 1) < 0.002
  for key in ("batch_size", "learning_rate", "num_train_steps", "eval_windows", "b2"):
    assert c[key] == g[key], key                           # only the model differs
  assert c.model.context_len == g.model.context_len


def test_bad_model_configs_fail_in_one_line(corpus):
  bad = _config()
  bad.model.num_heads = 4
  with pytest.raises(ConfigError, match=r"num_heads.*valid: context_len, cell"):
    lm_rnn.RNNLanguageModelTask(bad)
  with pytest.raises(ConfigError, match="cell must be one of rnn, gru, lstm"):
    lm_rnn.RNNLanguageModelTask(_config(cell="transformer"))
  with pytest.raises(ConfigError, match="context_len=16"):   # prompt + new tokens > the window
    lm_rnn.RNNLanguageModelTask(_config()).prompt_tokens("HAMLET. the king", 8)


@pytest.mark.usefixtures("shakespeare_corpus")
def test_smoke_config_reaches_its_stated_loss(tmp_path, launch):
  proc = launch("shakespeare_lstm.py:smoke", tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  # Stated in the config: <= 2.6 nats/char (measured 2.357); the untrained model reads ln 84.
  assert s["finished"] and s["num_params"] == 76_884 and s["validation_loss"] <= 2.6, s
  assert np.log(84) > 4.4
  assert (tmp_path / "samples_step300.txt").read_text().count("HAMLET.\n") == 2


def test_tanh_rnn_gradient_vanishes_faster_than_the_lstms(tmp_path):
  res = rnn_gradients.main([f"--workdir={tmp_path}", "--steps=12", "--in_features=4",
                            "--hidden=8", "--batch=2", "--seeds=1"])
  assert (tmp_path / "rnn_gradients.png").stat().st_size > 0
  saved = json.loads((tmp_path / "rnn_gradients.json").read_text())["curves"]
  rnn_c, lstm_c = saved["tanh RNN"], saved["LSTM (b_f = 1)"]
  assert len(rnn_c["norms"]) == 12 and rnn_c == res["tanh RNN"]
  assert rnn_c["decay_per_step"] < lstm_c["decay_per_step"] < 1.0
  # Ratio last / first lag: the RNN keeps less of its gradient over 11 steps than the LSTM.
  keep = lambda c: c["norms"][-1] / c["norms"][0]
  assert keep(rnn_c) < keep(lstm_c)
  assert lstm_c["decay_per_step"] > saved["LSTM (b_f = 0)"]["decay_per_step"]
