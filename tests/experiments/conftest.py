"""Shared fixtures for the experiment tests."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from genfm.experiments import data


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
