"""Contrastive image–text pre-training (CLIP, arXiv:2103.00020; SigLIP, arXiv:2303.15343) on the
offline captioned images of `experiments/data/captions.py`.

Train: a ViT image tower and a causal GPT text tower (`genfm.transformers.clip.CLIP`) on pairs
from the TRAIN split phrased by the TRAIN caption templates; the loss is the library's
`model.loss` ("clip": symmetric InfoNCE with a learned temperature, Fig. 3 of 2103.00020;
"siglip": pairwise sigmoid, Alg. 1 of 2303.15343). Captions repeat (a few hundred distinct
strings), so a batch holds duplicate captions that the loss treats as negatives; CLIP's data
have the same property at a smaller rate.

Eval, on the TEST split with the HELD-OUT caption templates (phrasings never trained on):
  test_zero_shot_accuracy  the class of highest cosine similarity to the image among the class
                           prompts (`captions.class_prompts`, averaged over ZERO_SHOT_TEMPLATES;
                           sec. 3.1.4 of 2103.00020) equals the label;
  i2t_r1/5, t2i_r1/5       image→text / text→image recall@k among the first
                           `eval.retrieval_images` test images and their held-out captions. A
                           retrieved item is correct when it has the query's semantics: the same
                           class and the same extreme-attribute words (both levels equal). Exact
                           identity is ill-defined here because many images share one caption
                           text; image→text therefore ranks the distinct caption strings
                           (`retrieval_distinct_captions` of them), text→image all the images.
                           `retrieval_chance_r1` is text→image recall@1 of a random ranking (the
                           mean over caption queries of the share of images with their semantics);
  probe_accuracy           a linear probe (sec. 3.2 of 2103.00020): multinomial logistic
                           regression on the frozen, L2-normalised image embeddings of the first
                           `eval.probe_images` train images, standardised per dimension with the
                           train statistics (an affine map, which a linear probe can undo; it
                           only conditions the optimisation), full-batch Adam for
                           `eval.probe_steps` steps with L2 penalty `eval.probe_l2`; accuracy
                           on the whole test split;
  temperature              1 / scale of the trained model.
Figures: temperature.png (train_temperature from metrics.jsonl against step) and
retrieval_step{N}.png (the top-5 test images for a few held-out captions).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments import data
from genfm.experiments.data import captions
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.transformers import clip, gpt, vit

ENCODE_BATCH = 500   # host-side encoding in chunks of this many images / captions


class CLIPTask(Task):
  """Captioned images → two towers → contrastive loss; zero-shot, retrieval and probe evals."""

  def __init__(self, config):
    super().__init__(config)
    if config.dataset not in captions.DATASETS:
      raise unknown_choice("config.dataset for the clip task", config.dataset, captions.DATASETS)
    m = config.model
    if m.loss not in clip.LOSSES:
      raise unknown_choice("config.model.loss", m.loss, clip.LOSSES)
    text_len, k = config.text_len, config.captions_per_image
    self._train = captions.load_captions(config.dataset, "train", templates="train",
                                         captions_per_image=k, seed=config.seed,
                                         text_len=text_len)
    self._test = captions.load_captions(config.dataset, "test", templates="heldout",
                                        captions_per_image=1, seed=config.seed,
                                        text_len=text_len)
    self.prompts_CMT = captions.class_prompts(config.dataset, text_len)
    h, w, c = self._train.info.image_shape
    v, t = m.vision, m.text
    try:
      self.model_config = clip.CLIPConfig(
          vision=vit.ViTConfig(image_size=(h, w), channels=c, patch=v.patch,
                               num_layers=v.num_layers, d_model=v.d_model,
                               num_heads=v.num_heads, pool=v.pool, positions=v.positions,
                               num_classes=None),
          text=gpt.GPTConfig(vocab_size=len(captions.VOCAB), context_len=text_len,
                             num_layers=t.num_layers, d_model=t.d_model, num_heads=t.num_heads),
          embed_dim=m.embed_dim, loss=m.loss, pad_id=captions.PAD, eos_id=captions.EOS)
    except ValueError as e:          # the library's one-line messages, e.g. a patch mismatch
      raise ConfigError(f"config.model: {e}") from None
    self._encode = None

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": self._test}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return clip.CLIP(self.model_config, rngs=rngs)

  def loss(self, model, batch: Batch, key: jax.Array):
    del key
    return model.loss(batch["image"], batch["text"])   # metrics include "temperature"

  def eval_metrics(self, model, batch: Batch):
    cls_CE = clip.zero_shot_classifier(model, jnp.asarray(self.prompts_CMT))
    logits_BC = clip.zero_shot_logits(model.encode_image(batch["image"]), cls_CE)
    mask_B = batch["mask"]
    correct_B = (logits_BC.argmax(-1) == batch["label"]).astype(jnp.float32)
    return {"zero_shot_accuracy": (correct_B * mask_B).sum(), "count": mask_B.sum()}

  # -- host-side evaluation ----------------------------------------------------------------------

  def _encoders(self):
    if self._encode is None:
      self._encode = (nnx.jit(lambda m, x: m.encode_image(x)),
                      nnx.jit(lambda m, t: m.encode_text(t)))
    return self._encode

  def _embed(self, model, arrays: np.ndarray, which: int) -> np.ndarray:
    """Embeddings [N, E] (which: 0 images, 1 captions) in chunks of ENCODE_BATCH; the last chunk
    is padded with copies of the first row, so each encoder compiles for one shape only."""
    fn, n = self._encoders()[which], len(arrays)
    pad = -n % ENCODE_BATCH
    arrays = np.concatenate([arrays, np.repeat(arrays[:1], pad, axis=0)]) if pad else arrays
    return np.concatenate([np.asarray(fn(model, jnp.asarray(arrays[i:i + ENCODE_BATCH])))
                           for i in range(0, len(arrays), ENCODE_BATCH)])[:n]

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    e = self.config.eval
    test = self._test.arrays
    n = min(e.retrieval_images, len(test["label"]))
    img_NE = self._embed(model, test["image"][:n], 0)
    txt_NE = self._embed(model, test["text"][:n], 1)
    key_N = semantics(test["label"][:n], test["attributes"][:n])
    out = retrieval_recalls(img_NE, txt_NE, key_N, text_N=test["text"][:n])
    out.update(self.linear_probe(model))
    out["temperature"] = float(1.0 / model.scale())
    plot_temperature(workdir)
    self._plot_retrieval(os.path.join(workdir, f"retrieval_step{step}.png"), img_NE, txt_NE,
                         test["image"][:n], test["text"][:n], key_N, step)
    return out

  def linear_probe(self, model) -> dict[str, float]:
    """Logistic regression on frozen normalised image embeddings (see the module docstring)."""
    e = self.config.eval
    train, test = data.load(self.config.dataset, "train"), data.load(self.config.dataset, "test")
    n = min(e.probe_images, len(train))
    x_NE = self._embed(model, train.arrays["image"][:n], 0)
    y_N = train.arrays["label"][:n]
    xt_NE = self._embed(model, test.arrays["image"], 0)
    mu_E, sd_E = x_NE.mean(0), x_NE.std(0) + 1e-6
    w, b = fit_logistic(jnp.asarray((x_NE - mu_E) / sd_E), jnp.asarray(y_N),
                        train.info.num_classes, e.probe_steps, e.probe_l2)
    acc = lambda x, y: float(np.mean(np.argmax(((x - mu_E) / sd_E) @ w + b, -1) == y))
    return {"probe_accuracy": acc(xt_NE, test.arrays["label"]),
            "probe_train_accuracy": acc(x_NE, y_N), "probe_images": float(n)}

  def _plot_retrieval(self, path, img_NE, txt_NE, images, texts, key_N, step, queries=4):
    """The top-5 images for the held-out captions of the first `queries` distinct semantics."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    _, first = np.unique(key_N, return_index=True)
    chosen = np.sort(first)[:queries]
    top_Q5 = np.argsort(-(txt_NE[chosen] @ img_NE.T), axis=1, kind="stable")[:, :5]
    fig, axes = plt.subplots(len(chosen), 5, figsize=(6.0, 1.45 * len(chosen)), squeeze=False)
    for row, q, top in zip(axes, chosen, top_Q5):
      for ax, t in zip(row, top):
        ax.imshow(images[t][..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        if key_N[t] == key_N[q]:            # a hit: the image has the caption's semantics
          for side in ax.spines.values():
            side.set_color("tab:green"), side.set_linewidth(3)
      hits = int((key_N[top] == key_N[q]).sum())
      row[2].set_title(f'"{captions.decode(texts[q])}"  ({hits}/5 match)', fontsize=8)
    fig.suptitle(f"{self.config.get('name', 'clip')} step {step}: top-5 test images per "
                 "held-out caption (green = same class and attribute words)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def semantics(label_N: np.ndarray, levels_N2: np.ndarray) -> np.ndarray:
  """int [N]: one id per (class, attribute levels); levels fix which adjective words appear."""
  return np.asarray(label_N) * 9 + np.asarray(levels_N2)[:, 0] * 3 + np.asarray(levels_N2)[:, 1]


def retrieval_recalls(img_NE: np.ndarray, txt_NE: np.ndarray, key_N: np.ndarray,
                      ks=(1, 5), text_N: np.ndarray | None = None) -> dict[str, float]:
  """Recall@k both ways, a hit being a retrieved item with the query's semantics (`key_N`).

  With `text_N` (the captions' token ids), image→text ranks the DISTINCT captions: identical
  strings have identical embeddings, and would otherwise fill an image's top-k with copies of
  one caption (recall@5 ≈ recall@1). Text→image ranks all N images.
  """
  txt_keys = key_N
  if text_N is not None:
    _, first = np.unique(np.asarray(text_N), axis=0, return_index=True)
    first = np.sort(first)
    txt_NE, txt_keys = txt_NE[first], key_N[first]
  out = {}
  for name, s, same in (("i2t", img_NE @ txt_NE.T, key_N[:, None] == txt_keys[None, :]),
                        ("t2i", txt_NE @ img_NE.T, txt_keys[:, None] == key_N[None, :])):
    order = np.argsort(-s, axis=1, kind="stable")[:, :max(ks)]
    hit = np.take_along_axis(same, order, axis=1)
    for k in ks:
      out[f"{name}_r{k}"] = float(hit[:, :k].any(axis=1).mean())
  # text→image recall@1 of a random ranking: per caption query, the share of its semantics
  out["retrieval_chance_r1"] = float((txt_keys[:, None] == key_N[None, :]).mean())
  out["retrieval_images"] = float(len(key_N))
  out["retrieval_distinct_captions"] = float(len(txt_keys))
  return out


def fit_logistic(x_NE: jax.Array, y_N: jax.Array, num_classes: int, steps: int,
                 l2: float) -> tuple[np.ndarray, np.ndarray]:
  """Full-batch Adam (lr 0.05) on mean softmax CE + l2·‖W‖²; returns (W [E, C], b [C])."""
  params = {"w": jnp.zeros((x_NE.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  opt = optax.adam(0.05)

  def objective(p):
    logits_NC = x_NE @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_NC, y_N).mean()
    return ce + l2 * jnp.sum(jnp.square(p["w"]))

  @jax.jit
  def run(p):
    def body(_, carry):
      p, s = carry
      g = jax.grad(objective)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, steps, body, (p, opt.init(p)))[0]

  p = run(params)
  return np.asarray(p["w"]), np.asarray(p["b"])


def plot_temperature(workdir: str) -> str | None:
  """temperature.png from the train_temperature rows of metrics.jsonl (in `workdir` or, for the
  raw-parameter evals of an EMA run, its parent); None when there are none yet."""
  for folder in (workdir, os.path.dirname(os.path.abspath(workdir))):
    path = os.path.join(folder, "metrics.jsonl")
    if os.path.isfile(path):
      break
  else:
    return None
  pts = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if "train_temperature" in row:
        pts.append((row["step"], row["train_temperature"]))
  if not pts:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label="train_temperature")
  ax.set_xlabel("step"), ax.set_ylabel("temperature τ = 1 / scale")
  ax.set_title(f"learned temperature (final {pts[-1][1]:.4f})", fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  out = os.path.join(workdir, "temperature.png")
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
