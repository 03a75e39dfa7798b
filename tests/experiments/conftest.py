"""Shared fixtures for the experiment tests."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments.data import text as text_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "experiments", "configs")


def _loop_eval(task, model, batch_size):
  """The launcher's evaluation: padded batches, jitted per-batch sums, divided by the count."""
  step = jax.jit(lambda g, s, b: task.eval_metrics(nnx.merge(g, s), b))
  graphdef, state = nnx.split(model)
  sums = None
  for batch in data.make_iterator(task.eval_sources()["validation"], batch_size=batch_size,
                                  seed=0, shuffle=False, num_epochs=1, drop_remainder=False,
                                  pad_remainder=True):
    m = step(graphdef, state, batch)
    sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
  sums = jax.device_get(sums)
  count = sums.pop("count")
  return {k: float(v / count) for k, v in sums.items()}, float(count)


@pytest.fixture
def loop_eval():
  """`loop_eval(task, model, batch_size) -> (metrics, count)` over the validation source."""
  return _loop_eval


def _launch(config, workdir, *overrides, timeout=900):
  """Runs `python -m genfm.experiments.run --config=experiments/configs/<config>` on CPU in a
  subprocess, as a researcher would; returns the CompletedProcess (stdout/stderr captured)."""
  cmd = [sys.executable, "-m", "genfm.experiments.run", f"--config={CONFIGS}/{config}",
         f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def final_state(workdir):
  """(step, state tree as numpy) of the newest checkpoint in `workdir`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpts = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  return step, ocp.PyTreeCheckpointer().restore(os.path.join(ckpts, str(step), "state"))


def _kill_and_resume(config, workdir, *overrides, after_step: int):
  """Starts the run, SIGKILLs it once a checkpoint at step ≥ `after_step` exists, and reruns the
  same command to the end. Returns (step killed at, the resumed CompletedProcess)."""
  cmd = [sys.executable, "-m", "genfm.experiments.run", f"--config={CONFIGS}/{config}",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  ckpts, deadline = os.path.join(workdir, "checkpoints"), time.time() + 180
  while time.time() < deadline:
    if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= after_step
                                    for d in os.listdir(ckpts)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "run finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  return killed_at, _launch(config, workdir, *overrides, timeout=300)


@pytest.fixture(scope="session")
def checkpoint_state():
  """`checkpoint_state(workdir) -> (step, numpy state tree)` of the newest checkpoint."""
  return final_state


@pytest.fixture(scope="session")
def kill_and_resume():
  """`kill_and_resume(config, workdir, *overrides, after_step=N) -> (killed_at, resumed)`."""
  return _kill_and_resume


@pytest.fixture(scope="session")
def launch():
  """`launch(config, workdir, *overrides, timeout=900) -> CompletedProcess` through the
  launcher; `timeout` (seconds) turns a hung run into a failure."""
  return _launch


@pytest.fixture
def shakespeare_corpus():
  """Skips the test when the Shakespeare cache (fetched by install.sh) is absent."""
  if not text_data.corpus_path().is_file():
    pytest.skip(f"Shakespeare cache absent; run `{text_data.FETCH_COMMAND}`")
  return text_data.corpus_path()
