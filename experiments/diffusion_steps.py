r"""Sample quality vs sampling steps, and ODE bits/dim, for a trained `diffusion_image` run.

Quality vs steps as in the DDIM paper (Song et al. 2021, arXiv:2010.02502, Table 1 / Fig. 3):
the Fréchet distance (`diffusion/fashion_fid.py`: classifier features, real-vs-real floor at the
same n) of n guided samples from DDIM (η = 0) at 10/20/50/100 steps and from DDPM ancestral
sampling (arXiv:2006.11239, Algorithm 2) at all T = 1000 steps, with the same n, labels
(i mod C), guidance scale and reference set. Writes `diffusion_steps.md` (table),
`diffusion_steps.png` (FD vs steps) and `diffusion_steps.json` into the workdir, plus one sample
grid per setting.

Bits/dim (`--bpd_images K > 0`): the exact log-likelihood through the probability-flow ODE
(Song et al. 2021, arXiv:2011.13456, Sec. 4.3 / App. D.2; `diffusion/likelihood.py`, Hutchinson
trace with one Rademacher probe, RK45 at rtol = atol = 1e-5 from t = 1e-5 to 1) of the first K
held-out test images, unconditional (null label). The ε-network trained on DDPM's linear β
(1e-4 → 0.02, T = 1000) is read as a VP SDE (β 0.1 → 20, whose discretisation is exactly those
betas) with score s(x, t) = −ε_θ(x, 999 t) / σ(t), as the score_sde code does for DDPM models.
Pixels p ∈ {0..255} are uniformly dequantised, x = (p + u)/128 − 1 with u ~ U[0, 1), so
bits/dim = −log₂ p(x) / D + log₂ 128 (the "+7" of the [−1, 1] convention); D counts every
pixel the model sees, i.e. the padded 32×32 image for Fashion-MNIST (the 2-pixel border is
background the model learns to be constant; it is dequantised like every other pixel).

  python -m genfm.experiments.diffusion_steps --workdir=runs/fashion_ddpm --num_samples=500
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from genfm.diffusion import likelihood
from genfm.diffusion import sde as sde_lib
from genfm.experiments import data
from genfm.experiments import train
from genfm.experiments.tasks import get_task
from genfm.experiments.tasks.diffusion_image import save_grid

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags, defined only when it runs as a script: importing the module next to
  the launcher (which owns --workdir) must not define a flag twice."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained diffusion_image run.")
  flags.DEFINE_integer("num_samples", 500, "Samples per setting (and real images per FD set).")
  flags.DEFINE_list("ddim_steps", ["10", "20", "50", "100"], "DDIM step counts (η = 0).")
  flags.DEFINE_bool("ddpm", True, "Also DDPM ancestral sampling at all T steps (the slow row).")
  flags.DEFINE_integer("bpd_images", 8, "Held-out test images for ODE bits/dim (0: skip).")
  flags.DEFINE_integer("bpd_seed", 0, "Seed of the dequantisation noise and the Hutchinson probe.")
  flags.DEFINE_bool("fd", True, "Compute the FD table (False: bits/dim only).")
  flags.DEFINE_float("clip_x0", None, "Clip x̂_0 to [−c, c] while sampling (0: off); default: "
                     "the run's config.diffusion.clip_x0. Outputs of c > 0 are named *_clip<c>.")
  flags.mark_flags_as_required(["workdir"])


TIME_LABEL_SCALE = 999.0        # continuous t ∈ [0, 1] → the network's time label 999·t


def load_run(workdir: str, num_samples: int | None = None, clip_x0: float | None = None,
             tasks: tuple[str, ...] = ("diffusion_image",), fid_classifier_workdir: str = ""):
  """(task, model(s) in eval mode, config, step) of the newest checkpoint in `workdir`; the
  sampling-only settings `num_samples`, `clip_x0` and the FD classifier may differ from the
  run's. `tasks`: the run tasks the caller can read (one-line error for any other)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} holds no run (no config.json); train one with "
                            "`python -m genfm.experiments.run --config=experiments/configs/"
                            f"fashion_ddpm.py --workdir={workdir}`.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task not in tasks:
    raise ValueError(f"{workdir!r} holds a {config.task!r} run; this script needs a "
                     f"{' / '.join(tasks)} run (e.g. experiments/configs/fashion_ddpm.py).")
  if num_samples is not None:
    config.eval.num_samples = num_samples
  if clip_x0 is not None:
    config.diffusion.clip_x0 = clip_x0
  if fid_classifier_workdir:
    config.fid_classifier_workdir = fid_classifier_workdir
  task = get_task(config)
  restored = train.restore_eval_model(task, config, workdir)
  if restored is None:
    raise FileNotFoundError(f"{workdir!r} has no checkpoint yet.")
  model, step = restored
  return task, model, config, step


def output_tag(config) -> str:
  """"" for unclipped sampling, "_clip<c>" otherwise: the suffix of the output files."""
  clip = config.diffusion.get("clip_x0", 0.0)
  return f"_clip{clip:g}" if clip else ""


def steps_table(task, model, config, workdir: str, step: int,
                ddim_steps: Sequence[int] = (10, 20, 50, 100), ddpm: bool = True) -> list[dict]:
  """FD per sampler setting, with wall time; writes the table, figure, json and grids."""
  fid = task.fid_evaluator()
  if fid is None:
    raise ValueError("the run has no config.fid_classifier_workdir; the table needs the FD.")
  n = config.eval.num_samples
  settings = [("ddim", int(s)) for s in ddim_steps]
  if ddpm:
    settings.append(("ddpm", config.diffusion.num_timesteps))
  rows = []
  for sampler, steps in settings:
    t0 = time.time()
    samples = task.to_pixels(task.generate(model, n, sampler, None if sampler == "ddpm" else steps))
    seconds = time.time() - t0
    fd = fid(samples)
    rows.append({"sampler": sampler, "steps": steps, "fd": fd, "fd_floor": fid.floor,
                 "seconds": round(seconds, 1), "n": n})
    print(json.dumps(rows[-1]), flush=True)
    save_grid(os.path.join(workdir, f"steps_{sampler}{steps}{output_tag(config)}.png"), samples,
              task.balanced_labels(n), task.num_classes, config.eval.get("grid_cols", 10),
              None, f"{sampler} {steps} steps{_clip_words(config)}: FD {fd:.2f} "
              f"(floor {fid.floor:.2f}, n = {n})")
    write_outputs(workdir, rows, config, step)
  return rows


def _clip_words(config) -> str:
  clip = config.diffusion.get("clip_x0", 0.0)
  return f", x̂_0 clipped to ±{clip:g}" if clip else ""


def write_outputs(workdir: str, rows: list[dict], config, step: int) -> None:
  s, tag = config.diffusion.guidance_scale, output_tag(config)
  lines = [f"FD (classifier features, n = {rows[0]['n']}) vs sampling steps — "
           f"{config.get('name', '')} at step {step}, guidance s = {s}{_clip_words(config)}; "
           "real-vs-real floor "
           f"{rows[0]['fd_floor']:.2f}", "",
           "| sampler | steps | FD | FD / floor | sampling time (s, CPU) |", "|---|---|---|---|---|"]
  lines += [f"| {'DDIM η=0' if r['sampler'] == 'ddim' else 'DDPM'} | {r['steps']} | "
            f"{r['fd']:.2f} | {r['fd'] / r['fd_floor']:.1f} | {r['seconds']} |" for r in rows]
  with open(os.path.join(workdir, f"diffusion_steps{tag}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, f"diffusion_steps{tag}.json"), "w") as f:
    json.dump(rows, f, indent=2)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ddim = [r for r in rows if r["sampler"] == "ddim"]
  ax.plot([r["steps"] for r in ddim], [r["fd"] for r in ddim], "o-", label="DDIM (η = 0)")
  for r in rows:
    if r["sampler"] == "ddpm":
      ax.plot([r["steps"]], [r["fd"]], "s", color="tab:red", label=f"DDPM ({r['steps']} steps)")
  ax.axhline(rows[0]["fd_floor"], ls="--", color="gray", label="real-vs-real floor")
  ax.set_xscale("log")
  ax.set_xlabel("sampling steps")
  ax.set_ylabel(f"FD (n = {rows[0]['n']})")
  ax.set_title(f"{config.get('name', '')}: quality vs steps (s = {s}{_clip_words(config)})",
               fontsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, f"diffusion_steps{tag}.png"), dpi=100)
  plt.close(fig)


def bits_per_dim(task, model, config, num_images: int, seed: int) -> dict:
  """ODE bits/dim of the first `num_images` test images (see the module docstring)."""
  if task.latent is not None:
    raise ValueError("bits/dim of a latent diffusion run would be of its latents, not of the "
                     "pixels; pass --bpd_images=0")
  if config.diffusion.schedule != "linear" or config.diffusion.num_timesteps != 1000:
    raise ValueError("bits/dim reads the network as the VP SDE (β 0.1 → 20), which matches "
                     "only the linear schedule with T = 1000.")
  if config.diffusion.prediction != "eps":
    raise ValueError("bits/dim needs an ε-prediction network.")
  images = data.load(config.dataset, "test").arrays["image"][:num_images]
  u_key, v_key = jax.random.split(jax.random.key(seed))
  pad = config.get("pad", 0)
  p_BHWC = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(np.float32)  # bg 0
  u_BHWC = jax.random.uniform(u_key, p_BHWC.shape)
  x_BHWC = (jnp.asarray(p_BHWC) + u_BHWC) / 128.0 - 1.0      # uniform dequantisation, [−1, 1)
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)

  def score_fn(x, t_B):
    eps = model(x, TIME_LABEL_SCALE * t_B)             # no labels: the null label, log p(x)
    return -eps / sde.marginal_std(t_B)[:, None, None, None]

  @jax.jit
  def run(x, key):
    return likelihood.log_likelihood(sde, score_fn, x, "rademacher", key, eps=1e-5,
                                     rtol=1e-5, atol=1e-5)

  t0 = time.time()
  logp_B, _, stats = run(x_BHWC, v_key)
  bpd_B = np.asarray(likelihood.bits_per_dim(logp_B, x_BHWC.shape, offset=7.0))
  out = {"bits_per_dim": float(bpd_B.mean()), "bits_per_dim_std": float(bpd_B.std()),
         "num_images": num_images, "dims": int(np.prod(x_BHWC.shape[1:])),
         "nfev": int(stats["nfev"]), "failed": bool(stats["failed"]),
         "seconds": round(time.time() - t0, 1), "per_image": bpd_B.round(4).tolist()}
  print(json.dumps(out), flush=True)
  return out


def main(argv):
  del argv
  task, model, config, step = load_run(FLAGS.workdir, FLAGS.num_samples, FLAGS.clip_x0)
  if FLAGS.fd:
    steps_table(task, model, config, FLAGS.workdir, step,
                [int(s) for s in FLAGS.ddim_steps], FLAGS.ddpm)
  if FLAGS.bpd_images > 0:
    out = bits_per_dim(task, model, config, FLAGS.bpd_images, FLAGS.bpd_seed)
    with open(os.path.join(FLAGS.workdir, "bits_per_dim.json"), "w") as f:
      json.dump({**out, "step": step}, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
