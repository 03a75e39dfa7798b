"""Personalising a trained text-to-image model to a new concept from 8 images.

Base: a finished `text2image` run (`config.init_from`: its denoiser "model" and frozen text tower
"text"), or, without one (the `:smoke` variant), the freshly initialised text-to-image models of
this config, the same the loop starts from. The concept: `personalize.num_instance` training
images of the class `personalize.class_word` with a bright square stamped in the top-left corner
(`diffusion/personalize.py`: stamp, concept_present), captioned `personalize.prompt` =
"a {token} {cls}" with `personalize.token` a word of the fixed caption vocabulary that this data
set's captions never use (the "rare token"; a digit word for Fashion-MNIST).

`personalize.method`:
  textual_inversion  2208.01618: the text model is `PersonalizedText` (the frozen tower with the
                     token's embedding replaced by a new vector v*, initialised from
                     `personalize.init_word`'s); v* is the ONLY trained parameter.
  dreambooth         2208.12242: the whole denoiser trains on the instance prompt, plus the
                     prior-preservation loss of eq. (2) with weight `personalize.prior_weight` on
                     `personalize.num_class_images` images the frozen base generated for
                     `personalize.class_prompt` = "a {cls}" before training.
  lora               LoRA (2106.09685) adapters of rank `personalize.lora_rank` on the denoiser's
                     attention projections matching `personalize.lora_targets` (self- and
                     cross-attention); only the adapters train; the same loss as dreambooth.

Evaluation (host side, `after_eval`; the base model's numbers once per run, same prompts and
noise): `personalize.eval_per_prompt` samples each of the instance prompt ("concept_rate": the
fraction showing the stamp; "accuracy": our classifier says the class), of the bare class prompt
("class_concept_rate", "class_accuracy": language drift, sec. 3.3 of 2208.12242), and of every
other class's "a {cls}" ("other_concept_rate", "other_accuracy": prior drift), each with its
`base_*` twin from the frozen base; a grid PNG base vs personalised.

Text2ImageTask methods used (public, helper B's): prompt_tokens, text_loss, sample_text,
prompt_accuracy, build_models, trainable, convert_source.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from genfm.diffusion import personalize as pz
from genfm.experiments import data, prerequisite, train
from genfm.experiments.data import captions
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.diffusion_image import save_grid
from genfm.experiments.tasks.text2image import Text2ImageTask
from genfm.transformers import lora

METHODS = ("textual_inversion", "dreambooth", "lora")
PRIOR = "prior_"                 # batch keys of the class (prior-preservation) examples
# Keys of the base run's recorded config.json that must equal this run's: the same denoiser, text
# tower, data layout and diffusion (init_from would fail later, less clearly, on a shape).
BASE_KEYS = ("dataset", "pad", "model", "text", "text_len", "latent_autoencoder_workdir",
             "diffusion.kind", "diffusion.prediction", "diffusion.schedule",
             "diffusion.num_timesteps")


def read_base_config(config) -> ml_collections.ConfigDict:
  """The recorded config of the base run `config.init_from`, checked to be a text2image run of
  this run's BASE_KEYS; one ConfigError line naming the first difference."""
  where = config.init_from
  try:
    with open(os.path.join(where, "config.json")) as f:
      base = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"config.init_from={where!r} has no readable config.json; point it at a "
                      "finished text2image run (e.g. runs/fashion_t2i)") from None
  if base.get("task") != "text2image":
    raise ConfigError(f"config.init_from={where!r} is a {base.get('task')!r} run; the "
                      "personalize task starts from a text2image run")
  diff = prerequisite.config_difference(json.loads(config.to_json_best_effort()), base,
                                        BASE_KEYS)
  if diff:
    key, got, want = diff
    raise ConfigError(f"config.init_from={where!r} is a text2image run of another setting: "
                      f"its {key} is {got!r}, this config's {want!r}; use the base run's "
                      "config (e.g. --config.model.* overrides) or another base")
  return ml_collections.ConfigDict(base)


class PersonalizeTask(Text2ImageTask):
  """A text2image base → one new concept by textual inversion, DreamBooth or LoRA."""

  def __init__(self, config):
    p = config.personalize
    if p.method not in METHODS:
      raise unknown_choice("config.personalize.method", p.method, METHODS)
    if not config.get("init_from", "") and not config.get("allow_random_text", False):
      raise ConfigError("the personalize task starts from a finished text2image run: set "
                        "config.init_from (a random base is for :smoke only, with "
                        "config.allow_random_text=True)")
    super().__init__(config)
    words = captions.CLASS_WORDS.get(config.dataset)
    if words is None:
      raise ConfigError(f"the personalize task needs a captioned data set "
                        f"({', '.join(captions.DATASETS)}), got {config.dataset!r}")
    if p.class_word not in words:
      raise ConfigError(f"config.personalize.class_word={p.class_word!r} is not a class of "
                        f"{config.dataset}: {', '.join(words)}")
    used = set(words) | {w for _, pair in captions.ATTRIBUTES[config.dataset] for w in pair}
    for t in (*captions.CAPTION_TEMPLATES["train"], *captions.CAPTION_TEMPLATES["heldout"]):
      used |= set(captions.tokenize(t.replace("{adjs}", " ").replace("{cls}", " ")))
    if p.token not in captions.VOCAB or p.token in used:
      spare = sorted(set(captions.VOCAB[3:]) - used)
      raise ConfigError(f"config.personalize.token={p.token!r} must be a word of the caption "
                        f"vocabulary that {config.dataset} captions never use (a rare token), "
                        f"e.g. {', '.join(spare[:5])}")
    if p.init_word not in captions.VOCAB[3:]:
      raise ConfigError(f"config.personalize.init_word={p.init_word!r} is not in the caption "
                        "vocabulary")
    if p.method == "textual_inversion" and p.prior_weight:
      raise ConfigError("config.personalize.prior_weight must be 0 for textual_inversion: the "
                        "denoiser is frozen, so there is no prior to preserve")
    if p.prior_weight < 0:
      raise ConfigError(f"config.personalize.prior_weight must be ≥ 0, got {p.prior_weight}")
    self.class_id = words.index(p.class_word)
    self.token_id = captions.VOCAB.index(p.token)
    self.init_id = captions.VOCAB.index(p.init_word)
    fmt = dict(token=p.token, cls=p.class_word)
    self.instance_prompt = p.prompt.format(**fmt)
    self.class_prompt = p.class_prompt.format(**fmt)
    self.prompt_tokens([self.instance_prompt, self.class_prompt])   # too long: one line, now
    if config.get("init_from", ""):
      read_base_config(config)                 # a base of another setting: one line, now
    self._source, self._base, self._base_metrics = None, None, None

  # --- data -----------------------------------------------------------------------------------

  def instance_images(self) -> np.ndarray:
    """uint8 [n, H, W, C]: the first `num_instance` training images of the class, stamped."""
    p = self.config.personalize
    arrays = data.load(self.config.dataset, "train").arrays
    images = arrays["image"][arrays["label"] == self.class_id][:p.num_instance]
    return pz.stamp(images, p.stamp_size)

  def base_models(self) -> dict:
    """The frozen base {"model", "text"}: the `init_from` run's (restored read-only), or the
    fresh initialisation of this config (no `init_from`), as the loop's own starting point."""
    if self._base is not None:
      return self._base
    where = self.config.get("init_from", "")
    if where:
      base_cfg = read_base_config(self.config)
      # Everything comes from its checkpoint: no text-tower source, classifier or init of its own.
      base_cfg.init_from, base_cfg.init_from_models.text = "", ""
      base_cfg.allow_random_text, base_cfg.fid_classifier_workdir = True, ""
      restored = train.restore_eval_model(Text2ImageTask(base_cfg), base_cfg, where)
      if restored is None:
        raise ConfigError(f"config.init_from={where!r} holds no checkpoint; train it first")
      self._base = restored[0]
    else:
      rngs = nnx.Rngs(self.config.seed, params=self.config.seed, dropout=self.config.seed + 1)
      models = Text2ImageTask.build_models(self, rngs)
      for m in models.values():
        m.eval()
      self._base = models
    return self._base

  def class_images(self) -> np.ndarray:
    """uint8 [M, H, W, C]: `num_class_images` samples of the frozen base for the class prompt
    (x_pr of eq. (2) of 2208.12242), unpadded and quantised like real images."""
    p, pad = self.config.personalize, self.config.get("pad", 0)
    tokens = np.repeat(self.prompt_tokens([self.class_prompt]), p.num_class_images, axis=0)
    x = self.generate_text(self.base_models(), tokens, seed=p.class_seed)
    x = x[:, pad:x.shape[1] - pad, pad:x.shape[2] - pad]
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)

  def _records(self, images: np.ndarray, prompt: str, label: int) -> ArraySource:
    n = len(images)
    arrays = {"image": images, "label": np.full((n,), label, np.int32),
              "text": np.repeat(self.prompt_tokens([prompt]), n, axis=0)}
    info = info_from_arrays(self.config.dataset, "train", arrays,
                            num_classes=len(captions.CLASS_WORDS[self.config.dataset]))
    return self.with_latents(ArraySource(arrays, info))

  def uses_prior(self) -> bool:
    return self.config.personalize.method != "textual_inversion" and \
        self.config.personalize.prior_weight > 0

  def train_source(self):
    """Records i: instance example i mod n, and (with the prior loss) class example i mod M under
    `prior_*` keys; num_instance · repeats records per epoch (or M when larger)."""
    if self._source is None:
      p = self.config.personalize
      inst = self._records(self.instance_images(), self.instance_prompt, self.class_id).arrays
      n = max(len(inst["image"]) * p.repeats, self.config.batch_size)
      prior = None
      if self.uses_prior():
        prior = self._records(self.class_images(), self.class_prompt, self.class_id).arrays
        n = max(n, len(prior["image"]))
      tile = lambda a: a[np.arange(n) % len(a)]
      arrays = {k: tile(v) for k, v in inst.items()}
      if prior is not None:
        arrays.update({PRIOR + k: tile(v) for k, v in prior.items()})
      info = info_from_arrays(self.config.dataset, "train", arrays,
                              num_classes=len(captions.CLASS_WORDS[self.config.dataset]))
      self._source = ArraySource(arrays, info)
    return self._source

  def eval_sources(self):
    return {}                    # the metrics are after_eval's sample statistics

  # --- models ---------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    p = self.config.personalize
    models = super().build_models(rngs)
    if p.method == "textual_inversion":
      models["text"] = pz.PersonalizedText(models["text"], self.token_id, self.init_id)
    elif p.method == "lora":
      try:
        lora.apply_lora(models["model"], p.lora_targets, p.lora_rank, p.lora_alpha, rngs=rngs)
      except ValueError as e:
        raise ConfigError(f"config.personalize.lora_targets: {e}") from None
    return models

  def trainable(self, name: str):
    method = self.config.personalize.method
    if method == "textual_inversion":
      return nnx.PathContains("concept") if name == "text" else nnx.Nothing
    if name != "model":
      return nnx.Nothing
    return nnx.LoRAParam if method == "lora" else nnx.Param

  def init_source(self, name, source_models):
    return name if name in source_models else super().init_source(name, source_models)

  def convert_source(self, name: str, arrays: dict) -> dict:
    """The base run's tower arrays under `tower/` for textual inversion, and v* = the init
    word's row of the embedding table (sec. 4.1 of 2208.01618)."""
    arrays = super().convert_source(name, arrays)
    if name != "text" or self.config.personalize.method != "textual_inversion":
      return arrays
    out = {f"tower/{k}": v for k, v in arrays.items()}
    out["concept"] = np.array(arrays["embed/embedding"][self.init_id], copy=True)
    return out

  # --- training -------------------------------------------------------------------------------

  @staticmethod
  def split_batch(batch) -> tuple[dict, dict]:
    inst = {k: v for k, v in batch.items() if not k.startswith(PRIOR)}
    prior = {k[len(PRIOR):]: v for k, v in batch.items() if k.startswith(PRIOR)}
    return inst, prior

  def personal_loss(self, model, text_model, batch, key):
    """Eq. (2) of 2208.12242: instance loss + λ · prior loss (λ = 0: the instance loss alone);
    the instance key is the first of two split keys, the class key the second."""
    inst, prior = self.split_batch(batch)
    k_inst, k_prior = jax.random.split(key)
    inst_B = self.text_loss(model, text_model, inst, k_inst, inst["text"])
    lam = float(self.config.personalize.prior_weight)
    prior_B = (self.text_loss(model, text_model, prior, k_prior, prior["text"])
               if prior and lam > 0 else jnp.zeros_like(inst_B))
    loss = pz.prior_preservation_loss(inst_B, prior_B, lam)
    return loss, {"instance_loss": jnp.mean(inst_B), "prior_loss": jnp.mean(prior_B)}

  def train_step(self, ctx, batch, key) -> None:
    if self.config.personalize.method == "textual_inversion":
      model = ctx.model("model")
      ctx.update("text", lambda text: self.personal_loss(model, text, batch, key))
    else:
      text = ctx.model("text")
      ctx.update("model", lambda model: self.personal_loss(model, text, batch, key))

  # --- evaluation -----------------------------------------------------------------------------

  def eval_prompts(self) -> list[tuple[str, str, int]]:
    """(group, prompt, class id): the instance prompt, the class prompt, every other class."""
    words = captions.CLASS_WORDS[self.config.dataset]
    fmt = self.config.personalize.class_prompt
    return ([("", self.instance_prompt, self.class_id), ("class_", self.class_prompt,
                                                            self.class_id)]
            + [("other_", fmt.format(cls=w, token=self.config.personalize.token), c)
               for c, w in enumerate(words) if c != self.class_id])

  def prompt_samples(self, models) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{group: (padded pixels, class ids)}: `eval_per_prompt` samples of the instance and class
    prompts, and eval_per_prompt // 3 (≥ 1) per other class; one fixed key per batch of
    `eval.sample_batch_size` (`generate_text`), so base and tuned models see the same noise."""
    p = self.config.personalize
    groups, tokens, labels = [], [], []
    for group, prompt, c in self.eval_prompts():
      n = p.eval_per_prompt if group != "other_" else max(1, p.eval_per_prompt // 3)
      groups += [group] * n
      tokens.append(np.repeat(self.prompt_tokens([prompt]), n, axis=0))
      labels += [c] * n
    x = self.generate_text(models, np.concatenate(tokens))
    groups, labels = np.asarray(groups), np.asarray(labels, np.int32)
    return {g: (x[groups == g], labels[groups == g]) for g in ("", "class_", "other_")}

  def score(self, samples) -> dict[str, float]:
    p, pad = self.config.personalize, self.config.get("pad", 0)
    out = {}
    for group, (x, labels) in samples.items():
      out[f"{group}concept_rate"] = pz.concept_rate(x, p.stamp_size, pad)
      if self.config.get("fid_classifier_workdir", ""):
        out[f"{group}accuracy"] = float(self.prompt_accuracy(x, labels))
    return out

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    base_samples = None
    if self._base_metrics is None:
      base_samples = self.prompt_samples(self.base_models())
      self._base_metrics = {f"base_{k}": v for k, v in self.score(base_samples).items()}
    samples = self.prompt_samples(models)
    out = {**self.score(samples), **self._base_metrics}
    cols = min(self.config.eval.get("grid_cols", 10), self.config.personalize.eval_per_prompt)
    rows, names = [], []
    for group, label in (("", "instance"), ("class_", "class")):
      if base_samples is not None:
        rows.append(base_samples[group][0][:cols])
        names.append(f"base: {label}")
      rows.append(samples[group][0][:cols])
      names.append(f"tuned: {label}")
    other, _ = samples["other_"]
    rows.append(other[::max(1, len(other) // cols)][:cols])
    names.append("tuned: others")
    grid = np.concatenate(rows)
    row_ids = np.concatenate([np.full((len(r),), i) for i, r in enumerate(rows)])
    p = self.config.personalize
    title = (f"{self.config.get('name', 'personalize')} ({p.method}) step {step}: "
             f"'{self.instance_prompt}' concept rate {out['concept_rate']:.2f} "
             f"(base {out['base_concept_rate']:.2f}); '{self.class_prompt}' "
             f"{out['class_concept_rate']:.2f}")
    save_grid(os.path.join(workdir, f"personalize_step{step}.png"), grid, row_ids, len(rows),
              cols, names, title)
    return out
