"""The launcher end to end: smoke configs reach their numbers, outputs are written, runs resume
bitwise after SIGKILL, and every kind of bad input gives one clear line (exit status 2)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "experiments", "configs")


def launch(config, workdir, *overrides, wait=True, env=None):
  cmd = [sys.executable, "-m", "genfm.experiments.run", f"--config={CONFIGS}/{config}",
         f"--workdir={workdir}", *overrides]
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  if not wait:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env)
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full_env)


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def final_state(workdir):
  """The params/rest/opt_state arrays of the newest checkpoint, as numpy."""
  ckpts = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  return step, ocp.PyTreeCheckpointer().restore(os.path.join(ckpts, str(step), "state"))


def assert_one_line_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for n in needles:
    assert n in proc.stderr, (n, proc.stderr[-2000:])


@pytest.mark.parametrize("config", ["fashion_mlp.py:smoke", "fashion_lenet.py:smoke",
                                    "fashion_resnet.py:smoke"])
def test_smoke_config_reaches_target_and_writes_outputs(tmp_path, config):
  proc = launch(config, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = summary(tmp_path)
  assert s["finished"] and s["test_accuracy"] >= 0.95, s          # stated in each config
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all("step" in r for r in rows)
  assert any("train_loss" in r for r in rows) and any("test_accuracy" in r for r in rows)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
  assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "steps/s" in proc.stderr and "ETA" in proc.stderr                # progress line


def test_sigkill_mid_run_resumes_bitwise(tmp_path, kill_and_resume):
  """Kill -9 after a checkpoint, rerun the same command: the final state equals an
  uninterrupted run bit for bit (dropout RNG, BatchNorm statistics, Adam moments, data order,
  the parameter EMA)."""
  args = ("--config.num_train_steps=600", "--config.checkpoint_every_steps=50",
          "--config.eval_every_steps=600", "--config.model.dropout=0.1",
          "--config.model.batch_norm=True", "--config.ema_decay=0.99")
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  assert launch("fashion_mlp.py:smoke", ref, *args).returncode == 0
  killed_at, resumed = kill_and_resume("fashion_mlp.py:smoke", killed, *args, after_step=100)
  assert killed_at < 600
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from step {killed_at}" in resumed.stderr
  (step_a, a), (step_b, b) = final_state(ref), final_state(killed)
  assert step_a == step_b == 600
  assert "ema_params" in a and "ema_params" in b
  flat_a, flat_b = jax_leaves(a), jax_leaves(b)
  assert len(flat_a) == len(flat_b) > 0
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y)
  # The resumed run's metrics log has no duplicated steps.
  steps = [json.loads(l)["step"] for l in open(killed / "metrics.jsonl") if "train_loss" in l]
  assert steps == sorted(set(steps))


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sigterm_checkpoints_at_the_current_step(tmp_path):
  proc = launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=100000",
                "--config.checkpoint_every_steps=100000", wait=False)
  deadline = time.time() + 120
  while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
    time.sleep(0.05)
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  step, _ = final_state(tmp_path)
  assert 0 < step < 100000
  assert "stopped by signal" in err


def test_unknown_config_key_is_one_line(tmp_path):
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path, "--config.lerning_rate=0.1"),
                        "lerning_rate", "Valid keys", "learning_rate")


def test_unknown_choices_name_the_valid_ones(tmp_path):
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path / "a", "--config.model.name=vgg"),
                        "'vgg'", "lenet, mlp, resnet")
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path / "b", "--config.optimizer=lion"),
                        "'lion'", "adamw")
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path / "c", "--config.dataset=imagenet"),
                        "'imagenet'", "fashion_mnist")
  assert_one_line_error(launch("fashion_mlp.py:bogus", tmp_path / "d"), "'bogus'", "smoke")
  assert_one_line_error(launch("no_such_config.py", tmp_path / "e"), "no config file")


def test_workdir_of_another_config_is_refused(tmp_path):
  assert launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=20").returncode == 0
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path, "--config.seed=1"),
                        "different config", "seed: 0 → 1", "new --workdir")
  # Extending the run is allowed and resumes.
  proc = launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=40")
  assert proc.returncode == 0 and "resuming from step 20" in proc.stderr


def test_corrupt_checkpoint_is_one_line(tmp_path):
  assert launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=20").returncode == 0
  state_dir = tmp_path / "checkpoints" / "20" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=40"),
                        "could not be read", "corrupt", "fresh --workdir")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  assert launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=20").returncode == 0
  _, good = final_state(tmp_path)
  proc = launch("fashion_mlp.py:smoke", tmp_path, "--config.num_train_steps=60",
                "--config.learning_rate=1e30")
  assert_one_line_error(proc, "loss became", "last good checkpoint (step 20)")
  step, kept = final_state(tmp_path)
  assert step == 20
  for x, y in zip(jax_leaves(good), jax_leaves(kept)):
    np.testing.assert_array_equal(x, y)


def test_data_parallel_over_four_cpu_devices(tmp_path):
  proc = launch("fashion_mlp.py:smoke", tmp_path,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = summary(tmp_path)
  assert s["device_count"] == 4 and s["test_accuracy"] >= 0.95, s
  four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path / "odd", "--config.batch_size=66",
                               env=four),
                        "config.batch_size=66 is not divisible by the mesh's batch axes data × "
                        "fsdp = 4 × 1 = 4; use a multiple of 4")
  assert_one_line_error(launch("fashion_mlp.py:smoke", tmp_path / "mesh", "--config.mesh.model=3",
                               env=four),
                        "the fixed axes multiply to 3, which does not divide the 4 devices")
