"""ControlNet on edge maps over a finished, frozen class-conditional DDPM.

ControlNet, Zhang et al. 2023, arXiv:2302.05543 (library: `diffusion/controlnet.py`). Models:
  model       the class-conditional ε-U-Net of a finished `diffusion_image` run (`config.init_from`,
              e.g. runs/fashion_ddpm), LOCKED (`nnx.Nothing`: no gradient, no optimizer state)
  controlnet  its trainable copy of the encoder half + middle block, initialised from the base's
              (`convert_source`: the base's encoder arrays under `copy/`), and the new hint
              encoder and zero convolutions (`new_parameters`: fresh, zero at the joints), so at
              step 0 the controlled model is the base bit for bit.
The condition is the Sobel edge map (`diffusion/edges.py`, threshold `controlnet.hint_threshold`
on the [−1, 1] pixels) of the training image itself; the loss is the base's ε-loss (eq. 14 of
2006.11239) of the controlled prediction, the same objective as eq. (3) of 2302.05543 with the
class label as the prompt, dropped to the null label with probability `controlnet.p_uncond`
(0.5, sec. 3.3: "randomly replace 50% text prompts with empty strings", which makes the
ControlNet read the semantics from the edges). In latent space (`config.latent_autoencoder_workdir`)
the denoiser runs on latents and the pixel-space hint is downsampled by the hint encoder.

A base run of another configuration is refused in one line (the same network, data, padding and
discrete diffusion as this config), and so is no base at all: a random-init U-Net's output conv
is zero, so no gradient would ever reach a ControlNet beside it.

Evaluation: the held-out ε-loss with control (`test_loss`) and of the base alone
(`test_loss_base`) on the same t and ε; for the first `eval.num_samples` test images, guided
samples (the base's scale s, `diffusion.sampler`) with their labels and the same noise WITH and
WITHOUT control; the edge F1 (tolerance `controlnet.f1_tolerance` px) of each sample's edge map
against the control map (`edge_f1_with`, `edge_f1_without`), their FDs when a classifier is set,
and a grid (rows: control | without | with).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import controlnet as cn
from genfm.diffusion import edges
from genfm.diffusion import gaussian
from genfm.diffusion import guidance
from genfm.diffusion import samplers
from genfm.experiments import data, init_from, prerequisite
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.diffusion_common import sampler_kwargs
from genfm.experiments.tasks.diffusion_image import (CLASS_NAMES, DiffusionImageTask,
                                                     to_model_input)

# Keys of the base run's config.json that must equal this run's: the same network on the same
# data, padding, latent space and discrete diffusion (a ControlNet is built for one base).
BASE_KEYS = ("task", "dataset", "pad", "model", "diffusion.prediction", "diffusion.schedule",
             "diffusion.num_timesteps", "latent_autoencoder_workdir")


def check_base_run(config) -> None:
  """`config.init_from` holds a trained `diffusion_image` run of this config's network and
  diffusion (one ConfigError line otherwise)."""
  where = config.get("init_from", "")
  if not where:
    raise ConfigError("the controlnet task needs its base: set --config.init_from to the workdir "
                      "of a trained diffusion_image run (e.g. runs/fashion_ddpm); a random-init "
                      "base has a zero output conv, through which a ControlNet cannot learn")
  ckpts = os.path.join(os.path.abspath(where), "checkpoints")
  if not init_from._steps(ckpts):  # pylint: disable=protected-access
    raise ConfigError(f"base workdir config.init_from={where!r} holds no checkpoint (no "
                      f"{ckpts}/<step>/state); train the base there first")
  try:
    with open(os.path.join(where, "config.json")) as f:
      base = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"base workdir config.init_from={where!r} has no readable config.json; "
                      "it is not a launcher run") from None
  diff = prerequisite.config_difference(json.loads(config.to_json_best_effort()), base,
                                        BASE_KEYS, fixed={"task": "diffusion_image"})
  if diff:
    key, got, want = diff
    raise ConfigError(f"this ControlNet is built for another base: config.init_from={where!r} "
                      f"is a run of {base.get('name', '?')!r} whose {key} is {got!r}, this "
                      f"config's is {want!r}")


class ControlNetTask(DiffusionImageTask):
  """A locked `diffusion_image` U-Net + a trainable ControlNet on the images' edge maps."""

  def __init__(self, config):
    c = config.controlnet
    if not 0.0 <= c.p_uncond <= 1.0:
      raise ConfigError(f"config.controlnet.p_uncond must be in [0, 1], got {c.p_uncond}")
    if not c.hint_threshold >= 0:
      raise ConfigError(f"config.controlnet.hint_threshold must be ≥ 0 (a Sobel magnitude on "
                        f"[−1, 1] pixels), got {c.hint_threshold}")
    if int(c.f1_tolerance) != c.f1_tolerance or c.f1_tolerance < 0:
      raise ConfigError(f"config.controlnet.f1_tolerance must be an integer ≥ 0 (pixels), got "
                        f"{c.f1_tolerance}")
    if config.model.get("kind", "unet") != "unet":
      raise ConfigError("the controlnet task needs a U-Net base (config.model.kind 'unet'); a "
                        "ControlNet copies the U-Net's encoder half")
    check_base_run(config)
    super().__init__(config)
    self.hint_factor = self.pixel_shape[0] // self.image_shape[0]

  # --- models -----------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    base = self.build_model(rngs)
    c = self.config.controlnet
    control = cn.ControlNet(base.cfg, hint_channels=1, hint_widths=tuple(c.hint_widths),
                            hint_factor=self.hint_factor, rngs=rngs)
    return {"model": base, "controlnet": control}

  def trainable(self, name: str):
    return nnx.Param if name == "controlnet" else nnx.Nothing      # the base is locked

  def new_parameters(self, name: str):
    """The hint encoder and the zero convs are new (the base run has none of them)."""
    if name == "controlnet":
      return nnx.Any(nnx.PathContains("hint"), nnx.PathContains("zero_convs"),
                     nnx.PathContains("zero_mid"))
    return nnx.Nothing

  def convert_source(self, name: str, arrays: dict) -> dict:
    """The base's encoder half and middle block for the copy (`copy/…`); its decoder arrays
    (up/, norm_out/, conv_out/) have no place in a ControlNet."""
    if name != "controlnet":
      return arrays
    return {f"copy/{p}": x for p, x in arrays.items() if cn.encoder_paths(p)}

  # --- the condition and the controlled network -------------------------------------------------

  def hint(self, image_BHWC: jax.Array) -> jax.Array:
    """The control: the edge map [B, H, W, 1] of the padded uint8 images."""
    return edges.edge_map(to_model_input(image_BHWC, self.config.get("pad", 0)),
                          self.config.controlnet.hint_threshold)

  def controlled_fn(self, base, control, labels_B, hint_BHWC):
    """apply(x, t, labels) of the controlled base on the loop's mesh; the hint is repeated when
    the batch is the 2B of classifier-free guidance."""
    strength = self.config.controlnet.get("strength", 1.0)

    def apply(x, t, lab):
      hint = hint_BHWC
      if x.shape[0] != hint.shape[0]:
        hint = jnp.concatenate([hint] * (x.shape[0] // hint.shape[0]))
      return cn.controlled(base, control, x, t, lab, hint, strength=strength)
    return apply

  # --- training ---------------------------------------------------------------------------------

  def train_step(self, ctx, batch, key) -> None:
    x_key, n_key = jax.random.split(key)
    x0 = self.model_input(batch, x_key)
    hint = self.hint(batch["image"])
    t_B, z, u_B = self.draw_noise(n_key, x0)
    # the prompt (label) dropped with probability p_uncond — sec. 3.3 of 2302.05543
    labels_B = jnp.where(u_B < self.config.controlnet.p_uncond, self.num_classes,
                         batch["label"].astype(jnp.int32))
    base = ctx.model("model")
    d = self.config.diffusion

    def loss_fn(control):
      apply = self.controlled_fn(base, control, labels_B, hint)
      # L = E ‖ε − ε_θ(z_t, t, c_t, c_f)‖² — eq. (3) of 2302.05543 (c_t: the label here)
      loss_B = gaussian.per_example_loss(lambda xt, t: apply(xt, t, labels_B), self.sched, x0,
                                         t_B, z, d.prediction)
      return jnp.mean(loss_B), {}

    ctx.update("controlnet", loss_fn)

  def eval_metrics(self, models, batch):
    """Held-out ε-loss with control and of the locked base alone, same t and ε (fixed key)."""
    x0 = self.model_input(batch, None)
    mask_B = batch["mask"]
    labels_B = batch["label"].astype(jnp.int32)
    t_B, z, _ = self.draw_noise(jax.random.key(1234), x0)
    apply = self.controlled_fn(models["model"], models["controlnet"], labels_B,
                               self.hint(batch["image"]))
    p = self.config.diffusion.prediction
    with_B = gaussian.per_example_loss(lambda xt, t: apply(xt, t, labels_B), self.sched, x0,
                                       t_B, z, p)
    base_B = self.per_example_loss(models["model"], x0, labels_B, t_B, z)
    return {"loss": (with_B * mask_B).sum(), "loss_base": (base_B * mask_B).sum(),
            "count": mask_B.sum()}

  # --- sampling and evaluation ------------------------------------------------------------------

  def control_sample_fn(self, base, control):
    """jit((base state, control state, key, labels, hint) → (without, with)) guided samples in
    denoiser space, the same key (noise) for both."""
    gb, _ = nnx.split(base)
    gc, _ = nnx.split(control)
    if "control" not in self._sample_fns:          # one pair of networks per run
      d = self.config.diffusion

      def fn(sb, sc, key, labels, hint):
        b, c = nnx.merge(gb, sb), nnx.merge(gc, sc)
        shape = (labels.shape[0],) + self.image_shape
        kw = sampler_kwargs(d, d.sampler)
        plain = guidance.guided_model(lambda x, t, lab: b(x, t, lab), labels, self.num_classes,
                                      d.guidance_scale)
        ctrl = guidance.guided_model(self.controlled_fn(b, c, labels, hint), labels,
                                     self.num_classes, d.guidance_scale)
        return (samplers.sample(d.sampler, plain, self.sched, key, shape, **kw),
                samplers.sample(d.sampler, ctrl, self.sched, key, shape, **kw))
      self._sample_fns["control"] = jax.jit(fn)
    return self._sample_fns["control"]

  def eval_images(self, n: int):
    """(uint8 images, labels) of the first n test images: the controls of the eval samples."""
    test = data.load(self.config.dataset, "test").arrays
    return test["image"][:n], test["label"][:n].astype(np.int32)

  def control_samples(self, models, images, labels):
    """(without, with, hint) as padded pixels [n, H, W, C] / maps, in batches, fixed keys."""
    base, control = models["model"], models["controlnet"]
    fn = self.control_sample_fn(base, control)
    sb, sc = nnx.state(base), nnx.state(control)
    batch = self.config.eval.get("sample_batch_size", len(images))
    outs = [[], [], []]
    for i, start in enumerate(range(0, len(images), batch)):
      hint = self.hint(jnp.asarray(images[start:start + batch]))
      key = jax.random.key(self.config.eval.sample_seed + 1000 * i)
      without, with_ = fn(sb, sc, key, jnp.asarray(labels[start:start + batch]), hint)
      for o, v in zip(outs, (self.to_pixels(without), self.to_pixels(with_), np.asarray(hint))):
        o.append(np.asarray(v))
    return tuple(np.concatenate(o) for o in outs)

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    c, d, n = self.config.controlnet, self.config.diffusion, self.config.eval.num_samples
    fid = self.fid_evaluator()
    images, labels = self.eval_images(n)
    without, with_, hint = self.control_samples(models, images, labels)
    f1 = lambda s: float(np.mean(edges.edge_f1(edges.edge_map(jnp.asarray(s), c.hint_threshold),
                                               jnp.asarray(hint), int(c.f1_tolerance))))
    out = {"edge_f1_with": f1(with_), "edge_f1_without": f1(without),
           "hint_density": float(hint.mean())}
    if fid is not None:
      out.update(fd_with=fid(with_), fd_without=fid(without), fd_floor=fid.floor)
    sampler = d.sampler if d.sampler == "ddpm" else f"{d.sampler}-{d.sample_steps}"
    title = (f"{self.config.get('name', 'controlnet')} step {step}: {sampler}, s = "
             f"{d.guidance_scale}; edge F1 (tol {c.f1_tolerance}) with {out['edge_f1_with']:.3f}"
             f", without {out['edge_f1_without']:.3f} (n = {n})")
    save_control_grid(os.path.join(workdir, f"control_grid_step{step}.png"), hint, without,
                      with_, labels, self.config.eval.get("grid_cols", 10), title,
                      CLASS_NAMES.get(self.config.dataset))
    return out


def save_control_grid(path: str, hint, without, with_, labels, cols: int, title: str = "",
                      class_names=None) -> str:
  """A PNG: one column per example (the first of each class first), rows control map | sample
  without control | sample with control (same label, same noise)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  order = np.argsort(labels, kind="stable")
  firsts = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
  idx = (firsts + [i for i in order if i not in firsts])[:cols]
  rows = [hint[idx] * 2.0 - 1.0, without[idx], with_[idx]]         # maps {0, 1} → [−1, 1]
  h, w = hint.shape[1:3]
  grid = np.concatenate([np.concatenate(list(r[..., 0]), axis=1) for r in rows], axis=0)
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(idx), 2.4))
  ax.imshow(np.clip((grid + 1.0) / 2.0, 0, 1), cmap="gray", vmin=0, vmax=1)
  ax.set_yticks((np.arange(3) + 0.5) * h)
  ax.set_yticklabels(["control", "without", "with"], fontsize=7)
  ax.set_xticks((np.arange(len(idx)) + 0.5) * w)
  ax.set_xticklabels([class_names[int(labels[i])] if class_names else str(int(labels[i]))
                      for i in idx], fontsize=6, rotation=30)
  ax.set_title(title, fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
