"""The shared training loop: one function, `train_and_evaluate(config, workdir)`, for every task.

The task's named Flax NNX models are split into (graphdef, trainable, frozen, rest)
(`models.py`) and trained by a plain `jax.jit` of the task's step (`step.py`: one optimizer per
trained model) with shardings in the jit over one mesh of every device (`mesh.py`: axes data,
fsdp, model, sized by `config.mesh`): batches split over data × fsdp, parameters, optimizer
moments and EMA laid out by the models' logical axes (replicated under pure data parallelism,
split under FSDP and tensor parallelism), and XLA inserting the collectives. The same code runs
on 1 CPU, n GPUs, a TPU slice or several hosts (`jax.distributed`). The step's PRNG key is fold_in(seed, step) and the data iterator's
position is checkpointed, so a killed run resumes exactly where it stopped. With
`config.ema_decay` > 0 the state also carries an EMA of the trainable parameters (`ema.py`),
which the evals score (raw: `raw_*`). With `config.init_from` a fresh run starts from another
run's parameters (`init_from.py`); a run with checkpoints of its own always resumes from them.
"""

import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from genfm.experiments import data
from genfm.experiments import mesh as meshes
from genfm.experiments.checkpoint import Checkpointer, json_safe
from genfm.experiments.errors import ConfigError, NonFiniteLossError
from genfm.experiments.init_from import initial_values
from genfm.experiments.models import ModelSet, count
from genfm.experiments.step import make_train_step, on_leaves  # noqa: F401 — this module's API
from genfm.experiments.tasks import get_task
from genfm.experiments import workdir as workdirs
from genfm.experiments.workdir import (ADDED_KEYS, RESUMABLE_KEYS,  # noqa: F401 — re-exported
                                       check_workdir)
from genfm.experiments.writer import MetricWriter, Progress, format_seconds

REQUIRED_KEYS = ("task", "dataset", "seed", "batch_size", "learning_rate", "num_train_steps",
                 "log_every_steps", "eval_every_steps", "checkpoint_every_steps")
def validate(config: ml_collections.ConfigDict) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise ConfigError(f"config is missing required keys {missing}; every config sets "
                      f"{', '.join(REQUIRED_KEYS)}")
  for k in ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
            "checkpoint_every_steps"):
    if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] <= 0:
      raise ConfigError(f"config.{k} must be a positive integer, got {config[k]!r}")


class StopOnSignal:
  """SIGTERM / SIGINT ask the loop to checkpoint and stop at the end of the current step."""

  def __init__(self):
    self.signum, self._old = None, {}
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:            # not the main thread (e.g. inside a notebook worker)
        pass

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def restore(self):
    for s, h in self._old.items():
      signal.signal(s, h)


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch → one global array per key, split along `data`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def init_state(task, config):
  """(models, state) of a fresh run: the task's models split into trainable / frozen parts with
  their optimizers (`models.ModelSet`), and the state tree the loop jits and checkpoints."""
  models = ModelSet(task, config)
  return models, models.initial_state()


def params_of(state: dict, name: str = "model"):
  """The trainable parameters of model `name` in a run's state."""
  return state["models"][name]["params"]


def to_legacy(state: dict) -> dict | None:
  """The state in the one-model layout of runs recorded before named models, or None if it has
  no such form (several models, or a frozen part): {step, params, rest, opt_state, ema_params}."""
  if list(state["models"]) != ["model"] or count(state["models"]["model"]["frozen"]):
    return None
  m = state["models"]["model"]
  old = {"step": state["step"], "params": m["params"], "rest": m["rest"],
         "opt_state": state["opt_state"]["model"]}
  if "ema_params" in state:
    old["ema_params"] = state["ema_params"]["model"]
  return old


def from_legacy(old: dict, like: dict) -> dict:
  """`to_legacy`'s inverse, for a checkpoint written in the old layout."""
  state = {"step": old["step"],
           "models": {"model": {**like["models"]["model"], "params": old["params"],
                                "rest": old["rest"]}},
           "opt_state": {"model": old["opt_state"]}}
  if "ema_params" in old:
    state["ema_params"] = {"model": old["ema_params"]}
  return state


def restore(ckpt: Checkpointer, state: dict):
  """(state, data_state) of the newest checkpoint (either layout), or None when there is none."""
  return ckpt.restore_latest(state, legacy=(to_legacy, from_legacy))


def restore_eval_model(task, config, workdir: str):
  """(eval-mode model, step) from the newest checkpoint in `workdir`, or None if it has none.

  For scripts that read a finished run back (sample tables, FID features); the state tree comes
  from `init_state`, so the config must be the run's own (its `config.json`). A run with
  `ema_decay` gives its EMA parameters, the ones its own evals scored. A task with several
  models gives a dict of them by name.
  """
  models, state = init_state(task, config)
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    restored = restore(ckpt, state)
  finally:
    ckpt.close()
  if restored is None:
    return None
  state = restored[0]
  return models.eval_models(state, ema=True), int(state["step"])


SUMMARY_INFO = ("name", "step", "finished", "num_params", "num_trainable_params",
                "optimizer_state_bytes", "model_bytes", "backend",
                "device_count", "device_kind", "session_seconds")


def finished_summary(workdir: str, step: int, total: int) -> dict | None:
  """The summary.json of a run that already finished at `step` = `total`, else None (a rerun of
  a finished workdir keeps its results instead of overwriting them)."""
  path = os.path.join(workdir, "summary.json")
  if step < total or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None                         # damaged: evaluate again and rewrite it
  return summary if summary.get("finished") and summary.get("step") == step else None


def nonfinite(m: dict) -> str | None:
  """The first loss or gradient norm among the metrics `m` that is NaN or Inf, else None
  (losses before gradient norms, so the message names the loss when both are)."""
  for k, v in sorted(m.items(), key=lambda kv: not kv[0].endswith("loss")):
    base = k.rsplit("/", 1)[-1]
    if (base.endswith("loss") or base == "grad_norm") and not np.all(np.isfinite(v)):
      return k
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train `config` in `workdir` (resuming if it holds a checkpoint); returns the summary.

  Holds the workdir's lock throughout (`workdir.Lock`: one writer per workdir; a stale lock of
  a killed run is taken over)."""
  t_start = time.time()
  validate(config)
  workdirs.create(workdir)
  if jax.process_index() != 0:        # one lock per workdir: the chief process holds it
    return _train_and_evaluate(config, workdir, t_start)
  with workdirs.Lock(workdir):
    return _train_and_evaluate(config, workdir, t_start)


def _check_batch(config, source) -> None:
  # One global stream over the whole set (data/pipeline.py): the same bound for any process count.
  if len(source) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training set "
                      f"({len(source)} examples); use a batch of at most {len(source)}")


def _place(state, shardings):
  """The host's state laid out on the mesh. A jitted identity, not `jax.device_put`: with
  several processes the shardings span devices this process cannot address, which device_put
  refuses for typed PRNG keys; each process holds the same values, so each supplies its part."""
  return jax.jit(lambda s: s, out_shardings=shardings)(state)


def _stop_requested(stop) -> bool:
  """Whether any process got SIGTERM / SIGINT: every process must stop at the same step, or the
  others wait forever in the next step's collectives. One tiny all-gather per step, and only
  with several processes."""
  if jax.process_count() == 1:
    return bool(stop.signum)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(stop.signum)))))


def _train_and_evaluate(config, workdir: str, t_start: float) -> dict:
  changed = workdirs.compare_config(config, workdir)     # refuse another run's workdir first
  task = get_task(config)
  shape = meshes.mesh_shape(config)
  meshes.check_batch(config, shape)
  mesh = meshes.make_mesh(config)
  replicated, by_data = meshes.replicated(mesh), meshes.batch_sharding(mesh)
  is_chief = jax.process_index() == 0

  models, state = init_state(task, config)
  state_sharding = meshes.state_shardings(state, meshes.param_specs(models, config, shape), mesh)
  n_trainable, n_params = models.counts()
  if config.get("init_from", "") and os.path.abspath(config.init_from) == os.path.abspath(workdir):
    raise ConfigError(f"config.init_from is this run's own --workdir={workdir}; give the "
                      "source run's workdir, and a new --workdir for the fine-tune")
  _check_batch(config, task.train_source())
  if is_chief:              # only now, with the task and models built from it: a valid config
    workdirs.record_config(config, workdir)
  state = _place(state, state_sharding)

  train_iter = data.make_iterator(task.train_source(), seed=config.seed, shuffle=True,
                                  batch_size=config.batch_size // jax.process_count(),
                                  transform=task.train_transform())
  ckpt = Checkpointer(workdir)
  restored = restore(ckpt, state)
  if restored is not None:         # our own checkpoint wins over init_from: resume exactly
    state, data_state = restored
    train_iter.set_state(data_state)
    for line in changed:
      logging.warning("resuming with %s%s", line, " (the LR schedule is recomputed over the "
                      "new length)" if line.startswith("num_train_steps") else "")
  elif config.get("init_from", "") or any(dict(config.get("init_from_models", None) or {})
                                          .values()):
    values, lines = initial_values(config, task, jax.device_get(state["models"]))
    state = _place(models.initial_state(values), state_sharding)
    for line in lines:
      logging.info("init_from: %s", line)
  start = int(state["step"])
  total = config.num_train_steps
  finished = finished_summary(workdir, start, total)
  if finished is not None:
    ckpt.close()
    logging.info("%s already finished at step %d; its results are kept: %s", workdir, start,
                 json.dumps({k: v for k, v in finished.items() if k not in SUMMARY_INFO}))
    return finished
  logging.info("%s: %s params (%s trainable%s) | %d %s device(s) | %s from step %d to %d | "
               "mesh %s | workdir %s", config.get("name", config.task), f"{n_params:,}",
               f"{n_trainable:,}", "" if len(models.names) == 1 else
               f"; models {', '.join(models.names)}, trained {', '.join(models.trained)}",
               jax.device_count(), jax.default_backend(), "resuming" if start else "training",
               start, total, dict(mesh.shape), workdir)

  def eval_step(state, batch, ema):
    return task.eval_metrics(models.eval_models(state, ema=ema), batch)

  # The loop carries the state's leaves, not the state: see `step.on_leaves` (dispatch cost).
  treedef = jax.tree.structure(state)
  leaf_sharding = treedef.flatten_up_to(state_sharding)
  train_step = jax.jit(on_leaves(make_train_step(task, config, models), treedef),
                       in_shardings=(leaf_sharding, by_data),
                       out_shardings=(leaf_sharding, replicated), donate_argnums=0)
  eval_steps = {ema: jax.jit(functools.partial(eval_step, ema=ema), out_shardings=replicated,
                            in_shardings=(state_sharding, by_data)) for ema in (False, True)}

  def evaluate(state, step) -> dict[str, float]:
    """Metrics of the EMA parameters when the run keeps them, plus `raw_*` of the raw ones
    (whose sample grids go to workdir/raw_params/); of the raw parameters otherwise."""
    if "ema_params" not in state:
      return evaluate_params(state, False, step, workdir)
    raw_dir = os.path.join(workdir, "raw_params")
    os.makedirs(raw_dir, exist_ok=True)
    raw = evaluate_params(state, False, step, raw_dir)
    return {**evaluate_params(state, True, step, workdir),
            **{f"raw_{k}": v for k, v in raw.items()}}

  def evaluate_params(state, ema, step, out_dir) -> dict[str, float]:
    results = {}
    for split, source in task.eval_sources().items():
      it = data.make_iterator(source, batch_size=config.get("eval_batch_size", config.batch_size)
                              // jax.process_count(), seed=0, shuffle=False, num_epochs=1,
                              drop_remainder=False, pad_remainder=True)
      sums = None
      for batch in it:
        m = eval_steps[ema](state, to_global(batch, by_data))
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
      sums = jax.device_get(sums)
      count = sums.pop("count")
      results.update({f"{split}_{k}": float(v / count) for k, v in sums.items()})
    results.update(task.after_eval(models.eval_models(state, ema=ema), out_dir, step)
                   if is_chief else {})
    return results

  writer = MetricWriter(workdir, resume_step=start) if is_chief else None
  progress, stop, pending = Progress(start, total), StopOnSignal(), []

  def flush(step):
    """Fetch the metrics of the steps since the last flush; stop on NaN/Inf; log their mean."""
    if not pending:
      return
    window = jax.device_get(pending)
    first = step - len(window) + 1
    for i, m in enumerate(window):
      bad = nonfinite(m)
      if bad:
        last = ckpt.latest_step()
        kept = (f"The last good checkpoint (step {last}) is kept in {ckpt.directory}. Rerun "
                "the same command with a lower --config.learning_rate to resume from it."
                if last is not None else "No checkpoint was written before it; rerun with a "
                "lower --config.learning_rate (the run starts again from step 0).")
        raise NonFiniteLossError(
            f"the training loss became non-finite at step {first + i} ({bad} = {m[bad]}); the "
            f"run stopped. {kept}")
    pending.clear()
    mean = {f"train_{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
    rate = progress.rate(step)
    if writer:
      writer.write(step, {**mean, "steps_per_sec": rate})
    progress.log(step, rate, {k: v for k, v in mean.items() if not k.endswith("learning_rate")})

  def run_eval(step) -> dict[str, float]:
    metrics = evaluate(state, step)
    if writer:
      writer.write(step, metrics)
    logging.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics

  step, eval_metrics = start, {}
  leaves = treedef.flatten_up_to(state)
  try:
    while step < total:
      batch = to_global(next(train_iter), by_data)
      leaves, metrics = train_step(leaves, batch)
      state = None                       # stale: its arrays were donated to the step
      step += 1
      pending.append(metrics)
      if len(pending) >= 2:
        # Keep at most one step in flight: async dispatch would otherwise let the host run
        # hundreds of steps ahead, and a SIGTERM would wait for all of them.
        jax.block_until_ready(pending[-2])
      last = step == total
      stopping = _stop_requested(stop)
      if step % config.log_every_steps == 0 or last or stopping:
        flush(step)
      save = step % config.checkpoint_every_steps == 0 or last or stopping
      evaluate_now = step % config.eval_every_steps == 0 or last
      if save or evaluate_now:           # the only readers of the state inside the loop
        state = jax.tree.unflatten(treedef, leaves)
      # Save before evaluating: whatever fails in an evaluation costs no finished step.
      if save:
        flush(step)                      # never checkpoint a state that has gone non-finite
        ckpt.save(step, state, json_safe(train_iter.get_state()))
      if stopping:
        logging.warning("stopped by signal %s at step %d; checkpoint saved. Rerun the same "
                        "command to resume.", stop.signum or "(on another process)", step)
        break
      if evaluate_now:
        eval_metrics = run_eval(step)
    if start >= total:                   # at the end already, with no summary: evaluate once
      eval_metrics = run_eval(step)
  finally:
    stop.restore()
    ckpt.close()
    if writer:
      writer.close()
  state = jax.tree.unflatten(treedef, leaves)

  nbytes = lambda tree: int(sum(x.nbytes for x in jax.tree.leaves(tree)))
  summary = {"name": config.get("name", config.task), "step": step, "finished": step >= total,
             "num_params": int(n_params), "num_trainable_params": int(n_trainable),
             # Measured on the state's arrays: what the optimizer keeps (moments of the trainable
             # part only) and what the models hold (parameters, frozen parts, NF4 storage, ...).
             "optimizer_state_bytes": nbytes(state["opt_state"]),
             "model_bytes": nbytes(state["models"]),
             **eval_metrics, "backend": jax.default_backend(),
             "device_count": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
             "session_seconds": round(time.time() - t_start, 1)}
  if is_chief:
    path = os.path.join(workdir, "summary.json")
    with open(f"{path}.tmp", "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(f"{path}.tmp", path)       # atomic: a kill never leaves half a summary
    writer.plot_curves(workdir, title=f"{summary['name']} — {workdir}")
    logging.info("done at step %d in %s: %s", step, format_seconds(summary["session_seconds"]),
                 json.dumps({k: v for k, v in eval_metrics.items()}))
  return summary
