"""Visual question answering with a tiny LLaVA (arXiv:2304.08485) or Flamingo (arXiv:2204.14198)
on the offline captioned images of `experiments/data/captions.py`.

Models ({name: module}):
    vision  the CLIP image tower (`vit.ViT`, frozen), from a "clip" run through
            `config.init_from_models.vision` (its `image_tower/` arrays); its ViT config must
            equal `config.model.vision` (checked against the run's config.json, one line)
    vlm     `vlm.LLaVA` (projector + GPT, `config.vlm.projector` "linear" | "mlp") or
            `flamingo.Flamingo` (Perceiver resampler + the GPT with gated cross-attention every
            `vlm.xattn_every` layers); the GPT from a "text" stage run through
            `config.init_from_models.vlm`; projector / resampler / cross-attention are new
    lm      stage "text" only: the GPT alone
The GPT uses RoPE positions, so the text may sit after M image embeddings (LLaVA) or at 0
(Flamingo, text stage) without a position table trained for one offset only.

Stages (`config.stage`):
    text      the GPT on the QA and caption text, no images, next-token loss on every real token:
              its QA exact match is the blind, prior-only baseline
    align     LLaVA stage 1 (§4.2): the projector only; Flamingo: resampler + cross-attention
              only (the LM frozen, as in 2204.14198); loss on the answer tokens only
    finetune  LLaVA stage 2: projector + LM, from the stage-1 run (`config.init_from`)
The vision tower never trains.

Data: `captions.load_qa(dataset, "train", templates="train")`; eval on the TEST split with the
HELD-OUT question templates (`config.num_eval` records). Metrics: `test_loss` (answer nats per
answer token, averaged per question), `test_exact_match` (every answer and EOS target is the
argmax under teacher forcing; for these one-word answers this is exactly greedy decoding: the
answer is predicted from the prompt alone, and the EOS after a right answer sees the same token
greedy decoding would have fed), `class_exact_match` / `attribute_exact_match` (per question
kind), `trainable_params` of the trained model; `answers_step{N}.png`: test images with their
question, the model's answer and the truth.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments.data import captions
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.transformers import flamingo, gpt, vit, vlm

KINDS = ("llava", "flamingo")
STAGES = ("text", "align", "finetune")
VISION_KEYS = ("patch", "num_layers", "d_model", "num_heads", "pool", "positions")


def _is_new(path, _) -> bool:
  """The VLM's parts that no text-stage run holds: projector, resampler, cross-attention."""
  return path[0] in ("projector", "resampler") or (len(path) > 1 and path[1] == "cross_attn")


def _recorded_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


class VLMTask(Task):
  """Frozen CLIP image tower → LLaVA / Flamingo → answer-only cross-entropy."""

  def __init__(self, config):
    super().__init__(config)
    v = config.vlm
    if config.dataset not in captions.DATASETS:
      raise unknown_choice("config.dataset for the vlm task", config.dataset, captions.DATASETS)
    if v.kind not in KINDS:
      raise unknown_choice("config.vlm.kind", v.kind, KINDS)
    if v.projector not in vlm.PROJECTORS:
      raise unknown_choice("config.vlm.projector", v.projector, vlm.PROJECTORS)
    if config.stage not in STAGES:
      raise unknown_choice("config.stage", config.stage, STAGES)
    self.stage, self.kind = config.stage, v.kind
    T = config.text_len
    qa = captions.load_qa(config.dataset, "train", templates="train", seed=config.seed,
                          text_len=T)
    test = captions.load_qa(config.dataset, "test", templates="heldout", seed=config.seed,
                            text_len=T)
    n = min(config.num_eval, len(test))   # records are image-major: the first n images' QA
    sub = {k: x[:n] for k, x in test.arrays.items()}
    self._test = ArraySource(sub, info_from_arrays(config.dataset, "test", sub))
    self._train = self._text_source(qa) if self.stage == "text" else qa
    h, w, c = qa.arrays["image"].shape[1:]
    m = config.model
    try:
      self.vision_config = vit.ViTConfig(image_size=(h, w), channels=c, num_classes=None,
                                         **{k: m.vision[k] for k in VISION_KEYS})
      M = self.vision_config.num_tokens
      self.lm_config = gpt.GPTConfig(
          vocab_size=len(captions.VOCAB), context_len=M + T, num_layers=m.text.num_layers,
          d_model=m.text.d_model, num_heads=m.text.num_heads, positions="rope")
    except ValueError as e:
      raise ConfigError(f"config.model: {e}") from None
    self._check_vision_source()
    self._predict = None

  # -- data ------------------------------------------------------------------------------------

  def _text_source(self, qa) -> ArraySource:
    """QA and caption text as LM rows: inputs / targets [T], loss on every real target."""
    T = self.config.text_len
    caps = captions.load_captions(self.config.dataset, "train", templates="train",
                                  seed=self.config.seed, text_len=T).arrays["text"]
    pad = np.zeros((len(caps), 1), np.int32)
    cap_in, cap_tg = caps, np.concatenate([caps[:, 1:], pad], axis=1)
    inputs = np.concatenate([qa.arrays["inputs"], cap_in])
    targets = np.concatenate([qa.arrays["targets"], cap_tg])
    arrays = {"inputs": inputs, "targets": targets,
              "loss_mask": (targets != captions.PAD).astype(np.float32)}
    return ArraySource(arrays, info_from_arrays(self.config.dataset, "train", arrays))

  def _check_vision_source(self) -> None:
    """The CLIP run's recorded ViT config must equal this task's (else its arrays would not
    fit, or the projector would read features of another width)."""
    src = dict(self.config.get("init_from_models", None) or {}).get("vision")
    if not src or self.stage == "text":
      return
    rec = _recorded_config(src)
    if rec is None:
      raise ConfigError(f"config.init_from_models.vision={src!r} holds no config.json; point it "
                        "at a trained clip run")
    theirs = rec.get("model", {}).get("vision", {})
    for k in VISION_KEYS:
      if theirs.get(k) != self.config.model.vision[k]:
        what = ("the image encoder's width disagrees with the projector's input"
                if k == "d_model" else "the image encoders differ")
        raise ConfigError(
            f"config.init_from_models.vision={src!r}: its vision.{k}={theirs.get(k)!r} but "
            f"config.model.vision.{k}={self.config.model.vision[k]!r} ({what}); set "
            f"--config.model.vision.{k}={theirs.get(k)!r}")
    if rec.get("dataset") != self.config.dataset:
      raise ConfigError(f"config.init_from_models.vision={src!r} was trained on "
                        f"{rec.get('dataset')!r}, this run reads {self.config.dataset!r}")

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": self._test}

  # -- models ----------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    lm = gpt.GPT(self.lm_config, rngs=rngs)
    if self.stage == "text":
      return {"lm": lm}
    vision = vit.ViT(self.vision_config, rngs=rngs)
    C, v = self.vision_config.d_model, self.config.vlm
    if self.kind == "llava":
      model = vlm.LLaVA(lm, vlm.Projector(v.projector, C, self.lm_config.d_model, rngs=rngs))
    else:
      flamingo.add_cross_attention(lm, C, every=v.xattn_every, rngs=rngs)
      model = flamingo.Flamingo(lm, flamingo.PerceiverResampler(
          C, num_latents=v.num_latents, num_layers=v.resampler_layers,
          num_heads=self.vision_config.num_heads, rngs=rngs))
    return {"vision": vision, "vlm": model}

  def trainable(self, name: str):
    if name == "vision":
      return nnx.Nothing
    if self.stage == "align":                     # the bridge only; the LM stays frozen
      return nnx.All(nnx.Param, _is_new)
    return nnx.Param

  def new_parameters(self, name: str):
    return _is_new if name == "vlm" else nnx.Nothing

  def convert_source(self, name: str, arrays: dict) -> dict:
    if name == "vision" and any(p.startswith("image_tower/") for p in arrays):
      # a clip run: keep its image tower, drop the text tower and the projections
      return {p.removeprefix("image_tower/"): x for p, x in arrays.items()
              if p.startswith("image_tower/")}
    if name == "vlm" and not any(p.startswith("lm/") for p in arrays):
      return {f"lm/{p}": x for p, x in arrays.items()}   # a text-stage run: the GPT alone
    return arrays

  # -- forward, loss ---------------------------------------------------------------------------

  def logits(self, models, batch: Batch) -> jax.Array:
    """[B, T, V] for the QA inputs: blind (text stage) or reading the image."""
    models = self._by_name(models)
    if self.stage == "text":
      return models["lm"](batch["inputs"])
    z_BMC = jax.lax.stop_gradient(models["vision"].tokens(batch["image"]))
    return models["vlm"](z_BMC, batch["inputs"], batch["prompt_len"])

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    del key
    if self.stage == "text":
      ctx.update("lm", lambda m: (gpt.lm_loss(m(batch["inputs"]), batch["targets"],
                                              batch["loss_mask"]), {}))
      return
    z_BMC = jax.lax.stop_gradient(ctx.model("vision").tokens(batch["image"]))

    def loss_fn(model):   # answer tokens only, eq. (3) of 2304.08485 (LLaVA and Flamingo alike)
      logits_BTV = model(z_BMC, batch["inputs"], batch["prompt_len"])
      return vlm.answer_loss(logits_BTV, batch["targets"], batch["loss_mask"]), {}

    ctx.update("vlm", loss_fn)

  # -- evaluation ------------------------------------------------------------------------------

  def eval_metrics(self, models, batch: Batch):
    correct_B, loss_B = _answer_stats(self.logits(models, batch), batch)
    mask_B = batch["mask"]
    return {"loss": jnp.sum(loss_B * mask_B), "exact_match": jnp.sum(correct_B * mask_B),
            "count": jnp.sum(mask_B)}

  def _by_name(self, models):
    """The loop passes the text stage's one model bare, several as a dict."""
    return models if isinstance(models, dict) else {"lm": models}

  def trained_name(self) -> str:
    return "lm" if self.stage == "text" else "vlm"

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    models = self._by_name(models)
    test = self._test.arrays
    if self._predict is None:   # built once: a fresh nnx.jit per eval would recompile each time
      self._predict = nnx.jit(lambda ms, b: jnp.argmax(self.logits(ms, b), -1))
    fn = self._predict
    preds = []
    for i in range(0, len(test["label"]), 500):
      b = {k: jnp.asarray(test[k][i:i + 500]) for k in ("image", "inputs", "prompt_len")}
      preds.append(np.asarray(fn(models, b)))
    pred_NT = np.concatenate(preds)
    ok_N = np.all((pred_NT == test["targets"]) | (test["loss_mask"] == 0), axis=1)
    kind_N = test["kind"]
    name = self.trained_name()
    model = models[name]
    n_train = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.All(
        nnx.Param, self.trainable(name)))))
    self._plot_answers(os.path.join(workdir, f"answers_step{step}.png"), pred_NT, ok_N)
    return {"class_exact_match": float(ok_N[kind_N == 0].mean()),
            "attribute_exact_match": float(ok_N[kind_N > 0].mean()) if np.any(kind_N > 0)
                                     else 0.0,
            "trainable_params": float(n_train)}

  def _plot_answers(self, path, pred_NT, ok_N, n=16):
    """A grid of test images: question, the model's answer (argmax at the answer position)
    and the truth."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    test = self._test.arrays
    n = min(n, len(ok_N))
    cols = 4
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.0 * n / cols))
    for i, ax in enumerate(np.ravel(axes)):
      ax.axis("off")
      if i >= n:
        continue
      p = int(test["prompt_len"][i])
      question = captions.decode(test["inputs"][i][:p])
      answer = captions.VOCAB[int(pred_NT[i, p - 1])]
      truth = captions.VOCAB[int(test["answer"][i])]
      ax.imshow(test["image"][i][..., 0], cmap="gray")
      ax.set_title(f"{question}\nmodel: {answer} | truth: {truth}", fontsize=7,
                   color="green" if ok_N[i] else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _answer_stats(logits_BTV, batch):
  """(1 where every answer / EOS target is the argmax, answer nats per answer token) per row."""
  mask_BT = batch["loss_mask"]
  ok_BT = (jnp.argmax(logits_BTV, -1) == batch["targets"]) | (mask_BT == 0)
  ce_BT = -jnp.take_along_axis(jax.nn.log_softmax(logits_BTV, -1),
                               batch["targets"][..., None], axis=-1)[..., 0]
  loss_B = jnp.sum(ce_BT * mask_BT, 1) / jnp.maximum(jnp.sum(mask_BT, 1), 1.0)
  return jnp.all(ok_BT, axis=1).astype(jnp.float32), loss_B
