"""Shared fixtures for the experiment tests."""

import os
import subprocess
import sys

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


@pytest.fixture
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
