"""Multi-process runs: the launcher's jax.distributed flags (one-line errors), and two processes
on loopback (gloo CPU collectives) training the same run as one process with the same global
batch, writing from process 0 only, and resuming after both are killed.

The launcher test budget (~60 s CPU) buys five launcher processes: the one-process reference
and two two-process launches (killed after a checkpoint, then rerun), so one test checks the
equivalence at every step before the kill, the resume, and every step after it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from genfm.experiments import distributed
from genfm.experiments.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = [sys.executable, "-m", "genfm.experiments.run"]
STEPS = 60
# fashion_mlp:smoke (sklearn digits, MLP 64-128-10 whose dropout module carries an RNG key in
# the state, global batch 64): 60 steps, every step logged, a checkpoint every 10, one eval at
# the end.
RUN = ("--config=experiments/configs/fashion_mlp.py:smoke", f"--config.num_train_steps={STEPS}",
       "--config.log_every_steps=1", "--config.checkpoint_every_steps=10",
       f"--config.eval_every_steps={STEPS}")


@pytest.mark.parametrize("flags,needle", [
    (dict(num_processes=2, process_id=0),
     "--num_processes=2 needs --coordinator_address=HOST:PORT"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2),
     "go together .* missing --process_id"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2),
     r"--process_id=2 is outside \[0, 2\)"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1),
     r"--process_id=-1 is outside \[0, 2\)"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0),
     "--num_processes must be >= 1"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "is not HOST:PORT"),
    (dict(coordinator_address="127.0.0.1:99999", num_processes=2, process_id=0),
     "is not HOST:PORT"),
    (dict(coordinator_address="http://h:1", num_processes=2, process_id=0), "is not HOST:PORT"),
])
def test_bad_flags_are_one_line_config_errors(flags, needle):
  with pytest.raises(ConfigError, match=needle) as e:
    distributed.initialize(**flags)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("address", ["127.0.0.1:12355", "node-7.cluster:1", "[::1]:65535"])
def test_initialize_passes_the_three_values_to_jax(address, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert distributed.initialize(address, 3, 2) is True
  assert calls == [dict(coordinator_address=address, num_processes=3, process_id=2)]
  assert jax.config.jax_cpu_collectives_implementation == "gloo"
  assert distributed.initialize(auto=True) and calls[-1] == {}   # --distributed: auto-detect
  assert distributed.initialize() is False and len(calls) == 2   # no flags: single process


def test_unreachable_coordinator_is_one_line(monkeypatch):
  def fail(**kw):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\n  more detail")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(ConfigError, match="could not connect to the coordinator at h:1: "
                     "DEADLINE_EXCEEDED: Barrier timed out more detail") as e:
    distributed.initialize("h:1", 2, 1)
  assert "\n" not in str(e.value)


def test_launcher_prints_the_flag_error_in_one_line_and_exits_2(tmp_path):
  proc = subprocess.run([*LAUNCHER, *RUN, f"--workdir={tmp_path}", "--num_processes=2",
                         "--process_id=1"], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env=_env())
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == ("genfm: error: --num_processes=2 needs "
                                 "--coordinator_address=HOST:PORT, the address of process 0 that "
                                 "every process can reach (e.g. 127.0.0.1:12355 when all run on "
                                 "one machine)")
  assert not os.listdir(tmp_path)                # refused before anything was written


def test_console_script_help_lists_the_multiprocess_flags():
  script = os.path.join(os.path.dirname(sys.executable), "genfm-run")
  if not os.path.exists(script):
    pytest.skip("genfm-run is not installed next to this python")
  out = subprocess.run([script, "--helpshort"], capture_output=True, text=True, timeout=60,
                       env=_env()).stdout
  for flag in ("--coordinator_address", "--num_processes", "--process_id", "--[no]distributed"):
    assert f"  {flag}:" in out, out


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)                     # one CPU device per process
  return env


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, num_processes: int) -> list[subprocess.Popen]:
  """The launcher as `num_processes` processes on loopback (one process: no flags), logs in
  workdir/../<name>.p<i>.log."""
  port, procs = _free_port(), []
  for i in range(num_processes):
    extra = ([] if num_processes == 1 else [f"--coordinator_address=127.0.0.1:{port}",
                                            f"--num_processes={num_processes}",
                                            f"--process_id={i}"])
    log = open(f"{workdir}.p{i}.log", "a")
    procs.append(subprocess.Popen([*LAUNCHER, *RUN, f"--workdir={workdir}", *extra], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT, text=True, env=_env()))
    log.close()
  return procs


def _log(workdir, i: int) -> str:
  with open(f"{workdir}.p{i}.log") as f:
    return f.read()


def _wait(workdir, procs, timeout=150) -> None:
  """Waits for every process; a hang or a failure kills the rest and shows the logs' tails."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  assert codes == [0] * len(procs), "\n".join(
      f"--- process {i} exit {c}:\n{_log(workdir, i)[-3000:]}" for i, c in enumerate(codes))


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _train_losses(workdir) -> dict[int, float]:
  rows = [r for r in _metrics(workdir) if "train_loss" in r]
  steps = [r["step"] for r in rows]
  assert steps == list(range(1, STEPS + 1)), steps   # each step once: one writer
  return {r["step"]: r["train_loss"] for r in rows}


def _assert_same_run(workdir, reference) -> None:
  got, want = _train_losses(workdir), _train_losses(reference)
  for step in want:
    assert abs(got[step] - want[step]) <= 1e-5, (step, got[step], want[step])
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(reference, "summary.json")) as f:
    expected = json.load(f)
  assert summary["step"] == STEPS and summary["finished"]
  assert summary["device_count"] == 2 and expected["device_count"] == 1
  assert {"test_loss", "test_accuracy"} <= set(expected)
  for key, value in expected.items():   # the final eval metrics
    if isinstance(value, float) and key != "session_seconds":
      assert abs(summary[key] - value) <= 1e-5 * max(1.0, abs(value)), (key, summary[key], value)


@pytest.mark.slow   # five launcher processes: ~60 s CPU, ~35-70 s wall on the shared 2 cores
def test_two_processes_killed_and_rerun_train_the_one_process_run(tmp_path):
  reference, workdir = tmp_path / "one", tmp_path / "two"
  t0 = time.time()
  _wait(reference, _start(reference, 1))
  t1 = time.time()
  procs = _start(workdir, 2)
  ckpts, deadline = workdir / "checkpoints", time.time() + 150
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      break
    time.sleep(0.01)
  alive = [p.poll() is None for p in procs]
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert all(alive), "\n".join(f"--- process {i} ended before the kill:\n"
                                f"{_log(workdir, i)[-3000:]}" for i in range(2) if not alive[i])
  killed_at = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert killed_at < STEPS
  t2 = time.time()
  _wait(workdir, _start(workdir, 2))             # the same two commands again
  t3 = time.time()
  print(f"wall: one process {t1 - t0:.1f} s, two processes to the kill {t2 - t1:.1f} s, "
        f"two processes resumed to the end {t3 - t2:.1f} s")
  assert f"resuming from step {killed_at}" in _log(workdir, 0)
  # Every logged step (before and after the kill) and the final eval equal the one-process run.
  _assert_same_run(workdir, reference)
  # Process 0 writes metrics (one line a step, checked above), figures and the summary;
  # process 1 only trains and checkpoints.
  assert len(os.listdir(workdir / "tb")) == 2      # one event file per session, process 0's
  assert os.path.exists(workdir / "loss_curves.png")
  assert "done at step" in _log(workdir, 0) and "done at step" not in _log(workdir, 1)
  assert max(int(d) for d in os.listdir(ckpts) if d.isdigit()) == STEPS
