"""Schedules equal optax's at every step, including the boundaries."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genfm.foundations import schedules as sch

_T = jnp.arange(0, 260)  # covers warmup, decay and the constant tail past decay_steps

_PAIRS = {
    "step": (sch.step_decay(0.5, 30, 0.3),
             optax.exponential_decay(0.5, 30, 0.3, staircase=True)),
    "exponential": (sch.exponential_decay(0.5, 40, 0.5), optax.exponential_decay(0.5, 40, 0.5)),
    "cosine": (sch.cosine_decay(0.5, 200, end_value=0.05),
               optax.cosine_decay_schedule(0.5, 200, alpha=0.05 / 0.5)),
    "warmup_cosine": (sch.warmup_cosine(0.0, 1.0, 25, 200, end_value=0.1),
                      optax.warmup_cosine_decay_schedule(0.0, 1.0, 25, 200, end_value=0.1)),
}


@pytest.mark.parametrize("name", sorted(_PAIRS))
def test_matches_optax(name):
  ours, ref = _PAIRS[name]
  np.testing.assert_allclose(ours(_T), ref(_T), rtol=1e-5, atol=1e-7)


def test_step_matches_piecewise_constant():
  ref = optax.piecewise_constant_schedule(0.5, {30: 0.3, 60: 0.3, 90: 0.3})
  np.testing.assert_allclose(sch.step_decay(0.5, 30, 0.3)(jnp.arange(120)),
                             ref(jnp.arange(120)), rtol=1e-6)


def test_landmarks():
  s = sch.warmup_cosine(0.0, 1.0, 10, 110, end_value=0.0)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110), s(500)],
                             [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
  # Cosine is symmetric about its midpoint: η(t) + η(T − t) = η₀ + η_min.
  c = sch.cosine_decay(2.0, 100)
  np.testing.assert_allclose(c(jnp.arange(101)) + c(100 - jnp.arange(101)), 2.0, atol=1e-6)


def test_get_schedule_and_errors():
  s = sch.get_schedule("cosine", init_value=1.0, decay_steps=10)
  np.testing.assert_allclose(s(10), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="valid choices: cosine, exponential, step, warmup_cosine"):
    sch.get_schedule("linear", init_value=1.0)
  with pytest.raises(ValueError, match="must exceed warmup_steps"):
    sch.warmup_cosine(0.0, 1.0, 50, 40)
  with pytest.raises(ValueError, match="step_size must be > 0"):
    sch.step_decay(1.0, 0)
