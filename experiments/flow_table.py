"""The 2-D NFE table of issue #19: energy distance / data floor of DDPM, FM, RF, 2-RF and OT-CFM
at 1, 2, 5, 10 and 100 network evaluations, and path straightness before and after reflow.

    python -m genfm.experiments.flow_table --runs=runs --prefix=toy2d_flow_ [--out=DIR]

reads the finished workdirs `<runs>/<prefix><method>_<dataset>` (method ∈ ddpm | fm | rf |
reflow | otcfm, dataset ∈ moons | eight_gaussians | swiss_roll; trained by
`configs/toy2d_ddpm.py:<dataset>` and `configs/toy2d_flow.py:<method>_<dataset>`), missing ones
left blank, and writes `flow_table.md`, `flow_table.json` and `flow_nfe.png` into --out
(default `<runs>/<prefix>table`).

Protocol (the one of `tasks/toy2d_eval.py`, so the numbers match the runs' own evals):
n = eval.num_samples (2000) samples from one fixed key, the same noise for every flow model;
energy distance (V-statistic) to n held-out test points, divided by the distance between that
reference and a disjoint n-subset of the test set (the floor). Samplers at NFE k: Euler with k
steps for the flow models (t = 0 noise → 1 data); for DDPM, DDIM (η = 0) and DPM-Solver++(2M)
with k steps (one network evaluation each). Straightness: eq. (2) of 2209.03003 along 100-step
Euler paths of the learned ODE from the same noise.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from genfm.diffusion import flow
from genfm.diffusion import metrics
from genfm.experiments import data
from genfm.experiments.tasks.diffusion2d import load_run



def define_flags():
  """Defined only when run as a script: importing this module (tests, notebooks) next to the
  launcher must not define flags twice."""
  flags.DEFINE_string("runs", "runs", "folder holding the workdirs")
  flags.DEFINE_string("prefix", "toy2d_flow_", "workdir name prefix: <prefix><method>_<dataset>")
  flags.DEFINE_string("out", "", "output folder (default <runs>/<prefix>table)")

NFES = (1, 2, 5, 10, 100)
DATASETS = ("moons", "eight_gaussians", "swiss_roll")
# (row label, workdir method, DDPM sampler or None for the flow models' Euler)
ROWS = (("DDPM + DDIM", "ddpm", "ddim"), ("DDPM + DPM-Solver++", "ddpm", "dpm_solver_pp"),
        ("FM (σ_min 0.01)", "fm", None), ("RF (1-RF)", "rf", None),
        ("2-RF (reflow)", "reflow", None), ("OT-CFM", "otcfm", None))


def reference(config) -> tuple[np.ndarray, float]:
  """(reference test points [n, 2], floor) exactly as toy2d_eval.evaluate draws them."""
  n = config.eval.num_samples
  test_N2 = data.load(config.dataset, "test").arrays["x"]
  perm = np.random.default_rng(config.eval.sample_seed).permutation(test_N2.shape[0])
  ref_N2, other_N2 = test_N2[perm[:n]], test_N2[perm[n:2 * n]]
  return ref_N2, float(metrics.energy_distance(other_N2, ref_N2))


def floor_spread(config, seeds: int = 5) -> list[float]:
  """The floor for `seeds` different test splits (seed 0 is the protocol's): how noisy one
  floor is — a ratio below 1 is within this spread, not better than the data."""
  n = config.eval.num_samples
  test_N2 = data.load(config.dataset, "test").arrays["x"]
  out = []
  for s in range(seeds):
    perm = np.random.default_rng(s).permutation(test_N2.shape[0])
    out.append(float(metrics.energy_distance(test_N2[perm[n:2 * n]], test_N2[perm[:n]])))
  return out


def evaluate_run(workdir: str, ddpm_sampler: str | None) -> dict:
  """{"ratio": {nfe: energy / floor}, "energy": {...}, "floor", "straightness"} of one run."""
  config, task, model = load_run(workdir)
  ref_N2, floor = reference(config)
  n, key = config.eval.num_samples, jax.random.key(config.eval.sample_seed)
  graphdef, state = nnx.split(model)
  if ddpm_sampler is not None:
    config.diffusion.sampler = ddpm_sampler     # sample_at_nfe: DDIM unless dpm_solver_pp
  out = {"workdir": workdir, "floor": floor, "energy": {}, "ratio": {},
         "floor_seeds": floor_spread(config)}
  for k in NFES:
    fn = jax.jit(lambda s, k=k: task.sample_at_nfe(nnx.merge(graphdef, s), key, n, k))
    x_N2 = np.asarray(fn(state))
    ed = (float(metrics.energy_distance(x_N2, ref_N2)) if np.isfinite(x_N2).all()
          else float("inf"))
    out["energy"][k], out["ratio"][k] = ed, ed / floor
  if config.diffusion.kind == "flow":
    noise = jax.random.normal(key, (n, 2))
    out["straightness"] = float(jax.jit(lambda s: flow.straightness(
        task.velocity_fn(nnx.merge(graphdef, s)), noise, 100))(state))
  return out


def markdown(results: dict) -> str:
  lines = []
  for ds in DATASETS:
    runs = list(results.get(ds, {}).values())
    floors = sorted({f"{r['floor']:.4f}" for r in runs})
    spread = (f"; the floor over 5 test splits: {min(runs[0]['floor_seeds']):.4f}–"
              f"{max(runs[0]['floor_seeds']):.4f}" if runs else "")
    lines += [f"### {ds} (energy distance / floor; floor {', '.join(floors)}{spread})",
              "", "| method | " + " | ".join(f"NFE {k}" for k in NFES) + " | straightness |",
              "|---" * (len(NFES) + 2) + "|"]
    for label, _, _ in ROWS:
      r = results.get(ds, {}).get(label)
      if r is None:
        lines.append(f"| {label} | " + " | ".join("–" for _ in NFES) + " | |")
        continue
      s = f"{r['straightness']:.4f}" if "straightness" in r else ""
      lines.append(f"| {label} | " + " | ".join(f"{r['ratio'][k]:.2f}" for k in NFES)
                   + f" | {s} |")
    lines.append("")
  return "\n".join(lines)


def figure(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(DATASETS), figsize=(4.2 * len(DATASETS), 3.8), sharey=True)
  for ax, ds in zip(axes, DATASETS):
    for i, (label, _, _) in enumerate(ROWS):
      r = results.get(ds, {}).get(label)
      if r is not None:
        ax.plot(NFES, [r["ratio"][k] for k in NFES], marker="o", label=label, color=f"C{i}",
                ls="--" if label.startswith("DDPM") else "-")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhline(3.0, color="tab:red", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="NFE", title=ds)
  axes[0].set_ylabel("energy distance / data floor")
  handles = {h.get_label(): h for ax in axes for h in ax.get_lines() if h.get_marker() == "o"}
  fig.legend(list(handles.values()), list(handles), fontsize=7, loc="upper right")
  fig.suptitle("energy distance / floor vs NFE (dotted: floor; dashed red: 3× floor)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  out_dir = f.out or os.path.join(f.runs, f"{f.prefix}table")
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  for ds in DATASETS:
    for label, method, sampler in ROWS:
      workdir = os.path.join(f.runs, f"{f.prefix}{method}_{ds}")
      if not os.path.exists(os.path.join(workdir, "summary.json")):
        print(f"missing {workdir}; its row stays blank")
        continue
      results.setdefault(ds, {})[label] = evaluate_run(workdir, sampler)
      print(ds, label, {k: round(v, 3) for k, v in results[ds][label]["ratio"].items()},
            flush=True)
  table = markdown(results)
  print(table)
  with open(os.path.join(out_dir, "flow_table.md"), "w") as fh:
    fh.write(table)
  with open(os.path.join(out_dir, "flow_table.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  figure(results, os.path.join(out_dir, "flow_nfe.png"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
