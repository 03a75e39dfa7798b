"""Reward against KL to the reference for preference / RL runs: the frontier of Fig. 2 (left) of
DPO (arXiv:2305.18290) at our scale.

Each run's evaluations give points (kl_to_reference, reward): the x axis is Σ_t log π/π_ref over
sampled test responses (nats per response), the y axis one of the runs' eval metrics, by
default `exact_match` (greedy test exact match: the verifiable reward; `test_exact_match` in RL
runs), or `style_rate` (the share of greedy test answers that follow the style rule, the win
rate by the rule against the SFT model). A run's points are joined in step order.

  python -m genfm.experiments.align_figure --out=runs/reward_vs_kl.png \\
      --runs=runs/pref_dpo,runs/pref_ipo,runs/rl_ppo,runs/rl_grpo [--metric=style_rate]
"""

from __future__ import annotations

import json
import os

import argparse


def points(workdir: str, metric: str) -> list[tuple[int, float, float]]:
  """(step, kl_to_reference, metric) of each evaluation of the run."""
  out = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      m = json.loads(line)
      kl = next((v for k, v in m.items() if k.endswith("kl_to_reference")), None)
      y = m.get(metric, m.get("test_" + metric))       # RL runs name it test_exact_match
      if kl is not None and y is not None:
        out.append((m.get("step", 0), kl, y))
  return out


def plot(runs: list[str], out: str, metric: str = "exact_match") -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for run in runs:
    pts = points(run, metric)
    if not pts:
      raise ValueError(f"{run} has no evaluation with kl_to_reference and {metric}")
    ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o",
            label=os.path.basename(os.path.normpath(run)))
  ax.set_xlabel("KL(π ‖ π_ref), nats per sampled response")
  ax.set_ylabel(metric)
  ax.set_title("reward vs KL (DPO Fig. 2 at char-GPT scale)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def main(argv=None) -> None:
  # argparse, not absl flags: module-level flags would clash with other scripts' on import.
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", required=True, help="run workdirs, comma-separated")
  ap.add_argument("--out", default="reward_vs_kl.png", help="PNG to write")
  ap.add_argument("--metric", default="exact_match", help="the eval metric on the y axis")
  args = ap.parse_args(argv)
  print(plot(args.runs.split(","), args.out, args.metric))


if __name__ == "__main__":
  main()
