"""Launcher reliability: save before evaluating, one writer per workdir, the config recorded only
once valid, a finished run's results kept on rerun, and one line for every mistake."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genfm.experiments import run, train
from genfm.experiments.configs import fashion_mlp
from genfm.experiments.errors import CheckpointError, ConfigError, NonFiniteLossError, UserError
from genfm.experiments.tasks import classify

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "experiments", "configs")


def _smoke(**overrides):
  c = fashion_mlp.get_config("smoke")
  c.model.hidden = (32,)
  c.update(overrides)
  return c


def _ckpt_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_a_failing_evaluation_costs_no_finished_step(tmp_path, monkeypatch):
  """Evaluation and checkpoint fall on the same step; the evaluation fails: that step's
  checkpoint is on disk anyway (it is written first), and the rerun resumes from it."""
  class FailingEval(classify.ClassificationTask):
    def after_eval(self, model, workdir, step):
      raise ConfigError("evaluation failed on purpose")

  monkeypatch.setattr(train, "get_task", FailingEval)
  c = _smoke(num_train_steps=200, eval_every_steps=100, checkpoint_every_steps=100)
  with pytest.raises(ConfigError, match="on purpose"):
    train.train_and_evaluate(c, str(tmp_path))
  assert _ckpt_steps(tmp_path) == [100]
  assert not os.path.exists(tmp_path / ".lock")          # released on the way out


def test_config_is_recorded_only_once_valid(tmp_path):
  """A typo in the data set fails before anything is recorded, so the corrected command is not
  refused as 'a different config'."""
  with pytest.raises(UserError, match="digitz"):
    train.train_and_evaluate(_smoke(dataset="digitz"), str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")
  s = train.train_and_evaluate(_smoke(num_train_steps=5, eval_every_steps=5,
                                      checkpoint_every_steps=5), str(tmp_path))
  assert s["finished"] and os.path.exists(tmp_path / "config.json")


def test_rerunning_a_finished_run_keeps_its_results(tmp_path):
  c = _smoke(num_train_steps=20, eval_every_steps=20, checkpoint_every_steps=20)
  first = train.train_and_evaluate(c, str(tmp_path))
  before = {f: open(tmp_path / f, "rb").read() for f in ("summary.json", "metrics.jsonl")}
  again = train.train_and_evaluate(c, str(tmp_path))
  assert again == first and "test_accuracy" in again
  assert before == {f: open(tmp_path / f, "rb").read() for f in before}
  # Killed after its last checkpoint, before the summary: the rerun evaluates once and writes it.
  os.remove(tmp_path / "summary.json")
  third = train.train_and_evaluate(c, str(tmp_path))
  assert third["test_accuracy"] == first["test_accuracy"] and third["step"] == 20


def test_truncated_metrics_line_is_dropped_on_resume(tmp_path):
  c = _smoke(num_train_steps=20, eval_every_steps=20, checkpoint_every_steps=10,
             log_every_steps=5)
  train.train_and_evaluate(c, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 25, "train_lo')                # what a kill mid-write leaves
  c.num_train_steps = 30
  s = train.train_and_evaluate(c, str(tmp_path))
  assert s["finished"] and s["step"] == 30
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train_loss" in r] == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("overrides,error,needle", [
    (dict(learning_rate=-0.1), ConfigError, "learning_rate must be a number ≥ 0"),
    (dict(batch_size=4096), ConfigError, r"larger than the training set \(1500 examples\)"),
    (dict(optimizer="adamw", b1=1.0), ConfigError, r"b1 \(Adam's β₁\)"),
    (dict(learning_rate=1e30, num_train_steps=8, checkpoint_every_steps=8, log_every_steps=8,
          eval_every_steps=8),
     NonFiniteLossError, "No checkpoint was written before it"),
])
def test_silent_mistakes_are_refused_in_one_line(tmp_path, overrides, error, needle):
  with pytest.raises(error, match=needle):
    train.train_and_evaluate(_smoke(**overrides), str(tmp_path))


def test_workdir_faults_are_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(CheckpointError, match="is a file, not a directory"):
    train.train_and_evaluate(_smoke(), str(tmp_path / "file"))
  with pytest.raises(CheckpointError, match="cannot be created"):
    train.train_and_evaluate(_smoke(), str(tmp_path / "file" / "sub"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text('{"task": "clas')
  with pytest.raises(CheckpointError, match="config.json cannot be read"):
    train.train_and_evaluate(_smoke(), str(tmp_path / "bad"))


def test_storage_errors_print_one_line_that_says_what_to_do():
  msg = run.one_line(OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints"))
  assert "No space left on device (/runs/x/checkpoints)" in msg and "rerun the same" in msg
  assert run.one_line(ConfigError("plain")) == "plain"


def test_every_config_has_a_smoke_variant():
  import importlib  # pylint: disable=g-import-not-at-top
  names = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py") and f != "common.py")
  assert len(names) >= 16
  for name in names:
    c = importlib.import_module(f"genfm.experiments.configs.{name}").get_config("smoke")
    assert c.num_train_steps <= 3000, (name, c.num_train_steps)


@pytest.mark.slow
def test_second_launcher_is_refused_and_a_stale_lock_does_not_block(tmp_path, launch):
  """While a run lives, a second launcher on its workdir exits 2 in one line; after the first
  is SIGKILLed (its lock left behind), the rerun resumes."""
  args = ("--config.num_train_steps=100000", "--config.checkpoint_every_steps=50")
  cmd = [sys.executable, "-m", "genfm.experiments.run", f"--config={CONFIGS}/fashion_mlp.py:smoke",
         f"--workdir={tmp_path}", *args]
  first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  deadline = time.time() + 120
  while time.time() < deadline and not _ckpt_steps(tmp_path):
    time.sleep(0.05)
  assert first.poll() is None and (tmp_path / ".lock").exists()
  second = launch("fashion_mlp.py:smoke", tmp_path, *args, timeout=120)
  assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
  assert "is in use by another genfm run" in second.stderr
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert (tmp_path / ".lock").exists()                   # a kill leaves its lock behind
  killed_at = _ckpt_steps(tmp_path)[-1]
  resumed = launch("fashion_mlp.py:smoke", tmp_path, "--config.checkpoint_every_steps=50",
                   f"--config.num_train_steps={killed_at + 50}", timeout=120)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming from step {killed_at}" in resumed.stderr and "stale lock" in resumed.stderr
  assert "the LR schedule is recomputed" in resumed.stderr
  assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("key,value,needle", [
    ("sample_temperature", -1.0, "temperature must be >= 0"),
    ("num_samples", 0, "num_samples must be a positive integer"),
    ("sample_top_k", 0, "top_k must be in 1..84"),
])
def test_sampling_settings_are_checked_before_the_first_step(shakespeare_corpus, key, value,
                                                             needle):
  """Refused when the task is built (before any step), not at the first evaluation."""
  from genfm.experiments.configs import shakespeare_char  # pylint: disable=g-import-not-at-top
  from genfm.experiments.tasks import get_task  # pylint: disable=g-import-not-at-top
  c = shakespeare_char.get_config("smoke")
  c[key] = value
  with pytest.raises(ConfigError, match=needle):
    get_task(c)
