"""Run outputs in the workdir: `metrics.jsonl`, TensorBoard event files (`tb/`), PNG loss curves,
and the progress line (steps/s, ETA) on the log.
"""

import json
import os
import time

import matplotlib
matplotlib.use("Agg")                    # headless: figures go to PNG files
import matplotlib.pyplot as plt          # noqa: E402
from absl import logging                 # noqa: E402
from tensorboardX import SummaryWriter   # noqa: E402


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    # A run killed after its last checkpoint logged steps it will now redo: drop those lines,
    # and a last line the kill cut short (not JSON, or without a newline).
    if os.path.exists(self.path):
      kept = [l for l in open(self.path) if _step(l) is not None and _step(l) <= resume_step]
      with open(f"{self.path}.tmp", "w") as f:
        f.writelines(kept)
      os.replace(f"{self.path}.tmp", self.path)
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()

  def history(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(l) for l in f if _step(l) is not None]

  def plot_curves(self, workdir: str, title: str = "") -> str:
    """loss_curves.png: every train_* and eval metric against step, one panel per metric name."""
    rows = self.history()
    names = sorted({k for r in rows for k in r if k not in ("step", "steps_per_sec", "learning_rate")})
    bases = sorted({metric_base(n) for n in names})
    fig, axes = plt.subplots(1, max(len(bases), 1), figsize=(4.5 * max(len(bases), 1), 3.6),
                             squeeze=False)
    for ax, base in zip(axes[0], bases):
      for n in names:
        if metric_base(n) == base:
          pts = [(r["step"], r[n]) for r in rows if n in r]
          ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=n)
      ax.set_xlabel("step"), ax.set_title(base), ax.legend(), ax.grid(alpha=0.3)
      if base == "loss":
        ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    out = os.path.join(workdir, "loss_curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

  def close(self):
    self._tb.close()


def _step(line: str) -> int | None:
  """The step of a complete metrics.jsonl line, None for a cut or damaged one."""
  if not line.endswith("\n"):
    return None
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def metric_base(name: str) -> str:
  """The panel a metric is drawn in: its name without the `raw_` (un-averaged weights) and
  split (`train_`, `test_`, `validation_`) prefixes — test_loss, train_loss and raw_test_loss
  share "loss"; fd and raw_fd share "fd"; fd_floor keeps its own."""
  name = name.removeprefix("raw_")
  for split in SPLIT_PREFIXES:
    if name.startswith(split):
      return name[len(split):]
  return name


SPLIT_PREFIXES = ("train_", "test_", "validation_", "val_", "eval_")


class Progress:
  """Logs `step s/N | metrics | x steps/s | ETA` from wall-clock time between log calls."""

  def __init__(self, start_step: int, total_steps: int):
    self.total, self._t, self._s = total_steps, time.perf_counter(), start_step

  def rate(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self._s) / max(now - self._t, 1e-9)
    self._t, self._s = now, step
    return rate

  def log(self, step: int, rate: float, metrics: dict[str, float]) -> None:
    eta = (self.total - step) / max(rate, 1e-9)
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    logging.info("step %d/%d | %s | %.1f steps/s | ETA %s", step, self.total, shown, rate,
                 format_seconds(eta))


def format_seconds(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
