"""LSTM vs GPT train step on the char task (`genfm-bench lstm_vs_gpt`), at equal parameters.

The two models of `shakespeare_lstm.py` (2-layer LSTM, width 220, 813,204 params) and
`shakespeare_char.py` (4-layer GPT, width 128, 812,288 params), each through the launcher's own
jitted train step (`ModelSet` + `make_train_step`: forward + backward + AdamW) on one real batch
of context 64, at the configs' batch 12 and at batch 64. One row `lstm_vs_gpt` per batch size:
seconds per step and tokens/s of each, and `lstm_over_gpt_tokens_per_sec`.
FLOPs: `model_flops_per_step` = 6·N·B·T (2 forward + 4 backward per weight per token, Kaplan et
al. arXiv:2001.08361 Sec. 2.1; the GPT's attention adds ~3 % at T = 64) is the same for both at
equal N, so the tokens/s ratio is also the ratio of useful FLOP/s. XLA's cost analysis is not
used: it counts a `lax.scan` body once, not T times, and would undercount the LSTM 64-fold.
The LSTM's 64 time steps run one after another ([B, D] × [D, 4D] matmuls in a scan) where the
GPT's run as [B·T, D] matmuls plus a T × T attention, so the winner depends on B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genfm.experiments import bench, data
from genfm.experiments.configs import shakespeare_char, shakespeare_lstm
from genfm.experiments.models import ModelSet
from genfm.experiments.step import make_train_step
from genfm.experiments.tasks import get_task

BATCH_SIZES = (12, 64)
ITERS = 5


def _step_seconds(task, cfg, batch_size: int) -> tuple[float, int]:
  """(median seconds of the launcher's train step on a real batch, parameter count)."""
  models = ModelSet(task, cfg)
  state = models.initial_state()
  step = jax.jit(make_train_step(task, cfg, models), donate_argnums=0)
  batch = jax.tree.map(jnp.asarray, next(data.make_iterator(task.train_source(),
                                                            batch_size=batch_size, seed=0)))
  holder = [state]

  def run(batch):
    holder[0], metrics = step(holder[0], batch)
    return metrics["loss"]

  return bench.time_fn(run, batch, warmup=1, iters=ITERS), models.counts()[1]


def lstm_vs_gpt(emit) -> None:
  tasks = {}
  for label, mod in (("lstm", shakespeare_lstm), ("gpt", shakespeare_char)):
    cfg = mod.get_config()
    cfg.sample_new_tokens, cfg.eval_windows = 0, 1   # the eval set is not used here
    tasks[label] = (get_task(cfg), cfg)
  T = tasks["gpt"][1].model.context_len
  for batch_size in BATCH_SIZES:
    row = {"name": "lstm_vs_gpt", "batch_size": batch_size, "context_len": T,
           "device": jax.devices()[0].device_kind}
    for label, (task, cfg) in tasks.items():
      t, n = _step_seconds(task, cfg, batch_size)
      row.update({f"{label}_params": n, f"{label}_seconds": t,
                  f"{label}_tokens_per_sec": batch_size * T / t,
                  f"{label}_model_flops_per_step": 6 * n * batch_size * T})
    row["lstm_over_gpt_tokens_per_sec"] = row["lstm_tokens_per_sec"] / row["gpt_tokens_per_sec"]
    emit(row)
