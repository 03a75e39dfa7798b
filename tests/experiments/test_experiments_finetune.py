"""Training loop v2 through the real launcher: fine-tune from a trained run with a frozen part,
resume a fine-tune and a two-model run bitwise after SIGKILL, refuse a mismatched source."""

import hashlib
import json
import os

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow

MLP_ARGS = ("--config.model.hidden=(256,)", "--config.checkpoint_every_steps=20")


def _tree_digest(root) -> dict:
  """{relative path: (size, mtime_ns, sha1)} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns,
                                       hashlib.sha1(open(p, "rb").read()).hexdigest())
  return out


def _dir_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _leaves(tree, prefix):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat
          if jax.tree_util.keystr(p).startswith(prefix)}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, launch):
  """A trained fashion_mlp:smoke run (hidden 256, 60 steps), shared by the tests below."""
  workdir = tmp_path_factory.mktemp("source")
  proc = launch("fashion_mlp.py:smoke", workdir, *MLP_ARGS, "--config.num_train_steps=60",
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_finetune_freezes_the_base_and_never_writes_the_source(tmp_path, launch, source_run,
                                                               checkpoint_state):
  """Only the head trains: the frozen layer ends bit-identical to the source's final weights,
  the head moved, counts are reported, the source workdir is untouched (bytes and mtimes), and
  the fine-tune's checkpoint holds one copy of the base plus the head's Adam moments."""
  before = _tree_digest(source_run)
  proc = launch("fashion_mlp.py:smoke", tmp_path / "ft", *MLP_ARGS,
                f"--config.init_from={source_run}", "--config.trainable=^head/",
                "--config.num_train_steps=80", timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _tree_digest(source_run) == before
  assert f"initialised from {source_run} step 60" in proc.stderr
  assert "(2,570 trainable)" in proc.stderr                        # 256·10 + 10
  s = json.load(open(tmp_path / "ft" / "summary.json"))
  assert s["num_trainable_params"] == 2570 and s["num_params"] == 64 * 256 + 256 + 2570
  assert s["test_accuracy"] >= 0.9, s
  _, src = checkpoint_state(source_run)
  _, ft = checkpoint_state(tmp_path / "ft")
  src_w = _leaves(src["models"]["model"]["params"], "['layers']")
  ft_w = _leaves(ft["models"]["model"]["frozen"], "['layers']")
  assert src_w.keys() == ft_w.keys() and src_w
  for k in src_w:
    np.testing.assert_array_equal(ft_w[k], src_w[k], err_msg=k)
  src_head = _leaves(src["models"]["model"]["params"], "['head']")
  ft_head = _leaves(ft["models"]["model"]["params"], "['head']")
  assert max(np.max(np.abs(ft_head[k] - src_head[k])) for k in src_head) > 1e-4
  # Bytes: base once + head with two moments, vs. the full run's params with two moments.
  base, head = 4 * (64 * 256 + 256), 4 * 2570
  full = _dir_bytes(os.path.join(source_run, "checkpoints", "60"))
  fine = _dir_bytes(os.path.join(tmp_path, "ft", "checkpoints", "80"))
  overhead = full - 3 * (base + head)
  assert fine < overhead + base + 3 * head + 16_384, (fine, full)
  assert fine < 0.6 * full, (fine, full)


def test_finetune_resumes_bitwise_from_its_own_checkpoint(tmp_path, launch, kill_and_resume,
                                                          source_run, checkpoint_state):
  """SIGKILL mid fine-tune and rerun: the result equals an uninterrupted fine-tune bit for bit,
  and the rerun resumes from its own checkpoint (it does not read the source again)."""
  args = (*MLP_ARGS, f"--config.init_from={source_run}", "--config.trainable=^head/",
          "--config.num_train_steps=300", "--config.eval_every_steps=300")
  assert launch("fashion_mlp.py:smoke", tmp_path / "ref", *args, timeout=300).returncode == 0
  killed_at, resumed = kill_and_resume("fashion_mlp.py:smoke", tmp_path / "k", *args,
                                       after_step=40)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from step {killed_at}" in resumed.stderr
  assert "initialised from" not in resumed.stderr
  (sa, a), (sb, b) = checkpoint_state(tmp_path / "ref"), checkpoint_state(tmp_path / "k")
  assert sa == sb == 300
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def test_mismatched_source_is_one_line(tmp_path, launch, source_run):
  proc = launch("fashion_mlp.py:smoke", tmp_path, "--config.model.hidden=(128,)",
                f"--config.init_from={source_run}", timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "has shape [256, 10] in" in proc.stderr and "but [128, 10] in this model" in proc.stderr
  proc = launch("fashion_mlp.py:smoke", tmp_path / "none", f"--config.init_from={tmp_path}/nope")
  assert proc.returncode == 2 and "holds no checkpoint" in proc.stderr, proc.stderr[-2000:]


def test_two_model_task_resumes_bitwise_after_sigkill(tmp_path, launch, kill_and_resume,
                                                      checkpoint_state):
  """gan2d (generator + discriminator, two AdamWs): SIGKILL and rerun equals the uninterrupted
  run bit for bit: both models, both optimizer states, the data position."""
  args = ("--config.num_train_steps=700", "--config.checkpoint_every_steps=50",
          "--config.eval_every_steps=700", "--config.eval.num_samples=200")
  assert launch("toy2d_gan.py:smoke", tmp_path / "ref", *args, timeout=300).returncode == 0
  killed_at, resumed = kill_and_resume("toy2d_gan.py:smoke", tmp_path / "k", *args,
                                       after_step=100)
  assert killed_at < 700 and resumed.returncode == 0, resumed.stderr[-3000:]
  (sa, a), (sb, b) = checkpoint_state(tmp_path / "ref"), checkpoint_state(tmp_path / "k")
  assert sa == sb == 700
  assert set(a["opt_state"]) == {"generator", "discriminator"}
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(l) for l in open(tmp_path / "k" / "metrics.jsonl")]
  train_rows = [r for r in rows if "train_generator/loss" in r]
  assert train_rows and all("train_discriminator/loss" in r for r in train_rows)
  steps = [r["step"] for r in train_rows]
  assert steps == sorted(set(steps))
