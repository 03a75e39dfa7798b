"""What the 2-D and the image diffusion tasks share: config checks, the DDPM schedule and sampler
arguments, and batch-shaped draws on the loop's mesh.

The losses themselves are the library's (`diffusion.gaussian.per_example_loss`,
`diffusion.sde.dsm_per_example`), the functions their tests check; the tasks only draw t and ε
and say which network answers.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from genfm.diffusion import gaussian
from genfm.diffusion import samplers
from genfm.diffusion import schedules
from genfm.experiments.errors import ConfigError, unknown_choice


def batch_sharding(x_B: jax.Array, ndim: int) -> NamedSharding | None:
  """The batch's sharding along `data` for a new rank-`ndim` array, or None off-mesh.

  The loop's mesh has Explicit axes, where concatenating a batch-sharded x_t with a replicated
  time embedding is a type error; so per-example noise is drawn sharded like the batch
  (`out_sharding`; jax's threefry draws the same values under any sharding).
  """
  s = jax.typeof(x_B).sharding
  if not isinstance(s, NamedSharding) or not s.mesh.axis_names:
    return None
  return NamedSharding(s.mesh, P(s.spec[0] if len(s.spec) else None, *([None] * (ndim - 1))))


def replicated(x: jax.Array) -> jax.Array:
  """`x` replicated over the loop's Explicit mesh (unchanged off-mesh).

  The U-Net (`diffusion/unet.py`) is not written for Explicit sharding: its label `nnx.Embed`
  gather and its attention reshape need output shardings it does not pass. So the network runs
  on replicated inputs: exact on one device (all the CPU and single-GPU runs here); on a
  multi-device mesh it is correct but not data-parallel — that needs `out_sharding` in unet.py.
  """
  s = jax.typeof(x).sharding
  if isinstance(s, NamedSharding) and s.mesh.axis_names:
    return jax.sharding.reshard(x, NamedSharding(s.mesh, P()))
  return x


def like(y: jax.Array, x: jax.Array) -> jax.Array:
  """`y` laid out as `x` on the loop's mesh (unchanged off-mesh)."""
  s = jax.typeof(x).sharding
  if isinstance(s, NamedSharding) and s.mesh.axis_names:
    return jax.sharding.reshard(y, s)
  return y


def choice(what: str, got, valid) -> None:
  if got not in valid:
    raise unknown_choice(what, got, valid)


def check_ddpm(d) -> schedules.Schedule:
  """`config.diffusion`'s DDPM choices checked; its discrete schedule, with the sample step
  count checked against T."""
  choice("config.diffusion.prediction", d.prediction, gaussian.PREDICTION_TYPES)
  choice("config.diffusion.sampler", d.sampler, samplers.SAMPLERS)
  choice("config.diffusion.schedule", d.schedule, schedules.SCHEDULES)
  choice("config.diffusion.variance", d.variance, samplers.VARIANCES)
  try:
    sched = schedules.make_schedule(d.schedule, d.num_timesteps)
    if d.sampler != "ddpm":
      samplers.timesteps(d.num_timesteps, d.sample_steps)   # validates 1 ≤ steps ≤ T
  except ValueError as e:
    raise ConfigError(f"config.diffusion: {e}") from None
  return sched


def sampler_kwargs(d, sampler: str, num_steps: int | None = None) -> dict:
  """Keyword arguments of `samplers.sample` for `sampler` from `config.diffusion`."""
  kwargs = {"prediction_type": d.prediction}
  if d.get("clip_x0", 0.0):                     # x̂_0 ∈ [−c, c] at every step (samplers.py)
    kwargs["clip_x0"] = float(d.clip_x0)
  if sampler == "ddpm":
    kwargs["variance"] = d.variance
  else:
    kwargs["num_steps"] = d.sample_steps if num_steps is None else num_steps
    if sampler == "ddim":
      kwargs["eta"] = d.eta
  return kwargs
