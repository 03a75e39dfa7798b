r"""Sample quality vs network evaluations (NFE) across diffusion families on images.

One table and one figure that put trained Fashion-MNIST runs of different families side by side
at equal NFE, with one FD protocol (`diffusion/fashion_fid.py`: LeNet features, n guided samples
with labels i mod C, the same reference set and real-vs-real floor for every row):

  diffusion_image, kind "ddpm"   DDIM, η = 0 (arXiv:2010.02502) at n steps: NFE n
  diffusion_image, kind "flow"   Euler on dx/dt = v (arXiv:2210.02747 / 2209.03003) at n steps:
                                 NFE n; Heun at n/2 steps for even n ≥ 2 (2 evaluations a step)
  consistency                    Algorithm 1 of arXiv:2303.01469 on the run's 1- and 2-step σ's:
                                 NFE 1 and 2 only (other rows are blank, not extrapolated)

NFE counts evaluations of the guided model: classifier-free guidance's conditional and
unconditional branches are one batched evaluation (as in the DDIM / DiT tables); in network
passes every guided row costs twice its NFE, the consistency student (unguided) once.

  python -m genfm.experiments.image_nfe --runs=runs/fashion_ddpm,runs/fashion_dit,runs/fashion_dit_flow,runs/fashion_cd \
      --out=runs/image_nfe --nfe=1,2,5,10,20,50

Writes image_nfe.{md,json,png} into --out (one sample grid per row at its largest NFE).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np
from absl import app
from absl import flags

from genfm.experiments import diffusion_steps
from genfm.experiments.errors import UserError
from genfm.experiments.tasks import get_task
from genfm.experiments.tasks.diffusion_image import save_grid

FLAGS = flags.FLAGS
TASKS = ("diffusion_image", "consistency")


def define_flags():
  """Defined only when run as a script (the launcher owns other flags of the same process)."""
  flags.DEFINE_list("runs", None, "Workdirs of trained diffusion_image / consistency runs.")
  flags.DEFINE_string("out", None, "Directory for image_nfe.{md,json,png}.")
  flags.DEFINE_list("nfe", ["1", "2", "5", "10", "20", "50"], "Network evaluations per sample.")
  flags.DEFINE_integer("num_samples", 500, "Samples per setting (and real images per FD set).")
  flags.DEFINE_string("fid_classifier_workdir", "", "FD classifier run (default: each run's).")


def load(workdir: str, num_samples: int, fid_workdir: str = ""):
  """(task, model(s), config, step) of a finished run, read-only; one-line errors otherwise."""
  return diffusion_steps.load_run(workdir, num_samples, tasks=TASKS,
                                  fid_classifier_workdir=fid_workdir)


def family(config) -> str:
  if config.task == "consistency":
    return f"CM ({config.cm.mode})"
  kind = config.diffusion.get("kind", "ddpm")
  backbone = "DiT" if config.model.get("kind", "unet") == "dit" else "U-Net"
  return f"{backbone} {'flow' if kind == 'flow' else 'DDPM'}"


def settings(config, nfe: int) -> list[tuple[str, dict]]:
  """(label, sampling arguments) of every way this run samples at exactly `nfe` evaluations."""
  if config.task == "consistency":
    sig = {1: config.cm.sample_sigmas_1step, 2: config.cm.sample_sigmas_2step}.get(nfe)
    return [] if sig is None else [(f"{nfe}-step", {"sigmas": tuple(sig)})]
  if config.diffusion.get("kind", "ddpm") == "flow":
    out = [("euler", {"sampler": "euler", "num_steps": nfe})]
    if nfe % 2 == 0:
      out.append(("heun", {"sampler": "heun", "num_steps": nfe // 2}))
    return out
  return [("ddim", {"sampler": "ddim", "num_steps": nfe})]


def draw(task, model, config, kw: dict) -> np.ndarray:
  n = config.eval.num_samples
  if config.task == "consistency":
    return task.cm_samples(model["student"], n, kw["sigmas"])
  return task.to_pixels(task.generate(model, n, kw["sampler"], num_steps=kw["num_steps"]))


def table(runs: Sequence[str], nfes: Sequence[int], num_samples: int, out: str,
          fid_workdir: str = "") -> list[dict]:
  rows, floor = [], None
  for workdir in runs:
    task, model, config, step = load(workdir, num_samples, fid_workdir)
    fid = task.fid_evaluator()
    if fid is None:
      raise ValueError(f"{workdir!r}: no FD classifier (config.fid_classifier_workdir is empty); "
                       "pass --fid_classifier_workdir.")
    floor = fid.floor
    for nfe in nfes:
      for label, kw in settings(config, nfe):
        t0 = time.time()
        samples = draw(task, model, config, kw)
        row = {"run": os.path.basename(os.path.normpath(workdir)), "family": family(config),
               "sampler": label, "nfe": nfe, "step": step, "fd": float(fid(samples)),
               "fd_floor": float(fid.floor), "seconds": time.time() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if nfe == max(nfes) or (config.task == "consistency" and nfe == 2):
          save_grid(os.path.join(out, f"{row['run']}_{label}_nfe{nfe}.png"), samples,
                    task.balanced_labels(num_samples), task.num_classes, 10, None,
                    f"{row['family']} {label}, NFE {nfe}: FD {row['fd']:.2f}")
  write(out, rows, nfes, floor, num_samples)
  return rows


def write(out: str, rows: list[dict], nfes: Sequence[int], floor: float, n: int) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  with open(os.path.join(out, "image_nfe.json"), "w") as f:
    json.dump(rows, f, indent=1)
  keys = list(dict.fromkeys((r["run"], r["family"], r["sampler"]) for r in rows))
  lines = [f"FD (n = {n}, real-vs-real floor {floor:.2f}) vs NFE\n", "| run | family | sampler | "
           + " | ".join(f"NFE {n}" for n in nfes) + " |",
           "|---|---|---|" + "---|" * len(nfes)]
  fig, ax = plt.subplots(figsize=(6, 4))
  for run, fam, sampler in keys:
    mine = {r["nfe"]: r["fd"] for r in rows if (r["run"], r["family"], r["sampler"]) ==
            (run, fam, sampler)}
    lines.append(f"| {run} | {fam} | {sampler} | "
                 + " | ".join(f"{mine[n]:.2f}" if n in mine else "" for n in nfes) + " |")
    xs = sorted(mine)
    ax.plot(xs, [mine[x] for x in xs], "o-", label=f"{fam}, {sampler}")
  ax.axhline(floor, color="gray", ls=":", label="real-vs-real floor")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("network evaluations (NFE)")
  ax.set_ylabel("FD (LeNet features)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "image_nfe.png"), dpi=120)
  plt.close(fig)
  with open(os.path.join(out, "image_nfe.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main(argv):
  del argv
  if not FLAGS.runs or not FLAGS.out:
    raise app.UsageError("--runs and --out are required.")
  os.makedirs(FLAGS.out, exist_ok=True)
  try:
    nfes = sorted({int(n) for n in FLAGS.nfe})
  except ValueError:
    raise app.UsageError(f"--nfe must list integers, got {FLAGS.nfe}") from None
  if nfes[0] < 1:
    raise app.UsageError(f"NFE < 1 in --nfe={FLAGS.nfe}; every entry must be ≥ 1.")
  try:
    table(FLAGS.runs, nfes, FLAGS.num_samples, FLAGS.out, FLAGS.fid_classifier_workdir)
  except (OSError, ValueError, UserError) as e:
    sys.exit(f"image_nfe: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
