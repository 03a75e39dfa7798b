"""Start a run from another run's trained parameters: `config.init_from = "runs/char"`.

The source is a launcher workdir; its newest checkpoint is read (or `config.init_from_step`),
read-only: nothing in the source workdir is ever written. Its values are copied into the new
run's freshly built models *by path* ('blocks/0/attn/kernel'): parameters (trainable or frozen
in the new run alike) and BatchNorm statistics; RNG stream state stays fresh. When the source
kept a parameter EMA, its EMA weights are the ones copied (those its evals scored).

Rules, each broken one ending the run in one line that names the first offending path:
  - a path present in both must have the same shape (a width or head count that differs);
  - a path of the new model missing from the source is allowed only where the task declares it
    new (`Task.new_parameters`: LoRA adapters by default, a value head, a ControlNet copy);
    anything else (a layer count that grew, a renamed module) is refused;
  - a path of the source missing from the new model is refused (a layer count that shrank).
Which source model feeds which new one is `Task.init_source` (same name, or the source's only
model); `Task.convert_source` may first rewrite the source's arrays into the new model's layout
(a QLoRA task stores the fp32 kernels as NF4; prefix / prompt tuning derive their init from the
source's weights). This runs only for a fresh run: a run that has checkpoints of its own resumes
from them. `config.init_from_models.<name> = DIR` feeds one model from another run (PPO's
frozen reward model from a reward-model run, beside a policy and reference from the SFT run).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from genfm.experiments.errors import ConfigError
from genfm.experiments.models import path_str


def _steps(ckpt_dir: str) -> list[int]:
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir)
                if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d, "state")))


def _flat(tree) -> dict[str, np.ndarray]:
  """Nested dicts of arrays → {'a/b/kernel': array}, dropping the Variables' `value` level."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    p = path_str(path)
    out[p.removesuffix("/value")] = x
  return out


def read_source(workdir: str, step: int = 0) -> tuple[int, dict[str, dict], bool]:
  """(step, {model name: {path: array}}, used_ema) of the run in `workdir`, read-only."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")  # Orbax needs absolute paths
  steps = _steps(ckpt_dir)
  if not steps:
    raise ConfigError(f"config.init_from={workdir!r} holds no checkpoint (no "
                      f"{ckpt_dir}/<step>/state); point it at a launcher workdir that has trained")
  if step and step not in steps:
    raise ConfigError(f"config.init_from_step={step}: {workdir!r} has checkpoints at steps "
                      f"{steps}; pick one of them, or 0 for the newest")
  step = step or steps[-1]
  path = os.path.join(ckpt_dir, str(step), "state")
  try:
    raw = ocp.PyTreeCheckpointer().restore(path)     # no target: the stored tree as it is
  except Exception as e:  # noqa: BLE001 — any failure to read means the files are damaged
    raise ConfigError(f"config.init_from: the checkpoint {path} could not be read "
                      f"({type(e).__name__}); it is corrupt or not a genfm checkpoint") from None
  if "models" in raw:                                 # {name: {params, frozen, rest}}
    emas = raw.get("ema_params", {})
    sources = {n: {**_flat(v.get("rest", {})), **_flat(v.get("frozen", {})),
                   **_flat(v.get("params", {})), **_flat(emas.get(n, {}))}
               for n, v in raw["models"].items()}
  else:                                               # the one-model layout of older runs
    params = raw.get("ema_params", raw["params"])
    sources = {"model": {**_flat(raw.get("rest", {})), **_flat(params)}}
  return step, sources, "ema_params" in raw


def _value(var):
  """A Variable's array (`get_value` on new flax, where `.value` is deprecated)."""
  return var.get_value() if hasattr(var, "get_value") else var.value


def _shape(x) -> str:
  return "[" + ", ".join(map(str, np.shape(x))) + "]"


def load_into(values: dict, task, source: dict[str, dict], where: str) -> tuple[dict, list[str]]:
  """`values` ({name: {params, frozen, rest}} of fresh models) with the source's arrays copied
  in by path; returns (new values, log lines). `where` names the source in messages."""
  new_values, lines = {}, []
  for name, parts in values.items():
    src_name = task.init_source(name, tuple(source))
    if src_name is None:
      new_values[name] = parts
      lines.append(f"{name}: fresh initialisation (no source model)")
      continue
    if src_name not in source:
      raise ConfigError(f"config.init_from: {where} has no model {src_name!r} (it has "
                        f"{', '.join(source)}) for this run's model {name!r}")
    try:
      src = task.convert_source(name, source[src_name])
    except ValueError as e:
      raise ConfigError(f"config.init_from: {where}: {e}") from None
    used, fresh = set(), []
    is_new = nnx.filterlib.to_predicate(task.new_parameters(name))
    out = {}
    for part, state in parts.items():
      flat = []
      for path, var in nnx.to_flat_state(state):
        p = path_str(path)
        if isinstance(var, nnx.RngState):             # RNG streams stay fresh
          flat.append((path, var))
          continue
        if p not in src:
          if part != "rest" and not is_new(path, var):
            raise ConfigError(
                f"config.init_from: this model's parameter {name}/{p} {_shape(_value(var))} is "
                f"not in {where} (model {src_name!r}); the source must be the same "
                "architecture, apart from parameters the task declares new")
          fresh.append(p)
          flat.append((path, var))
          continue
        x = src[p]
        if np.shape(x) != np.shape(_value(var)):
          raise ConfigError(
              f"config.init_from: {name}/{p} has shape {_shape(x)} in {where} but "
              f"{_shape(_value(var))} in this model; the source must be the same architecture")
        used.add(p)
        # A copy: two models fed by one source array (policy and reference) must not share a
        # buffer, which the jitted step donates.
        flat.append((path, var.replace(jax.numpy.array(x, _value(var).dtype, copy=True))))
      out[part] = nnx.from_flat_state(flat)
    unused = sorted(set(src) - used - {p for p in src if _is_rng_path(p)})
    if unused:
      raise ConfigError(
          f"config.init_from: {where} (model {src_name!r}) has {unused[0]} "
          f"{_shape(src[unused[0]])}, which this model {name!r} lacks ({len(unused)} such "
          "arrays); the source must be the same architecture")
    new_values[name] = out
    lines.append(f"{name}: {len(used)} arrays from {src_name!r}"
                 + (f", {len(fresh)} new (fresh): {', '.join(fresh[:4])}"
                    + (" ..." if len(fresh) > 4 else "") if fresh else ""))
  return new_values, lines


def _is_rng_path(p: str) -> bool:
  """RNG stream variables of a stored `rest` ('dropout/rngs/key', '.../count')."""
  return p.endswith("rngs/key") or p.endswith("rngs/count")


def initial_values(config, task, values: dict) -> tuple[dict, list[str]]:
  """`values` initialised from `config.init_from`, and model by model from
  `config.init_from_models.<name>` (another run for that model, e.g. a trained reward model
  beside a policy from an SFT run); unchanged when both are empty."""
  per_model = {n: d for n, d in dict(config.get("init_from_models", None) or {}).items() if d}
  unknown = sorted(set(per_model) - set(values))
  if unknown:
    raise ConfigError(f"config.init_from_models names {unknown}, which this task does not build; "
                      f"its models: {', '.join(values)}")
  src_dir = config.get("init_from", "")
  out, lines = dict(values), []
  jobs = [(src_dir, config.get("init_from_step", 0), [n for n in values if n not in per_model])]
  jobs += [(d, 0, [n]) for n, d in per_model.items()]
  for where_dir, step, names in jobs:
    if not where_dir or not names:
      continue
    step, source, used_ema = read_source(where_dir, step)
    where = f"{where_dir} step {step}"
    new, more = load_into({n: values[n] for n in names}, task, source, where)
    out.update(new)
    lines += [f"initialised from {where}{' (its EMA weights)' if used_ema else ''}"] + more
  return out, lines
