"""Text-to-image diffusion: prompts through a frozen CLIP text tower, cross-attention in the
denoiser, classifier-free guidance with the empty prompt or a negative prompt.

Latent diffusion's conditioning, Rombach et al. 2022, arXiv:2112.10752 sec. 3.3: a
domain-specific encoder τ_θ maps the prompt y to per-token states τ_θ(y) [S, D_ctx], which the
denoiser reads through cross-attention (eq. (3); `diffusion/cross_attention.py`) — in the U-Net
after the blocks of `config.model.cross_attn_resolutions` and in the middle block, in the DiT
after every block's self-attention (PixArt-α, arXiv:2310.00426). Here τ is the GPT text tower of
a CLIP run (`transformers/clip.py`, trained by `captions_clip.py` on the captions of
`experiments/data/captions.py`), FROZEN as Stable Diffusion's CLIP ViT-L/14 text encoder: the
context is its final (normed) hidden state at every position, the mask is token ≠ PAD. Objective
(eq. (2) of 2112.10752 with the text as condition): L_simple of DDPM (2006.11239 eq. 14) on the
denoiser's input x₀ = `model_input(batch)` (padded pixels, or scaled latents when
`config.latent_autoencoder_workdir` is set: the lead's hooks in `diffusion_image.py`).

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): training replaces the prompt by
the EMPTY prompt (BOS EOS PAD…) with probability `diffusion.p_uncond` (Algorithm 1), so one
network is both ε(x, t, τ(y)) and ε(x, t, τ(∅)); sampling uses eq. (6),
ε̃ = s ε(x, t, τ(y)) + (1 − s) ε(x, t, τ(u)), with u the empty prompt or a NEGATIVE prompt (the
unconditional branch conditioned on text to steer away from; `guidance.guided_context_model`).

Models: {"model": the denoiser (U-Net or DiT, `config.model.kind`) with `context_dim` = the text
width, no class labels; "text": the `gpt.GPT` text tower, never trained (`nnx.Nothing`), read from
`config.init_from_models.text` (a clip run: its `text_tower/` arrays) or from `config.init_from`
(a text2image run). A random frozen tower is refused unless `config.allow_random_text` (the
`:smoke` config only; the summary states `text_tower_random = 1`).

Eval (host side, `after_eval`), on HELD-OUT prompts: the captions of the TEST split phrased by
the held-out templates (phrasings never trained on), the first `eval.num_samples` of them:
  class_accuracy        our Fashion classifier (`config.fid_classifier_workdir`, the FD's LeNet)
                        on the samples, against the prompt's class: does the picture follow the
                        prompt (the classifier's accuracy on real test images is the ceiling);
  attribute_agreement   of the prompt's extreme attribute words (dark/light, narrow/wide),
                        the share the sample shows at that level, measured from its pixels
                        (`captions.attribute_levels` at the per-class train terciles): chance is
                        about 1/3 (each level holds a third of each class);
  fd, fd_floor          Fréchet distance of the samples' classifier features to n real test
                        images, and the real-vs-real floor at the same n;
  attn_class_word       the mean cross-attention weight the image positions put on the prompt's
                        class word (all layers and heads; a uniform reader would put 1/#tokens);
figures: samples_step{N}.png (samples under their prompts) and attention_maps_step{N}.png
(per-token cross-attention maps: each token's weight over the image positions, averaged over
heads and over every cross-attention layer resized to the image, read on the sample noised to
t = `eval.attention_t` with the prompt as context).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import cross_attention
from genfm.diffusion import dit
from genfm.diffusion import fashion_fid
from genfm.diffusion import flow
from genfm.diffusion import gaussian
from genfm.diffusion import guidance
from genfm.diffusion import samplers
from genfm.diffusion.unet import UNet, UNetConfig
from genfm.experiments import fid_classifier
from genfm.experiments.data import captions
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, DataError, unknown_choice
from genfm.experiments.tasks.base import Batch
from genfm.experiments.tasks.diffusion_common import sampler_kwargs
from genfm.experiments.tasks.diffusion_image import FLOW_TIME_LABEL, DiffusionImageTask
from genfm.transformers import gpt

TEXT_KEYS = ("num_layers", "d_model", "num_heads")


def _recorded_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


class Text2ImageTask(DiffusionImageTask):
  """Captioned images → frozen text tower → cross-attention denoiser → text CFG samples."""

  def __init__(self, config):
    if config.dataset not in captions.DATASETS:
      raise unknown_choice("config.dataset for the text2image task", config.dataset,
                           captions.DATASETS)
    super().__init__(config)
    self.text_len = config.text_len
    t = config.text
    try:
      self.text_config = gpt.GPTConfig(vocab_size=len(captions.VOCAB), context_len=self.text_len,
                                       num_layers=t.num_layers, d_model=t.d_model,
                                       num_heads=t.num_heads)
    except ValueError as e:
      raise ConfigError(f"config.text: {e}") from None
    self.text_source = self._check_text_source()
    try:
      caps = captions.load_captions(config.dataset, "train", templates="train",
                                    captions_per_image=config.get("captions_per_image", 1),
                                    seed=config.seed, text_len=self.text_len)
      test = captions.load_captions(config.dataset, "test", templates="heldout",
                                    seed=config.seed, text_len=self.text_len)
    except DataError as e:                      # e.g. a text_len too short for the captions
      raise ConfigError(f"captions: {e}") from None
    self._train = self.with_latents(caps)
    self._test = test.arrays                    # the held-out prompts (and their images)
    self.empty_tokens = captions.encode("", self.text_len)     # BOS EOS PAD…: the ∅ prompt
    self._sample_text_fns, self._classify, self._attn_fn = {}, None, None

  def _check_text_source(self) -> str:
    """Where the frozen text tower comes from ("clip run DIR", "init_from DIR" or "random");
    a clip run must have recorded this text tower and text length (one line otherwise)."""
    src = dict(self.config.get("init_from_models", None) or {}).get("text", "")
    if not src:
      if self.config.get("init_from", ""):
        return f"init_from {self.config.init_from}"
      if not self.config.get("allow_random_text", False):
        raise ConfigError("config.init_from_models.text is empty: point it at a trained clip run "
                          "(e.g. runs/captions_clip) for the frozen text tower; a random tower "
                          "is only for smoke tests (config.allow_random_text=True)")
      return "random"
    rec = _recorded_config(src)
    if rec is None:
      raise ConfigError(f"config.init_from_models.text={src!r} holds no config.json; point it at "
                        "a trained clip run (captions_clip.py)")
    if rec.get("task") != "clip":
      raise ConfigError(f"config.init_from_models.text={src!r} is a {rec.get('task')!r} run, not "
                        "a clip run; its text tower is what this task reads")
    theirs = rec.get("model", {}).get("text", {})
    for k in TEXT_KEYS:
      if theirs.get(k) != self.config.text[k]:
        raise ConfigError(f"config.init_from_models.text={src!r}: its text.{k}={theirs.get(k)!r} "
                          f"but config.text.{k}={self.config.text[k]!r}; set "
                          f"--config.text.{k}={theirs.get(k)!r}")
    if rec.get("text_len") != self.text_len:
      raise ConfigError(f"config.init_from_models.text={src!r} was trained with text_len="
                        f"{rec.get('text_len')}, this run has text_len={self.text_len} (its "
                        "position table has that many rows); set them equal")
    return f"clip run {src}"

  # --- data and models ------------------------------------------------------------------------

  def train_source(self):
    return self._train

  def eval_sources(self):
    """The first `eval.num_loss_images` held-out captions (test split, held-out templates)."""
    n = min(self.config.eval.get("num_loss_images", 1000), len(self._test["label"]))
    sub = {k: v[:n] for k, v in self._test.items()}
    return {"test": self.with_latents(ArraySource(sub, info_from_arrays(
        self.config.dataset, "test", sub, num_classes=self.num_classes)))}

  def denoiser_config(self):
    """The U-Net / DiT config of `config.model` with cross-attention to the text, no labels."""
    D = self.text_config.d_model
    if self.model_kind == "dit":
      try:
        return dataclasses.replace(self.dit_config(), num_classes=None, context_dim=D)
      except ValueError as e:
        raise ConfigError(f"config.model for the DiT: {e}") from None
    h, w, c = self.image_shape
    m = self._model_kwargs()
    m.setdefault("cross_attn_resolutions", ())
    try:
      return UNetConfig(image_channels=c, image_size=h, num_classes=None, context_dim=D, **m)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model for the U-Net: {e}") from None

  def dit_config(self) -> dit.DiTConfig:
    """The class DiT of `config.model` (the base task's check; `denoiser_config` then swaps the
    labels for the text)."""
    m = {k: v for k, v in self._model_kwargs().items() if k != "cross_attn_resolutions"}
    h, w, c = self.image_shape
    if h != w:
      raise ConfigError(f"the DiT takes square inputs; got {h}×{w}")
    if m.get("learn_sigma", False):
      raise ConfigError("config.model.learn_sigma: the text2image task trains ε / velocity only; "
                        "set it False")
    try:
      return dit.DiTConfig(image_size=h, in_channels=c, num_classes=self.num_classes, **m)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model for the DiT: {e}") from None

  def build_models(self, rngs: nnx.Rngs):
    cfg = self.denoiser_config()
    model = dit.DiT(cfg, rngs=rngs) if self.model_kind == "dit" else UNet(cfg, rngs=rngs)
    return {"model": model, "text": gpt.GPT(self.text_config, rngs=rngs)}

  def trainable(self, name: str):
    return nnx.Nothing if name == "text" else super().trainable(name)

  def convert_source(self, name: str, arrays: dict) -> dict:
    if name == "text" and any(p.startswith("text_tower/") for p in arrays):
      # a clip run: keep its text tower, drop the image tower and the projections
      return {p.removeprefix("text_tower/"): x for p, x in arrays.items()
              if p.startswith("text_tower/")}
    return arrays

  # --- PUBLIC text API (personalize.py builds on these) ---------------------------------------

  def prompt_tokens(self, prompts: list[str]) -> np.ndarray:
    """int32 [B, text_len]: BOS prompt EOS PAD… per prompt; a prompt longer than the text
    context or with a word outside the caption vocabulary is one ConfigError line."""
    try:
      return np.stack([captions.encode(p, self.text_len) for p in prompts])
    except DataError as e:
      raise ConfigError(f"prompt: {e}") from None

  def text_context(self, text_model, tokens_BS) -> tuple[jax.Array, jax.Array]:
    """(τ(y) [B, S, D] the text tower's final hidden states, mask [B, S] = token ≠ PAD)."""
    tokens_BS = jnp.asarray(tokens_BS, jnp.int32)
    return text_model.hidden_states(tokens_BS).astype(jnp.float32), tokens_BS != captions.PAD

  def apply(self, model, x, t_B, context_BSD, mask_BS) -> jax.Array:
    """The denoiser ε̂(x, t | context)."""
    return model(x, t_B, context_BSD=context_BSD, context_mask_BS=mask_BS)

  def context_loss(self, model, x0, context_BSD, mask_BS, t_B, z) -> jax.Array:
    """[B] L_simple (eq. 14 of 2006.11239) — or the CFM loss (eq. 9 of 2210.02747) for flow —
    of the denoiser reading this context, at given t and noise."""
    if self.kind == "flow":
      d = self.config.diffusion
      velocity_fn = lambda xt, t: self.apply(model, xt, FLOW_TIME_LABEL * t, context_BSD, mask_BS)
      return flow.cfm_per_example(velocity_fn, d.path, z, x0, t_B, d.get("sigma_min", 0.0))
    model_fn = lambda xt, t: self.apply(model, xt, t, context_BSD, mask_BS)
    return gaussian.per_example_loss(model_fn, self.sched, x0, t_B, z,
                                     self.config.diffusion.prediction)

  def text_loss(self, model, text_model, batch: Batch, key: jax.Array, tokens_BS=None, *,
                p_uncond: float | None = None) -> jax.Array:
    """[B] denoising loss on `batch`'s images conditioned on `tokens_BS` (default: the batch's
    captions), each prompt replaced by the empty prompt with probability p_uncond (default
    `config.diffusion.p_uncond`; Algorithm 1 of 2207.12598)."""
    in_key, key = jax.random.split(key)
    x0 = self.model_input(batch, in_key)
    t_B, z, u_B = self.draw_noise(key, x0)
    tokens = jnp.asarray(batch["text"] if tokens_BS is None else tokens_BS, jnp.int32)
    p = self.config.diffusion.p_uncond if p_uncond is None else p_uncond
    tokens = jnp.where((u_B < p)[:, None], jnp.asarray(self.empty_tokens)[None], tokens)
    context_BSD, mask_BS = self.text_context(text_model, tokens)
    return self.context_loss(model, x0, context_BSD, mask_BS, t_B, z)

  def sample_text(self, models, key: jax.Array, tokens_BS, *, negative_tokens_BS=None,
                  scale: float | None = None, sampler: str | None = None,
                  num_steps: int | None = None) -> np.ndarray:
    """Guided samples for the prompts `tokens_BS`, as padded pixels [B, H, W, C] in [−1, 1]-ish
    (decoded when latent). The unconditional branch reads the empty prompt, or
    `negative_tokens_BS` ([B, S] or [1, S]) when given; scale s = 1 + w (default
    `config.diffusion.guidance_scale`)."""
    d = self.config.diffusion
    sampler = d.sampler if sampler is None else sampler
    scale = d.guidance_scale if scale is None else scale
    tokens_BS = np.asarray(tokens_BS, np.int32)
    neg = self.empty_tokens[None] if negative_tokens_BS is None else negative_tokens_BS
    neg = np.broadcast_to(np.asarray(neg, np.int32), tokens_BS.shape)
    name = (sampler, num_steps)
    if name not in self._sample_text_fns:
      self._sample_text_fns[name] = nnx.jit(
          lambda ms, k, tok, ntok, s: self._sample(ms, k, tok, ntok, s, sampler, num_steps))
    x = self._sample_text_fns[name](self._by_name(models), key, jnp.asarray(tokens_BS),
                                    jnp.asarray(neg), jnp.float32(scale))
    return self.to_pixels(jax.device_get(x))

  def _sample(self, models, key, tokens_BS, neg_BS, scale, sampler, num_steps) -> jax.Array:
    """Traceable: denoiser-space samples by the configured sampler under text CFG."""
    model, text = models["model"], models["text"]
    context, mask = self.text_context(text, tokens_BS)
    un_context, un_mask = self.text_context(text, neg_BS)
    apply = lambda x, t, c, m: model(x, t, context_BSD=c, context_mask_BS=m)
    model_fn = guidance.guided_context_model(apply, context, mask, un_context, un_mask, scale)
    d, shape = self.config.diffusion, (tokens_BS.shape[0],) + self.image_shape
    if self.kind == "flow":          # t = 0 noise → t = 1 data; the network sees 999·t
      noise = jax.random.normal(key, shape, jnp.float32)
      return flow.sample(lambda x, t_B: model_fn(x, FLOW_TIME_LABEL * t_B), noise, sampler,
                         d.sample_steps if num_steps is None else num_steps)
    return samplers.sample(sampler, model_fn, self.sched, key, shape,
                           **sampler_kwargs(d, sampler, num_steps))

  def prompt_accuracy(self, pixels, labels_B) -> float:
    """The share of samples (padded pixels in [−1, 1]) that our classifier
    (`config.fid_classifier_workdir`) puts in the prompt's class `labels_B`."""
    pred = self.classify(pixels)
    return float(np.mean(pred == np.asarray(labels_B)))

  # --- evaluation -----------------------------------------------------------------------------

  def _by_name(self, models):
    if not isinstance(models, dict):
      raise TypeError("text2image needs its models by name: {'model': …, 'text': …}")
    return models

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    text = ctx.model("text")
    ctx.update("model", lambda m: (jnp.mean(self.text_loss(m, text, batch, key)), {}))

  def eval_metrics(self, models, batch: Batch):
    """Held-out loss on the held-out captions, fixed key, no prompt dropout."""
    models = self._by_name(models)
    loss_B = self.text_loss(models["model"], models["text"], batch, jax.random.key(1234),
                            p_uncond=0.0)
    mask_B = batch["mask"]
    return {"loss": (loss_B * mask_B).sum(), "count": mask_B.sum()}

  def raw_image_shape(self) -> tuple[int, int, int]:
    pad = self.config.get("pad", 0)
    h, w, c = self.pixel_shape
    return (h - 2 * pad, w - 2 * pad, c)

  def classify(self, pixels) -> np.ndarray:
    """Our classifier's class [B] for padded pixels in [−1, 1]."""
    workdir = self.config.get("fid_classifier_workdir", "")
    if not workdir:
      raise ConfigError("class accuracy of samples needs config.fid_classifier_workdir (the "
                        "classifier run, e.g. runs/fashion_lenet)")
    if self._classify is None:
      try:
        clf, _ = fid_classifier.load_classifier(workdir)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.fid_classifier_workdir: {e}") from None
      graphdef, state = nnx.split(clf)
      fn = jax.jit(lambda s, x: jnp.argmax(nnx.merge(graphdef, s)(x), -1))
      self._classify = lambda x: fn(state, x)
    images = fashion_fid.to_pixels(np.asarray(pixels), self.raw_image_shape())
    return np.concatenate([np.asarray(self._classify(jnp.asarray(images[i:i + 500])))
                           for i in range(0, len(images), 500)])

  def attribute_agreement(self, pixels, labels_B, levels_B2) -> float:
    """Of the attribute words the prompts name (levels 0 or 2), the share the samples show at
    that level (measured with the prompt's class terciles); NaN if no prompt names one."""
    images = fashion_fid.to_pixels(np.asarray(pixels), self.raw_image_shape())
    got_B2 = captions.attribute_levels(self.config.dataset, images, np.asarray(labels_B))
    named_B2 = np.asarray(levels_B2) != 1
    if not named_B2.any():
      return float("nan")
    return float(np.mean(got_B2[named_B2] == np.asarray(levels_B2)[named_B2]))

  def generate_text(self, models, tokens_NS, *, seed: int | None = None, scale=None,
                    negative_tokens_BS=None, batch_size: int | None = None) -> np.ndarray:
    """Samples for many prompts in batches (batch i from key seed + 1000 i, as `generate`)."""
    seed = self.config.eval.sample_seed if seed is None else seed
    batch_size = batch_size or self.config.eval.get("sample_batch_size", len(tokens_NS))
    out = []
    for i, start in enumerate(range(0, len(tokens_NS), batch_size)):
      neg = negative_tokens_BS
      if neg is not None and np.asarray(neg).shape[0] != 1:
        neg = np.asarray(neg)[start:start + batch_size]
      out.append(self.sample_text(models, jax.random.key(seed + 1000 * i),
                                  tokens_NS[start:start + batch_size], scale=scale,
                                  negative_tokens_BS=neg))
    return np.concatenate(out)

  def heldout_prompts(self, n: int | None = None) -> dict[str, np.ndarray]:
    """The first n held-out prompts: "text" [n, S], "label" [n], "attributes" [n, 2]."""
    n = self.config.eval.num_samples if n is None else n
    return {k: self._test[k][:n] for k in ("text", "label", "attributes")}

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    models = self._by_name(models)
    d, n = self.config.diffusion, self.config.eval.num_samples
    fid = self.fid_evaluator()           # first: a missing classifier fails before sampling
    prompts = self.heldout_prompts(n)
    samples = self.generate_text(models, prompts["text"])
    out = {"text_tower_random": float(self.text_source == "random")}
    if self.config.get("fid_classifier_workdir", ""):
      out["class_accuracy"] = self.prompt_accuracy(samples, prompts["label"])
    out["attribute_agreement"] = self.attribute_agreement(samples, prompts["label"],
                                                          prompts["attributes"])
    sampler = d.sampler if d.sampler == "ddpm" else f"{d.sampler}-{d.sample_steps}"
    title = f"{self.config.get('name', 'text2image')} step {step}: {sampler}, s = {d.guidance_scale}"
    if fid is not None:
      out.update(fd=fid(samples), fd_floor=fid.floor)
      title += f", FD {out['fd']:.2f} (floor {fid.floor:.2f}, n = {n})"
    if "class_accuracy" in out:
      title += f", class acc {out['class_accuracy']:.3f}"
    save_prompt_grid(os.path.join(workdir, f"samples_step{step}.png"), samples,
                     prompts["text"], self.config.eval.get("grid_cols", 10), title)
    k = min(self.config.eval.get("attention_prompts", 4), n)
    maps = self.attention_maps(models, samples[:k], prompts["text"][:k])
    out["attn_class_word"] = class_word_weight(maps["weights_BS"], prompts["text"][:k],
                                               prompts["label"][:k], self.config.dataset)
    save_attention_maps(os.path.join(workdir, f"attention_maps_step{step}.png"),
                        samples[:k], prompts["text"][:k], maps["maps_BHWS"],
                        f"cross-attention per token at t = {maps['t']} (mean over heads and "
                        f"{maps['num_layers']} layers), step {step}")
    return out

  # --- cross-attention maps -------------------------------------------------------------------

  def attention_maps(self, models, pixels_BHWC, tokens_BS, t: int | None = None,
                     seed: int = 0) -> dict:
    """Per-token cross-attention of the conditional model on the samples noised to t:
    "maps_BHWS" [B, H, W, S] (pixel grid; each layer's [T, S] weights averaged over heads,
    resized to the pixels, then averaged over layers), "weights_BS" [B, S] (the mean weight of
    a position on each token), "num_layers", "t"."""
    models = self._by_name(models)
    t = self.config.eval.get("attention_t", 500) if t is None else t
    x0 = self._to_model_space(pixels_BHWC)
    B = x0.shape[0]
    noise = jax.random.normal(jax.random.key(seed), x0.shape, jnp.float32)
    if self.kind == "flow":          # t = 0 noise → 1 data; the network's label 999·t
      tt = 1.0 - t / (self.config.diffusion.get("num_timesteps", 1000))
      x_t, label = tt * x0 + (1.0 - tt) * noise, jnp.full((B,), FLOW_TIME_LABEL * tt)
    else:
      label = jnp.full((B,), t, jnp.int32)
      x_t = gaussian.q_sample(self.sched, x0, label, noise)
    model = models["model"]
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, cross_attention.CrossAttention)]
    for m in layers:
      m.record = True
    try:
      if self._attn_fn is None:
        def forward(model, text, x, t_B, tokens):
          context, mask = self.text_context(text, tokens)
          return model(x, t_B, context_BSD=context, context_mask_BS=mask)
        self._attn_fn = nnx.jit(nnx.capture(forward, nnx.Intermediate))
      _, sown = self._attn_fn(model, models["text"], x_t, label, jnp.asarray(tokens_BS))
    finally:
      for m in layers:
        m.record = False
    probs = [w for v in jax.tree.leaves(sown, is_leaf=lambda v: isinstance(v, nnx.Variable))
             for w in v.get_value()]
    H, W = self.pixel_shape[:2]
    S = probs[0].shape[-1]
    maps, weights = [], []
    for p_BNTS in probs:
      p_BTS = np.asarray(p_BNTS, np.float32).mean(axis=1)
      side = int(round(np.sqrt(p_BTS.shape[1])))
      grid = p_BTS.reshape(B, side, side, S)
      maps.append(np.asarray(jax.image.resize(grid, (B, H, W, S), "linear")))
      weights.append(p_BTS.mean(axis=1))
    return {"maps_BHWS": np.mean(maps, axis=0), "weights_BS": np.mean(weights, axis=0),
            "num_layers": len(probs), "t": t}

  def _to_model_space(self, pixels_BHWC) -> jax.Array:
    """Padded pixels → the denoiser's input space (the encoder's mean × scale when latent)."""
    x = jnp.asarray(pixels_BHWC, jnp.float32)
    if self.latent is None:
      return x
    mean, _ = self._latent_fn("encode")(x)
    return self.latent.scale_factor * mean


def class_word_weight(weights_BS, tokens_BS, labels_B, dataset: str) -> float:
  """The mean cross-attention weight on each prompt's class word."""
  ids = np.asarray([captions.VOCAB.index(captions.CLASS_WORDS[dataset][c]) for c in labels_B])
  hit_BS = np.asarray(tokens_BS) == ids[:, None]
  return float(np.mean(np.sum(np.asarray(weights_BS) * hit_BS, axis=1)))


def _words(tokens_S) -> list[str]:
  """The tokens up to and including EOS, as words (<bos>, …, <eos>)."""
  out = []
  for i in np.asarray(tokens_S).tolist():
    if i == captions.PAD:
      break
    out.append(captions.VOCAB[i])
  return out


def save_prompt_grid(path: str, samples_BHWC, tokens_BS, cols: int, title: str,
                     rows: int = 3) -> str:
  """The first rows·cols samples, each under its prompt."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = min(len(samples_BHWC), rows * cols)
  rows = max(1, (n + cols - 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.axis("off")
    if i >= n:
      continue
    img = np.clip((np.asarray(samples_BHWC[i]) + 1.0) / 2.0, 0.0, 1.0)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    words = captions.decode(tokens_BS[i]).split()
    half = (len(words) + 1) // 2
    ax.set_title(" ".join(words[:half]) + "\n" + " ".join(words[half:]), fontsize=6)
  fig.suptitle(title, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def save_attention_maps(path: str, samples_BHWC, tokens_BS, maps_BHWS, title: str) -> str:
  """One row per prompt: the sample, then each token's map (BOS … EOS), each panel scaled to
  its own maximum (the title gives that maximum weight)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  words = [_words(t) for t in tokens_BS]
  cols = 1 + max(len(w) for w in words)
  B = len(words)
  fig, axes = plt.subplots(B, cols, figsize=(1.3 * cols, 1.5 * B + 0.4), squeeze=False)
  for b in range(B):
    img = np.clip((np.asarray(samples_BHWC[b])[..., 0] + 1.0) / 2.0, 0.0, 1.0)
    for j, ax in enumerate(axes[b]):
      ax.axis("off")
      if j == 0:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title("sample", fontsize=6)
      elif j <= len(words[b]):
        m = maps_BHWS[b, :, :, j - 1]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(m, cmap="jet", alpha=0.55, vmin=0, vmax=max(float(m.max()), 1e-9))
        ax.set_title(f"{words[b][j - 1]}\nmax {float(m.max()):.2f}", fontsize=6)
  fig.suptitle(title, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
