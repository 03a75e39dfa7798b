"""What the 2-D and the image diffusion tasks share: config checks, the DDPM schedule and sampler
arguments.

The losses themselves are the library's (`diffusion.gaussian.per_example_loss`,
`diffusion.sde.dsm_per_example`), the functions their tests check; the tasks only draw t and ε
and say which network answers.
"""

from __future__ import annotations


from genfm.diffusion import gaussian
from genfm.diffusion import samplers
from genfm.diffusion import schedules
from genfm.experiments.errors import ConfigError, unknown_choice


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
