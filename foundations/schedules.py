"""Learning-rate schedules η(t) written from their formulas; each equals its optax counterpart.

  step         η₀ γ^⌊t/k⌋                     (step decay, e.g. He et al. 1512.03385 §3.4: ÷10
                                               at fixed epochs)
  exponential  η₀ γ^{t/k}                     (continuous exponential decay)
  cosine       η_min + ½(η₀ − η_min)(1 + cos(π min(t, T)/T))
                                              (eq. (5) of 1608.03983, SGDR, one cycle, no restart)
  warmup_cosine  linear ramp η_init → η_peak over W steps (Goyal et al. 1706.02677 §2.2), then the
                 cosine above from η_peak to η_end over the remaining T − W steps (T counts the
                 warmup, as optax's `decay_steps` does).
A schedule maps the 0-based step count (an int array) to η; pass it as `learning_rate` to an
optimizer in `optimizers.py` or optax.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from genfm.foundations import errors

Schedule = Callable[[jax.Array], jax.Array]


def _positive(name: str, value) -> None:
  if value <= 0:
    raise ValueError(f"{name} must be > 0, got {value}")


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
  """Multiply by γ every `step_size` steps."""
  _positive("step_size", step_size)

  def schedule(count):
    return init_value * jnp.power(gamma, jnp.floor(count / step_size))

  return schedule


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float) -> Schedule:
  """η₀ γ^{t/k}: smooth version of `step_decay` (multiplied by γ over every k steps)."""
  _positive("transition_steps", transition_steps)

  def schedule(count):
    return init_value * jnp.power(decay_rate, count / transition_steps)

  return schedule


def cosine_decay(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
  """Half a cosine from η₀ to η_min over `decay_steps`, then constant η_min."""
  _positive("decay_steps", decay_steps)

  def schedule(count):
    t = jnp.minimum(count, decay_steps)
    # eq. (5) of 1608.03983 with T_cur = t, T_i = decay_steps.
    return end_value + 0.5 * (init_value - end_value) * (1 + jnp.cos(math.pi * t / decay_steps))

  return schedule


def warmup_cosine(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                  end_value: float = 0.0) -> Schedule:
  """Linear warmup to `peak_value` over `warmup_steps`, cosine to `end_value` at `decay_steps`."""
  _positive("warmup_steps", warmup_steps)
  if decay_steps <= warmup_steps:
    raise ValueError(f"decay_steps ({decay_steps}) counts the warmup and must exceed "
                     f"warmup_steps ({warmup_steps})")
  cosine = cosine_decay(peak_value, decay_steps - warmup_steps, end_value)

  def schedule(count):
    warm = init_value + (peak_value - init_value) * jnp.minimum(count, warmup_steps) / warmup_steps
    return jnp.where(count < warmup_steps, warm, cosine(count - warmup_steps))

  return schedule


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "step": step_decay, "exponential": exponential_decay, "cosine": cosine_decay,
    "warmup_cosine": warmup_cosine,
}


def get_schedule(name: str, **kwargs) -> Schedule:
  """`get_schedule("cosine", init_value=0.1, decay_steps=1000)`; unknown names list valid ones."""
  if name not in SCHEDULES:
    raise errors.unknown_choice("schedule", name, SCHEDULES)
  return SCHEDULES[name](**kwargs)
