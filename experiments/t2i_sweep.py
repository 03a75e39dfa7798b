r"""Guidance-scale sweep and a negative-prompt example for a trained `text2image` run.

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. (6); scale s = 1 + w) trades
prompt adherence against diversity and fidelity (their Fig. 4 / Table 1: IS up, FID U-shaped).
For each scale s in `--scales`, n samples for the first n HELD-OUT prompts (test split, held-out
caption templates; the same prompts and noise at every s) are scored by the run's classifier:
  class_accuracy       the classifier's class of the sample equals the prompt's class;
  attribute_agreement  the prompt's extreme attribute words shown by the sample (chance ≈ 1/3);
  fd, fd_floor         Fréchet distance of classifier features to n real test images.
Writes `t2i_sweep.md` (table), `t2i_sweep.json`, `t2i_sweep.png` (accuracy and FD vs s).

Negative prompt (the unconditional branch conditioned on the negative text; `guidance.
guided_context_model`): `--prompt` sampled `--num_negative` times with the empty prompt and with
`--negative_prompt` as the unconditional branch, same noise and scale; the share of samples at
the level the negative prompt names (e.g. "dark") is measured on both, with their class accuracy.
Writes `t2i_negative.png` (two rows, same noise) and adds "negative" to `t2i_sweep.json`.

  python -m genfm.experiments.t2i_sweep --workdir=runs/fashion_t2i
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app
from absl import flags

from genfm.experiments.data import captions
from genfm.experiments.diffusion_steps import load_run

FLAGS = flags.FLAGS
NEGATIVE_EXAMPLE = {   # (prompt, negative prompt) per data set: the negative names an attribute
    "fashion_mnist": ("a photo of a shirt", "a photo of a dark shirt"),
    "digits": ("a photo of a two", "a photo of a thick two"),
}


def define_flags():
  """This script's flags, defined only when it runs as a script."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained text2image run.")
  flags.DEFINE_integer("num_samples", None, "Prompts (= samples) per scale; default: the run's "
                       "eval.num_samples.")
  flags.DEFINE_list("scales", ["1", "1.5", "2", "3", "5", "7.5"], "Guidance scales s = 1 + w.")
  flags.DEFINE_string("prompt", None, "Prompt of the negative-prompt example (default per data "
                      "set: 'a photo of a shirt').")
  flags.DEFINE_string("negative_prompt", None, "Its negative prompt (default 'a photo of a dark "
                      "shirt').")
  flags.DEFINE_integer("num_negative", 100, "Samples per row of the negative-prompt example.")
  flags.DEFINE_string("fid_classifier_workdir", "", "Override the run's classifier workdir.")
  flags.mark_flags_as_required(["workdir"])


def sweep(task, models, scales, n: int) -> list[dict]:
  """One row per scale: class accuracy, attribute agreement, FD and floor, seconds."""
  fid = task.fid_evaluator()
  if fid is None:
    raise ValueError("the run has no config.fid_classifier_workdir; the sweep needs it")
  prompts = task.heldout_prompts(n)
  rows = []
  for s in scales:
    t0 = time.time()
    samples = task.generate_text(models, prompts["text"], scale=s)
    rows.append({"scale": s, "n": n, "seconds": round(time.time() - t0, 1),
                 "class_accuracy": task.prompt_accuracy(samples, prompts["label"]),
                 "attribute_agreement": task.attribute_agreement(samples, prompts["label"],
                                                                 prompts["attributes"]),
                 "fd": fid(samples), "fd_floor": fid.floor})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def _named_attribute(dataset: str, prompt: str, negative: str):
  """(attribute index, level) of the first attribute word in the negative prompt that the
  prompt lacks, else None; and the class of the prompt."""
  words, prompt_words = captions.tokenize(negative), set(captions.tokenize(prompt))
  cls = [c for c, w in enumerate(captions.CLASS_WORDS[dataset]) if w in prompt_words]
  named = None
  for a, (_, (lo, hi)) in enumerate(captions.ATTRIBUTES[dataset]):
    for level, w in ((0, lo), (2, hi)):
      if w in words and w not in prompt_words and named is None:
        named = (a, level)
  return named, (cls[0] if cls else None)


def negative_example(task, models, prompt: str, negative: str, n: int, scale: float) -> dict:
  """Samples of `prompt` with the empty and with the negative prompt as the unconditional
  branch (same noise): the share at the level the negative names, and class accuracy."""
  dataset = task.config.dataset
  tokens = np.repeat(task.prompt_tokens([prompt]), n, axis=0)
  neg = task.prompt_tokens([negative])
  plain = task.generate_text(models, tokens, scale=scale)
  negd = task.generate_text(models, tokens, scale=scale, negative_tokens_BS=neg)
  named, cls = _named_attribute(dataset, prompt, negative)
  out = {"prompt": prompt, "negative_prompt": negative, "scale": scale, "n": n}
  for name, x in (("plain", plain), ("negative", negd)):
    if cls is not None:
      out[f"{name}_class_accuracy"] = task.prompt_accuracy(x, np.full(n, cls))
    if named is not None and cls is not None:
      from genfm.diffusion import fashion_fid  # pylint: disable=g-import-not-at-top
      images = fashion_fid.to_pixels(x, task.raw_image_shape())
      levels = captions.attribute_levels(dataset, images, np.full(n, cls))
      out[f"{name}_share_named_level"] = float(np.mean(levels[:, named[0]] == named[1]))
  if named is not None:
    attr, (lo, hi) = captions.ATTRIBUTES[dataset][named[0]]
    out["named_attribute"] = f"{attr} = {lo if named[1] == 0 else hi}"
  _plot_negative(os.path.join(FLAGS.workdir, "t2i_negative.png"), plain[:10], negd[:10], out)
  return out


def _plot_negative(path, plain, negd, info):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = len(plain)
  fig, axes = plt.subplots(2, cols, figsize=(1.2 * cols, 3.0), squeeze=False)
  for r, (row, name) in enumerate(((plain, "plain"), (negd, "negative"))):
    for c in range(cols):
      ax = axes[r, c]
      ax.imshow(np.clip((row[c][..., 0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    share = info.get(f"{name}_share_named_level")
    label = "negative: ∅" if name == "plain" else f"negative:\n{info['negative_prompt']}"
    if share is not None:
      label += f"\n{info.get('named_attribute', '')}: {share:.2f}"
    axes[r, 0].set_ylabel(label, fontsize=6)
  fig.suptitle(f"'{info['prompt']}', s = {info['scale']} (same noise per column)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(workdir: str, rows: list[dict], negative: dict | None, name: str,
                  step: int) -> None:
  lines = [f"Guidance sweep — {name} at step {step}: n = {rows[0]['n']} held-out prompts "
           f"(test split, held-out templates), same prompts and noise per scale; FD real-vs-real "
           f"floor {rows[0]['fd_floor']:.2f}", "",
           "| scale s | class accuracy | attribute agreement | FD | FD / floor | seconds |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {r['scale']:g} | {r['class_accuracy']:.3f} | {r['attribute_agreement']:.3f} | "
            f"{r['fd']:.2f} | {r['fd'] / r['fd_floor']:.1f} | {r['seconds']} |" for r in rows]
  if negative:
    lines += ["", f"Negative prompt: '{negative['prompt']}' at s = {negative['scale']}, n = "
              f"{negative['n']} each, same noise: " + ", ".join(
                  f"{k} {v:.3f}" for k, v in negative.items() if isinstance(v, float)
                  and k not in ("scale",))]
  with open(os.path.join(workdir, "t2i_sweep.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "t2i_sweep.json"), "w") as f:
    json.dump({"rows": rows, "negative": negative}, f, indent=2)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  s = [r["scale"] for r in rows]
  ax.plot(s, [r["class_accuracy"] for r in rows], "o-", color="tab:blue", label="class accuracy")
  ax.plot(s, [r["attribute_agreement"] for r in rows], "^-", color="tab:green",
          label="attribute agreement")
  ax.set_xlabel("guidance scale s = 1 + w")
  ax.set_ylabel("share of samples")
  ax.set_ylim(0, 1)
  ax2 = ax.twinx()
  ax2.plot(s, [r["fd"] for r in rows], "s--", color="tab:red", label="FD")
  ax2.axhline(rows[0]["fd_floor"], ls=":", color="gray", label="FD floor")
  ax2.set_ylabel(f"FD (n = {rows[0]['n']})")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
  ax.set_title(f"{name} step {step}: prompt adherence and FD vs guidance", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "t2i_sweep.png"), dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  try:
    task, models, config, step = load_run(FLAGS.workdir, FLAGS.num_samples, tasks=("text2image",),
                                          fid_classifier_workdir=FLAGS.fid_classifier_workdir)
    scales = [float(s) for s in FLAGS.scales]
    n = config.eval.num_samples
    rows = sweep(task, models, scales, n)
    prompt, negative = NEGATIVE_EXAMPLE[config.dataset]
    neg = negative_example(task, models, FLAGS.prompt or prompt,
                           FLAGS.negative_prompt or negative, FLAGS.num_negative,
                           config.diffusion.guidance_scale)
    print(json.dumps({"negative": neg}), flush=True)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"t2i_sweep: {e}") from None
  write_outputs(FLAGS.workdir, rows, neg, config.get("name", ""), step)


if __name__ == "__main__":
  define_flags()
  app.run(main)
