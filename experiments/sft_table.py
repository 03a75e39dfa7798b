"""The fine-tuning table: one row per finished `instruct_char` run, plus the base it started from.

    python -m genfm.experiments.sft_table runs/sft_full runs/sft_lora4 ... [--out=runs/sft_table.md]

Columns: held-out exact match (test items; held-out templates), response loss, trainable
parameters (and their share of the base's), optimizer-state bytes and model bytes (from each
run's summary: measured on its state's arrays), the launcher's step time (measured here, in one
process, one method after another on the same machine: the runs' own logs share the CPU with
whatever else ran), and forgetting: the pretraining corpus' validation loss before (the base)
and after fine-tuning, on the same windows. The base row evaluates the `init_from` source itself.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import nnx

from genfm.experiments import data
from genfm.experiments.bench import time_fn
from genfm.experiments.init_from import initial_values
from genfm.experiments.models import ModelSet
from genfm.experiments.step import make_train_step
from genfm.experiments.tasks import get_task
from genfm.transformers import gpt

flags.DEFINE_string("out", "", "also write the markdown table to this file")


def _load(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, "summary.json")) as f:
    return config, json.load(f)


def step_seconds(task, config) -> float:
  """Median seconds of the launcher's jitted step on one real batch of the run's rows."""
  models = ModelSet(task, config)
  state = models.initial_state()
  src = task.train_source()
  batch = {k: jnp.stack([src[i][k] for i in range(config.batch_size)]) for k in src[0]}
  step = jax.jit(make_train_step(task, config, models), donate_argnums=0)
  holder = [state]

  def run(b):
    holder[0], metrics = step(holder[0], b)
    return metrics["loss"]

  return min(time_fn(run, batch, iters=20) for _ in range(2))


def evaluate_base(config) -> dict[str, float]:
  """The `init_from` source, unchanged (a full-fine-tuning task around it): corpus and test
  losses, exact match."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.peft.method, config.pack = "full", True
  task = get_task(config)
  models = ModelSet(task, config)
  values, _ = initial_values(config, task, models.values)
  model = models.eval_models(models.initial_state(values), ema=False)
  out, eval_step = {}, nnx.jit(task.eval_metrics)
  for split, source in task.eval_sources().items():
    sums = None
    for batch in data.make_iterator(source, batch_size=config.eval_batch_size, seed=0,
                                    shuffle=False, num_epochs=1, drop_remainder=False,
                                    pad_remainder=True):
      m = eval_step(model, batch)
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    out[f"{split}_loss"] = float(sums["loss"] / sums["count"])
  with tempfile.TemporaryDirectory() as tmp:
    out.update(task.after_eval(model, tmp, 0))
  return out


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give the workdirs of finished instruct_char runs")
  rows = []
  base_cfg = None
  for w in workdirs:
    config, summary = _load(w)
    base_cfg = base_cfg or config
    task = get_task(config)
    rows.append({"run": w, "method": config.peft.method, "config": config.name, **summary,
                 "step_seconds": step_seconds(task, config)})
  base = evaluate_base(base_cfg)
  n_base = gpt.param_count(get_task(base_cfg).model_config)
  lines = ["| method | run | test exact match | held-out templates | test loss | trainable "
           "params | % of base | optimizer state | model bytes | step (ms) | corpus loss "
           "(base → after) |", "|" + "---|" * 11]
  lines.append(f"| base (no fine-tuning) | {base_cfg.init_from} | "
               f"{base['test_exact_match']:.3f} | {base['heldout_exact_match']:.3f} | "
               f"{base['test_loss']:.3f} | 0 | 0 | 0 | — | — | {base['corpus_loss']:.3f} |")
  for r in rows:
    lines.append(
        f"| {r['config'].split(':')[-1]} | {r['run']} | {r['test_exact_match']:.3f} | "
        f"{r['heldout_exact_match']:.3f} | {r['test_loss']:.3f} | "
        f"{r['num_trainable_params']:,} | {100 * r['num_trainable_params'] / n_base:.2f} | "
        f"{r['optimizer_state_bytes'] / 1e6:.2f} MB | {r['model_bytes'] / 1e6:.2f} MB | "
        f"{1e3 * r['step_seconds']:.1f} | {base['corpus_loss']:.3f} → {r['corpus_loss']:.3f} |")
  table = "\n".join(lines)
  print(table)
  for r in rows:
    print(json.dumps({k: r[k] for k in r if "exact_match" in k or k in ("run", "method")}))
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write(table + "\n")
  return 0


if __name__ == "__main__":
  app.run(main)
