"""The run's device mesh and the shardings of its state and batches (GSPMD, 2105.04663).

    config.mesh = {"data": -1, "fsdp": 1, "model": 1}     (-1: the devices the others leave)

One mesh over every device of every process, with named `Auto` axes: the loop gives each array
a `NamedSharding` in the jit's `in_shardings` / `out_shardings` and XLA partitions the step and
inserts the collectives — nothing here is a hand-written all-reduce. Batches split along
("data", "fsdp") (each device computes only its rows); parameters, their optimizer moments
and EMA follow the models' logical axes (`foundations/partitioning.py`: `embed` over `fsdp`,
heads / FFN hidden / vocab over `model`); everything else (step, RNG streams, BatchNorm
statistics) is replicated. `config.sharding_rules` (optional, {logical: mesh axis or ""})
overrides `partitioning.DEFAULT_RULES`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from genfm.experiments.errors import ConfigError
from genfm.foundations import partitioning

AXES = partitioning.MESH_AXES
DEFAULT = {"data": -1, "fsdp": 1, "model": 1}


def mesh_shape(config, device_count: int | None = None) -> dict[str, int]:
  """{axis: size} from `config.mesh` (default all devices on `data`), checked against the
  device count: one -1 takes the rest; the sizes must multiply to the device count."""
  n = jax.device_count() if device_count is None else device_count
  given = dict(config.get("mesh", None) or DEFAULT)
  extra = sorted(set(given) - set(AXES))
  if extra:
    raise ConfigError(f"config.mesh has unknown axes {extra}; its axes are {', '.join(AXES)}")
  sizes = {a: given.get(a, 1) for a in AXES}
  if any(not isinstance(v, int) or isinstance(v, bool) or v == 0 or v < -1
         for v in sizes.values()):
    raise ConfigError(f"config.mesh sizes must be positive integers or one -1, got {sizes}")
  free = [a for a, v in sizes.items() if v == -1]
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if len(free) > 1:
    raise ConfigError(f"config.mesh has -1 on {free}; at most one axis takes the remaining "
                      "devices")
  if free:
    if n % fixed:
      raise ConfigError(f"config.mesh {sizes}: the fixed axes multiply to {fixed}, which does "
                        f"not divide the {n} devices; use sizes whose product divides {n}")
    sizes[free[0]] = n // fixed
  elif fixed != n:
    raise ConfigError(f"config.mesh {sizes} multiplies to {fixed} but this run has {n} "
                      f"device(s); make the sizes multiply to {n} (or set one axis to -1)")
  return sizes


def make_mesh(config) -> jax.sharding.Mesh:
  """The run's mesh: axes ("data", "fsdp", "model"), all `Auto` (GSPMD propagation)."""
  shape = mesh_shape(config)
  return jax.make_mesh(tuple(shape[a] for a in AXES), AXES,
                       axis_types=(AxisType.Auto,) * len(AXES))


def rules(config) -> partitioning.Rules:
  """`partitioning.DEFAULT_RULES` with `config.sharding_rules` applied ("" or None = none)."""
  out = dict(partitioning.DEFAULT_RULES)
  for name, axes in dict(config.get("sharding_rules", None) or {}).items():
    if name not in out:
      raise ConfigError(f"config.sharding_rules names unknown logical axis {name!r}; the "
                        f"logical axes are {', '.join(out)}")
    axes = None if axes in ("", None) else axes if isinstance(axes, str) else tuple(axes)
    bad = [a for a in partitioning._mesh_axes(axes) if a not in AXES]
    if bad:
      raise ConfigError(f"config.sharding_rules.{name} = {axes!r} names no mesh axis; use "
                        f"one of {', '.join(AXES)} or ''")
    out[name] = axes
  return tuple(out.items())


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Every batch array split along its leading dim over ("data", "fsdp")."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def check_batch(config, shape: dict[str, int]) -> None:
  """One line if the global batches do not split evenly over the batch axes and processes."""
  split = shape["data"] * shape["fsdp"]
  for key in ("batch_size", "eval_batch_size"):
    b = config.get(key, None)
    if b is None:
      continue
    if b % split:
      raise ConfigError(
          f"config.{key}={b} is not divisible by the mesh's batch axes data × fsdp = "
          f"{shape['data']} × {shape['fsdp']} = {split}; use a multiple of {split}")
    if b % jax.process_count():
      raise ConfigError(f"config.{key}={b} is not divisible by the {jax.process_count()} "
                        "processes; use a multiple of it")


def _tokens(keypath) -> list[str]:
  out = []
  for k in keypath:
    out.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return out[:-1] if out and out[-1] == "value" else out


def state_shardings(state: dict, param_specs: dict[str, dict[str, tuple]], mesh) -> dict:
  """NamedShardings for the loop's state tree: a leaf under models/<name>/{params, frozen},
  ema_params/<name> or opt_state/<name> (an optax moment) whose path contains a parameter path
  of model <name>, with that parameter's shape, gets the parameter's spec; the rest is replicated.
  """

  def one(keypath, x):
    t = _tokens(keypath)
    specs = param_specs.get(t[1], {}) if len(t) > 2 and t[0] in (
        "models", "opt_state", "ema_params") else {}
    for i in range(2, len(t)):
      spec, shape = specs.get("/".join(t[i:]), (None, None))
      if spec is not None and tuple(np.shape(x)) == tuple(shape):
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, state)


def param_specs(models, config, shape: dict[str, int]) -> dict[str, dict[str, tuple]]:
  """{model name: {param path: (spec, shape)}}, each checked for divisibility (one line if not)."""
  r = rules(config)
  out = {}
  for name, axes_by_path in models.param_axes.items():
    shapes = models.param_shapes[name]
    try:
      by_path = partitioning.specs(axes_by_path, shapes, r, shape, prefix=f"{name}/")
    except ValueError as e:
      raise ConfigError(str(e)) from None
    out[name] = {p: (spec, tuple(shapes[p])) for p, spec in by_path.items()}
  return out
