"""The shared training loop: one function, `train_and_evaluate(config, workdir)`, for every task.

Flax NNX models are split into (graphdef, params, rest) and trained by a plain `jax.jit` step
with explicit shardings: parameters and optimizer state replicated, batches sharded along the
`data` axis of a mesh over all devices (`jax.make_mesh`). The same code runs on 1 CPU, n GPUs or
a TPU slice. The step's PRNG key is fold_in(seed, step) and the data iterator's position is
checkpointed, so a killed run resumes exactly where it stopped. With `config.ema_decay` > 0 the
state also carries an EMA of the parameters (`ema.py`), which the evals score (raw: `raw_*`).
"""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from genfm.experiments import data
from genfm.experiments.checkpoint import Checkpointer, json_safe
from genfm.experiments.ema import ema_decay, ema_update
from genfm.experiments.errors import CheckpointError, ConfigError, NonFiniteLossError
from genfm.experiments.optim import make_optimizer, make_schedule
from genfm.experiments.tasks import get_task
from genfm.experiments.writer import MetricWriter, Progress, format_seconds
# Ours (tested equal to optax.tree.norm): optax.global_norm is deprecated, optax.tree.norm is new.
from genfm.foundations.clipping import global_norm

REQUIRED_KEYS = ("task", "dataset", "seed", "batch_size", "learning_rate", "num_train_steps",
                 "log_every_steps", "eval_every_steps", "checkpoint_every_steps")
# Keys a resumed run may change; any other difference means the workdir holds another run.
RESUMABLE_KEYS = ("num_train_steps", "learning_rate", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps")
# Keys added to every config after runs were recorded without them, with the value that gives
# those runs' behaviour: a workdir whose config.json lacks one resumes if the value is this.
ADDED_KEYS = {"ema_decay": 0.0, "diffusion.clip_x0": 0.0}


def validate(config: ml_collections.ConfigDict) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise ConfigError(f"config is missing required keys {missing}; every config sets "
                      f"{', '.join(REQUIRED_KEYS)}")
  for k in ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
            "checkpoint_every_steps"):
    if not isinstance(config[k], int) or config[k] <= 0:
      raise ConfigError(f"config.{k} must be a positive integer, got {config[k]!r}")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def check_workdir(config, workdir: str) -> None:
  """Refuse a workdir that holds a run of a different config; record this config otherwise."""
  path = os.path.join(workdir, "config.json")
  now = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    b = _flatten(now)
    a = {**{k: v for k, v in ADDED_KEYS.items() if k in b}, **_flatten(before)}
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if differ:
      shown = ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in differ[:6])
      raise CheckpointError(
          f"--workdir={workdir} holds a run of a different config ({shown}). Use a new --workdir "
          f"for this config, or rerun with the original one to resume. Only "
          f"{', '.join(RESUMABLE_KEYS)} may change on resume.")
  with open(path, "w") as f:
    json.dump(now, f, indent=2)


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


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D `data` mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ("data",))


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch → one global array per key, split along `data`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def init_state(task, config):
  """(train graphdef, eval graphdef, state, optimizer) for a fresh run.

  The NNX model is split into (graphdef, params, rest): `rest` holds BatchNorm statistics and RNG
  stream counters. Train and eval graphdefs differ only in static flags (dropout, BN mode).
  """
  model = task.build_model(nnx.Rngs(config.seed, params=config.seed, dropout=config.seed + 1))
  model.train()
  graph_train, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  graph_eval = nnx.split(model, nnx.Param, ...)[0]
  tx = make_optimizer(config)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "opt_state": tx.init(params)}
  if ema_decay(config):                          # ē_0 = θ_0, its own buffers (both are donated)
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return graph_train, graph_eval, state, tx


def restore_eval_model(task, config, workdir: str):
  """(eval-mode model, step) from the newest checkpoint in `workdir`, or None if it has none.

  For scripts that read a finished run back (sample tables, FID features); the state tree comes
  from `init_state`, so the config must be the run's own (its `config.json`). A run with
  `ema_decay` gives its EMA parameters, the ones its own evals scored.
  """
  _, graph_eval, state, _ = init_state(task, config)
  ckpt = Checkpointer(workdir)
  try:
    restored = ckpt.restore_latest(state)
  finally:
    ckpt.close()
  if restored is None:
    return None
  state = restored[0]
  model = nnx.merge(graph_eval, state.get("ema_params", state["params"]), state["rest"])
  model.eval()
  return model, int(state["step"])


def make_train_step(task, config, graph_train, tx):
  """The pure step `(state, batch) -> (state, metrics)`, to be jitted with shardings."""
  base_key, schedule = jax.random.key(config.seed), make_schedule(config)
  decay = ema_decay(config)

  def train_step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])     # same noise on resume

    def loss_fn(params, rest):
      # copy=True: fresh Variables owned by this trace, so BatchNorm may update its statistics.
      m = nnx.merge(graph_train, params, rest, copy=True)
      loss, metrics = task.loss(m, batch, key)
      return loss, (metrics, nnx.split(m, nnx.Param, ...)[2])

    (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["rest"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "rest": rest, "opt_state": opt_state}
    if decay:
      new_state["ema_params"] = ema_update(state["ema_params"], new_state["params"], decay,
                                           state["step"])
    metrics = {"loss": loss, **metrics, "grad_norm": global_norm(grads),
               "learning_rate": schedule(state["step"])}
    return new_state, metrics

  return train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train `config` in `workdir` (resuming if it holds a checkpoint); returns the summary."""
  t_start = time.time()
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  check_workdir(config, workdir)
  task = get_task(config)
  mesh = make_mesh()
  if config.batch_size % jax.device_count():
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{jax.device_count()} devices of the mesh; use a multiple of it")
  replicated, by_data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  is_chief = jax.process_index() == 0

  graph_train, graph_eval, state, tx = init_state(task, config)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  state = jax.device_put(state, replicated)

  train_iter = data.make_iterator(task.train_source(), seed=config.seed, shuffle=True,
                                  batch_size=config.batch_size // jax.process_count(),
                                  transform=task.train_transform())
  ckpt = Checkpointer(workdir)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, data_state = restored
    train_iter.set_state(data_state)
  start = int(state["step"])
  total = config.num_train_steps
  logging.info("%s: %s params | %d %s device(s) | %s from step %d to %d | workdir %s",
               config.get("name", config.task), f"{n_params:,}", jax.device_count(),
               jax.default_backend(), "resuming" if start else "training", start, total, workdir)

  def eval_step(params, rest, batch):
    return task.eval_metrics(nnx.merge(graph_eval, params, rest), batch)

  train_step = jax.jit(make_train_step(task, config, graph_train, tx), in_shardings=(replicated, by_data),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(replicated, replicated, by_data),
                      out_shardings=replicated)

  def evaluate(state, step) -> dict[str, float]:
    """Metrics of the EMA parameters when the run keeps them, plus `raw_*` of the raw ones
    (whose sample grids go to workdir/raw_params/); of the raw parameters otherwise."""
    if "ema_params" not in state:
      return evaluate_params(state["params"], state["rest"], step, workdir)
    raw_dir = os.path.join(workdir, "raw_params")
    os.makedirs(raw_dir, exist_ok=True)
    raw = evaluate_params(state["params"], state["rest"], step, raw_dir)
    return {**evaluate_params(state["ema_params"], state["rest"], step, workdir),
            **{f"raw_{k}": v for k, v in raw.items()}}

  def evaluate_params(params, rest, step, out_dir) -> dict[str, float]:
    results = {}
    for split, source in task.eval_sources().items():
      it = data.make_iterator(source, batch_size=config.get("eval_batch_size", config.batch_size)
                              // jax.process_count(), seed=0, shuffle=False, num_epochs=1,
                              drop_remainder=False, pad_remainder=True)
      sums = None
      for batch in it:
        m = eval_step(params, rest, to_global(batch, by_data))
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
      sums = jax.device_get(sums)
      count = sums.pop("count")
      results.update({f"{split}_{k}": float(v / count) for k, v in sums.items()})
    results.update(task.after_eval(nnx.merge(graph_eval, params, rest), out_dir, step)
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
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"the loss became {m['loss']} (grad norm {m['grad_norm']}) at step {first + i}; the "
            f"run stopped. The last good checkpoint (step {last}) is kept in {ckpt.directory}. "
            "Rerun the same command with a lower --config.learning_rate to resume from it.")
    pending.clear()
    mean = {f"train_{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
    rate = progress.rate(step)
    if writer:
      writer.write(step, {**mean, "steps_per_sec": rate})
    progress.log(step, rate, {k: v for k, v in mean.items() if k != "train_learning_rate"})

  step, eval_metrics = start, {}
  try:
    while step < total:
      batch = to_global(next(train_iter), by_data)
      state, metrics = train_step(state, batch)
      step += 1
      pending.append(metrics)
      if len(pending) >= 2:
        # Keep at most one step in flight: async dispatch would otherwise let the host run
        # hundreds of steps ahead, and a SIGTERM would wait for all of them.
        pending[-2]["loss"].block_until_ready()
      last = step == total
      if step % config.log_every_steps == 0 or last or stop.signum:
        flush(step)
      if step % config.eval_every_steps == 0 or last:
        eval_metrics = evaluate(state, step)
        if writer:
          writer.write(step, eval_metrics)
        logging.info("eval at step %d: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
      if step % config.checkpoint_every_steps == 0 or last or stop.signum:
        flush(step)                      # never checkpoint a state that has gone non-finite
        ckpt.save(step, state, json_safe(train_iter.get_state()))
      if stop.signum:
        logging.warning("stopped by signal %d at step %d; checkpoint saved. Rerun the same "
                        "command to resume.", stop.signum, step)
        break
  finally:
    stop.restore()
    ckpt.close()
    if writer:
      writer.close()

  summary = {"name": config.get("name", config.task), "step": step, "finished": step >= total,
             "num_params": int(n_params), **eval_metrics, "backend": jax.default_backend(),
             "device_count": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
             "session_seconds": round(time.time() - t_start, 1)}
  if is_chief:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    writer.plot_curves(workdir, title=f"{summary['name']} — {workdir}")
    logging.info("done at step %d in %s: %s", step, format_seconds(summary["session_seconds"]),
                 json.dumps({k: v for k, v in eval_metrics.items()}))
  return summary
