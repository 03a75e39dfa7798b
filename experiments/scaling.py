"""A tiny scaling study: char-GPT validation loss vs model size at a fixed token budget.

Kaplan et al. 2001.08361 (eq. (1.1) with the irreducible term of Hoffmann et al. 2203.15556,
eq. (2), dropping its data term because D is fixed):

    L(N) = a · N^(−α) + c          N = non-embedding parameters (Kaplan's convention)

Every size is the `shakespeare_char` config (nanoGPT's optimizer: AdamW lr 1e-3, β₂ 0.99,
decay on matrices, warmup, cosine to lr/10; 4 heads, batch 12, context 64) with `d_model` set
to one of `--sizes`, trained for `--budget_tokens` tokens (steps = budget / (batch · context))
by the launcher's own loop (`train.train_and_evaluate`, one workdir per size, so a rerun resumes
and finished sizes are read back), then fitted with `scipy.optimize.curve_fit`.

    python -m genfm.experiments.scaling --workdir=runs/char_scaling

(defaults: `--budget_tokens=3072000` = 4,000 steps of 12 × 64, `--sizes=16,32,64,96,128`)
writes `workdir/d<width>/` (a normal run each), `scaling.json` (per size: N, total params,
steps, val loss on 1,000 validation windows, seconds; the fit) and `scaling.png`.

Measured (this command; 2-core CPU shared with a diffusion training run, so wall times are
~1.5-2x an idle machine's; 31 min in all):

    width   N (non-emb.)   params    val loss (nats/char)   wall
      16        13,152      15,520        2.3728              68 s
      32        50,880      55,616        2.0860             126 s
      64       200,064     209,536        1.8571             375 s
      96       447,552     461,760        1.7718             706 s
     128       793,344     812,288        1.7176             584 s

    fit: L(N) = 11.06 · N^(−0.250) + 1.346    (α ± 0.030 s.e., rms residual 0.0054)

Over 1.8 decades of N the curve bends as the law says, and the irreducible term is
identified (c = 1.35 nats/char: what this model family approaches at 3.1M tokens). The d128
point is the `shakespeare_char` model trained 2× longer (1.88 at 2,000 steps → 1.72 here).

At a quarter of the budget (`--budget_tokens=768000`, 1,000 steps, widths 16/24/32/48/64/96/128:
2.650/2.562/2.478/2.391/2.326/2.196/2.091) the points steepen with N instead of flattening —
every size is far from converged, larger ones gain most from each step — so the fit puts c at
its bound 0 (α = 0.056 ± 0.097): a fixed-budget law needs a budget at which the small models
have nearly converged.
"""

import json
import logging as py_logging
import math
import os
import sys
from typing import Sequence

import numpy as np
from absl import app, flags, logging

from genfm.experiments.errors import ConfigError, UserError

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags, defined only when it runs as a script: importing the module next to
  the launcher (which owns --workdir) must not define a flag twice."""
  flags.DEFINE_string("workdir", None,
                      "Directory: one sub-run per size, scaling.json, scaling.png.")
  flags.DEFINE_integer("budget_tokens", 3_072_000,
                       "Training tokens per size (batch·context·steps).")
  flags.DEFINE_list("sizes", ["16", "32", "64", "96", "128"], "Model widths d_model.")
  flags.DEFINE_integer("num_layers", 4, "Depth, the same for every size.")
  flags.DEFINE_integer("num_heads", 4, "Heads, the same for every size (divides every width).")
  flags.DEFINE_integer("context_len", 64, "Context length T.")
  flags.DEFINE_integer("batch_size", 12, "Batch size B.")
  flags.DEFINE_integer("eval_windows", 1000, "Validation windows of T tokens for the final loss.")
  flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate, the same for every size.")


def power_law(n, a, alpha, c):
  """L(N) = a·N^(−α) + c (eq. (1.1) of 2001.08361 plus an irreducible loss c)."""
  return a * np.power(n, -alpha) + c


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> dict[str, float]:
  """Least-squares (a, α, c) of `power_law` through the points (N_i, L_i); needs ≥ 3 sizes.

  N is divided by its geometric mean N₀ before fitting, so a' = a·N₀^(−α) is O(loss) and the
  problem is well conditioned; a is converted back. c is bounded to [0, min L] (a loss floor
  above a measured loss would make a < 0), α to (0, 3].
  """
  n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
  if n.shape != loss.shape or n.ndim != 1 or n.size < 3:
    raise ValueError(f"fit_power_law needs ≥ 3 (N, loss) pairs of equal length, got "
                     f"{n.shape} and {loss.shape}")
  if np.any(n <= 0):
    raise ValueError(f"parameter counts must be > 0, got {n}")
  from scipy import optimize  # pylint: disable=g-import-not-at-top

  n0 = float(np.exp(np.mean(np.log(n))))
  x = n / n0
  spread = float(loss.max() - loss.min()) or 1e-3
  p0 = (spread, 0.5, float(loss.min()) - spread)
  p0 = (p0[0], p0[1], max(p0[2], 0.0))
  popt, pcov = optimize.curve_fit(
      power_law, x, loss, p0=p0, bounds=([0.0, 1e-6, 0.0], [np.inf, 3.0, float(loss.min())]),
      maxfev=20_000)
  a_scaled, alpha, c = (float(v) for v in popt)
  resid = loss - power_law(x, *popt)
  return {"a": a_scaled * n0**alpha, "alpha": alpha, "c": c,
          "alpha_stderr": float(np.sqrt(pcov[1, 1])) if np.all(np.isfinite(pcov)) else math.nan,
          "rms_residual": float(np.sqrt(np.mean(resid**2)))}


def size_config(width: int, budget_tokens: int, *, num_layers: int = 4, num_heads: int = 4,
                context_len: int = 64, batch_size: int = 12, eval_windows: int = 1000,
                learning_rate: float = 1e-3):
  """`shakespeare_char` at width `width`, run for ⌊budget / (B·T)⌋ steps, eval at the end."""
  from genfm.experiments.configs import shakespeare_char  # pylint: disable=g-import-not-at-top

  if width <= 0 or width % num_heads:
    raise ConfigError(f"width {width} must be a positive multiple of num_heads={num_heads}")
  steps = budget_tokens // (batch_size * context_len)
  if steps < 1:
    raise ConfigError(f"budget_tokens={budget_tokens} is less than one batch of "
                      f"{batch_size}·{context_len} tokens")
  c = shakespeare_char.get_config()
  c.name = f"char_scaling_d{width}"
  c.model.update({"d_model": width, "num_layers": num_layers, "num_heads": num_heads,
                  "context_len": context_len})
  c.batch_size, c.learning_rate = batch_size, learning_rate
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = steps
  c.log_every_steps = max(1, min(100, steps // 4))
  c.warmup_steps = max(1, min(100, steps // 10))
  c.eval_windows = eval_windows
  c.eval_batch_size = math.gcd(eval_windows, 200)
  c.sample_new_tokens = 0  # no samples: the study wants the loss only
  return c


def non_embedding_params(config, vocab_size: int) -> int:
  """N of 2001.08361: all parameters minus the token and position tables."""
  from genfm.experiments.tasks.lm import LanguageModelTask  # pylint: disable=g-import-not-at-top
  from genfm.transformers import gpt  # pylint: disable=g-import-not-at-top

  cfg = LanguageModelTask._gpt_config(config, vocab_size)  # pylint: disable=protected-access
  n = gpt.param_count(cfg) - cfg.vocab_size * cfg.d_model
  return n - (cfg.context_len * cfg.d_model if cfg.positions == "learned" else 0)


def _finished(run_dir: str, steps: int) -> dict | None:
  """The summary of a run that already finished all `steps` (a rerun reads it back: resuming a
  finished run would train nothing and report no validation loss)."""
  path = os.path.join(run_dir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  done = summary.get("step") == steps and "validation_loss" in summary
  return summary if done else None


def run_study(workdir: str, widths: Sequence[int], budget_tokens: int, **size_kwargs) -> dict:
  """Train every width through the launcher's loop; fit when ≥ 3 sizes; write json + png."""
  from genfm.experiments import train  # pylint: disable=g-import-not-at-top
  from genfm.experiments.data import text as text_data  # pylint: disable=g-import-not-at-top

  vocab = len(set(text_data.load_text("shakespeare", "train")))
  runs = []
  for width in widths:
    config = size_config(int(width), budget_tokens, **size_kwargs)
    run_dir = os.path.join(workdir, f"d{width}")
    summary = _finished(run_dir, config.num_train_steps)
    if summary is None:  # a fresh run, or a resume of an interrupted one
      summary = train.train_and_evaluate(config, run_dir)
    if not summary["finished"]:  # SIGTERM / SIGINT: the run checkpointed; stop the study too
      raise UserError(f"the d{width} run stopped at step {summary['step']} of "
                      f"{config.num_train_steps}; rerun the same command to resume the study")
    runs.append({"d_model": int(width), "non_embedding_params": non_embedding_params(config, vocab),
                 "params": summary["num_params"], "steps": summary["step"],
                 "tokens": summary["step"] * config.batch_size * config.model.context_len,
                 "validation_loss": summary["validation_loss"],
                 "seconds": summary["session_seconds"]})
    logging.info("scaling: d=%d N=%d val %.4f", width, runs[-1]["non_embedding_params"],
                 runs[-1]["validation_loss"])
  fit = None
  if len(runs) >= 3:
    fit = fit_power_law([r["non_embedding_params"] for r in runs],
                        [r["validation_loss"] for r in runs])
  result = {"budget_tokens": budget_tokens, "runs": runs, "fit": fit}
  with open(os.path.join(workdir, "scaling.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.join(workdir, "scaling.png"))
  return result


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  n = np.array([r["non_embedding_params"] for r in result["runs"]], np.float64)
  loss = np.array([r["validation_loss"] for r in result["runs"]])
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.plot(n, loss, "o", label="measured (val, nats/char)")
  fit = result["fit"]
  if fit:
    grid = np.geomspace(n.min() / 1.5, n.max() * 4, 100)
    ax.plot(grid, power_law(grid, fit["a"], fit["alpha"], fit["c"]), "-",
            label=f"{fit['a']:.3g}·N^(−{fit['alpha']:.3f}) + {fit['c']:.3f}")
    if fit["c"] > 0.8 * loss.min():  # draw the floor only where it does not squash the points
      ax.axhline(fit["c"], ls=":", c="gray", lw=1)
  ax.set_xscale("log")
  ax.set_xlabel("non-embedding parameters N")
  ax.set_ylabel("validation loss")
  ax.set_title(f"char GPT, {result['budget_tokens']:,} tokens per size")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


class _QuietLibraries(py_logging.Filter):
  """Only warnings and errors from Orbax / grain, so the per-size progress lines stay readable."""

  def filter(self, record):
    noisy = any(lib in record.pathname for lib in ("orbax", "grain", "xla_bridge"))
    return record.levelno >= py_logging.WARNING or not noisy


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  try:
    widths = [int(s) for s in FLAGS.sizes]
  except ValueError:
    raise app.UsageError(f"--sizes must be integers (widths), got {FLAGS.sizes}") from None
  os.makedirs(FLAGS.workdir, exist_ok=True)
  try:
    result = run_study(FLAGS.workdir, widths, FLAGS.budget_tokens, num_layers=FLAGS.num_layers,
                       num_heads=FLAGS.num_heads, context_len=FLAGS.context_len,
                       batch_size=FLAGS.batch_size, eval_windows=FLAGS.eval_windows,
                       learning_rate=FLAGS.learning_rate)
  except UserError as e:  # one line, as the launcher prints it
    print(f"genfm: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
