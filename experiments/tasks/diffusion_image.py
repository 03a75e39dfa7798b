"""Class-conditional image DDPM with classifier-free guidance, through the shared training loop.

DDPM, Ho et al. 2020, arXiv:2006.11239: ε-prediction U-Net (`diffusion/unet.py`), linear β
1e-4 → 0.02, T = 1000, loss L_simple (eq. 14)
  E_{t, ε, c} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t, c)‖²,  t uniform on 1..T,
averaged over pixels. Class conditioning with label dropout (Ho & Salimans 2022,
arXiv:2207.12598, Algorithm 1): the label c is replaced by the null label ∅ = num_classes with
probability p_uncond, so one network is both ε_θ(x, t, c) and ε_θ(x, t, ∅). Samples use
classifier-free guidance at scale s = 1 + w (`diffusion/guidance.py`) with DDPM ancestral
steps, DDIM (arXiv:2010.02502) or DPM-Solver++(2M) (arXiv:2211.01095).

Backbone `config.model.kind`: "unet" (default; `diffusion/unet.py`) or "dit" (DiT with adaLN-Zero,
arXiv:2212.09748, `diffusion/dit.py`); both are called (x, t, labels) with the null label
`num_classes`. Objective `config.diffusion.kind`: "ddpm" (default; everything above) or "flow" —
conditional flow matching (arXiv:2210.02747; rectified flow's straight path, arXiv:2209.03003,
with `path = "rf"`) through `diffusion/flow.py`: t ~ U[0, 1] with **t = 0 noise and t = 1
data**, x_t = t·data + (1 − (1 − σ_min) t)·noise, loss ‖v_θ(x_t, 999·t, c) − u_t‖² averaged over
pixels (the network sees the DDPM-style time label 999·t, so the same embeddings serve both),
the same label dropout, and samples by integrating dx/dt = ṽ(x, t) from 0 to 1 (Euler / Heun,
`sample_steps` steps) with ṽ the classifier-free guided velocity s·v(x, t, c) + (1 − s)·v(x, t, ∅)
(guidance is linear, so it applies to velocities as to ε).

Images: uint8 {0..255} → x = p/127.5 − 1 ∈ [−1, 1] (the DDPM code's scaling), padded by
`config.pad` pixels of background (−1) per side, on device inside the jitted step (Fashion-MNIST
28×28 → 32×32 with pad 2, so the U-Net halves the size twice).

Evaluation (`after_eval`, host side): `eval.num_samples` guided samples with balanced labels
(sample i has class i mod C) from a fixed key; a grid PNG with one row per class; and, when
`config.fid_classifier_workdir` is set, the Fréchet distance of the samples' classifier features
to as many real test images (`diffusion/fashion_fid.py`), beside the real-vs-real floor of the
same size measured in the same run.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import dit
from genfm.diffusion import fashion_fid
from genfm.diffusion import flow
from genfm.diffusion import gaussian
from genfm.diffusion import guidance
from genfm.diffusion import samplers
from genfm.diffusion.unet import UNet, UNetConfig
from genfm.experiments import data, fid_classifier, prerequisite
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import check_ddpm, choice, sampler_kwargs

MODEL_KINDS = ("unet", "dit")
DIFFUSION_KINDS = ("ddpm", "flow")
FLOW_TIME_LABEL = 999.0      # the network's time label for flow time t ∈ [0, 1] (spec of #19)

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}


def to_model_input(image_BHWC: jax.Array, pad: int) -> jax.Array:
  """uint8 [B, H, W, C] → float32 [B, H + 2 pad, W + 2 pad, C] in [−1, 1], background −1."""
  x = image_BHWC.astype(jnp.float32) / 127.5 - 1.0
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)


class DiffusionImageTask(Task):
  """`config.dataset` (labelled images) → class-conditional U-Net or DiT → DDPM ε-loss or flow
  matching, CFG sampling."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    info = self._train.info
    if info.image_shape is None or info.num_classes is None:
      raise ConfigError(f"dataset {config.dataset!r} is not a labelled image set; the "
                        "diffusion_image task needs one (fashion_mnist, digits, mnist_subset)")
    self.num_classes = info.num_classes
    pad = config.get("pad", 0)
    if not isinstance(pad, int) or pad < 0:
      raise ConfigError(f"config.pad must be a non-negative integer, got {pad!r}")
    h, w, c = info.image_shape
    self.pixel_shape = (h + 2 * pad, w + 2 * pad, c)          # padded pixels [H, W, C]
    self.latent = self._load_latent(config)                    # None: pixel-space diffusion
    # The denoiser's input [H, W, C]: the autoencoder's latent shape in latent diffusion.
    self.image_shape = self.pixel_shape if self.latent is None else tuple(self.latent.latent_shape)
    self._latent_fns = {}
    self.model_kind = config.model.get("kind", "unet")
    choice("config.model.kind", self.model_kind, MODEL_KINDS)
    if self.model_kind == "unet":
      factor = 2 ** (len(config.model.channel_mults) - 1)
      if self.image_shape[0] % factor or self.image_shape[1] % factor:
        what = "padded images" if self.latent is None else "latents"
        raise ConfigError(f"{what} {self.image_shape[:2]} are not divisible by {factor} "
                          f"(the U-Net's {len(config.model.channel_mults)} levels); change "
                          "config.pad or config.model.channel_mults")
    else:
      self.dit_config()                        # bad DiT settings fail here, before any step
    d = config.diffusion
    self.kind = d.get("kind", "ddpm")
    choice("config.diffusion.kind", self.kind, DIFFUSION_KINDS)
    self.sched = check_ddpm(d) if self.kind == "ddpm" else self._check_flow(d)
    if not 0.0 <= d.p_uncond <= 1.0:
      raise ConfigError(f"config.diffusion.p_uncond must be in [0, 1], got {d.p_uncond}")
    clip = d.get("clip_x0", 0.0)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
      raise ConfigError(f"config.diffusion.clip_x0 must be 0 (no clipping) or a bound c > 0 for "
                        f"x̂_0 (1.0 for images in [−1, 1]), got {clip!r}")
    if d.guidance_scale != 1.0 and d.p_uncond == 0.0:
      raise ConfigError(f"config.diffusion.guidance_scale={d.guidance_scale} needs an "
                        "unconditional model: train with config.diffusion.p_uncond > 0 (0.1)")
    n = config.eval.num_samples
    if not isinstance(n, int) or n < 2:
      raise ConfigError(f"config.eval.num_samples must be an integer ≥ 2, got {n!r}")
    self._sample_fns = {}
    if config.get("fid_classifier_workdir", ""):   # before the first step, not at the first eval
      fid_classifier.ensure(config.fid_classifier_workdir,
                            config.get("fid_classifier_config", ""), config.dataset)

  def _load_latent(self, config):
    """The frozen KL autoencoder of `config.latent_autoencoder_workdir` (latent diffusion,
    2112.10752), or None for pixel space. Its data set and padding must be this run's."""
    workdir = config.get("latent_autoencoder_workdir", "")
    if not workdir:
      return None
    from genfm.experiments.tasks import autoencoder  # pylint: disable=g-import-not-at-top
    prerequisite.ensure_run(
        workdir, config.get("latent_autoencoder_config", ""),
        key="config.latent_autoencoder_workdir", spec_key="config.latent_autoencoder_config",
        task="autoencoder", dataset=config.dataset, what="latent autoencoder",
        hint="fashion_kl_ae.py:smoke" if config.dataset == "digits" else "fashion_kl_ae.py")
    ae = autoencoder.load_autoencoder(workdir)
    if ae.dataset != config.dataset or ae.pad != config.get("pad", 0):
      raise ConfigError(f"config.latent_autoencoder_workdir={workdir!r} holds an autoencoder of "
                        f"{ae.dataset!r} with pad {ae.pad}; this run diffuses {config.dataset!r} "
                        f"with pad {config.get('pad', 0)}: set the same data set and config.pad")
    return ae

  @staticmethod
  def _check_flow(d) -> None:
    """`config.diffusion`'s flow-matching choices (path, sampler, steps, σ_min)."""
    choice("config.diffusion.path", d.get("path"), flow.PATHS)
    choice("config.diffusion.sampler", d.sampler, ("euler", "heun"))
    try:
      flow.nfe(d.sampler, d.sample_steps)                       # NFE ≥ 1
    except ValueError as e:
      raise ConfigError(f"config.diffusion: {e}") from None
    if not 0.0 <= d.get("sigma_min", 0.0) < 1.0:
      raise ConfigError(f"config.diffusion.sigma_min must be in [0, 1), got {d.sigma_min}")

  # --- data and model -------------------------------------------------------------------------

  def _model_kwargs(self) -> dict:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in self.config.model.to_dict().items() if k != "kind"}

  def dit_config(self) -> dit.DiTConfig:
    """The DiT of `config.model` (kind "dit") for this task's padded images."""
    h, w, c = self.image_shape
    if h != w:
      raise ConfigError(f"the DiT takes square images; padded images are {h}×{w}")
    m = self._model_kwargs()
    if m.get("learn_sigma", False):
      raise ConfigError("config.model.learn_sigma: the image task trains ε / velocity only; "
                        "set it False")
    try:
      return dit.DiTConfig(image_size=h, in_channels=c, num_classes=self.num_classes, **m)
    except (TypeError, ValueError) as e:        # an unknown key, or a patch that does not fit
      raise ConfigError(f"config.model for the DiT: {e}") from None

  def train_source(self):
    return self.with_latents(self._train)

  # --- latent diffusion: the frozen autoencoder's side (identity in pixel space) ----------------

  def _latent_fn(self, name: str):
    """jit((state, x) → encode / decode), the autoencoder's parameters passed as arguments."""
    if name not in self._latent_fns:
      graphdef, state = nnx.split(self.latent.model)

      def encode(state, x_BHWC):
        q = nnx.merge(graphdef, state).encode(x_BHWC)
        return q.mean, q.logvar

      def decode(state, z):
        return nnx.merge(graphdef, state).decode(z)

      fn = jax.jit(encode if name == "encode" else decode)
      self._latent_fns[name] = lambda x: fn(state, x)
    return self._latent_fns[name]

  def with_latents(self, source, batch_size: int = 1000):
    """`source` plus its images' posterior parameters "latent_mean" / "latent_logvar" [N, h, w,
    c] under the frozen encoder, computed once here: the denoiser then trains on latents without
    an encoder pass per step (the LDM trains on a fixed first stage, sec. 3 of 2112.10752).
    Identity in pixel space."""
    if self.latent is None:
      return source
    pad, images = self.config.get("pad", 0), source.arrays["image"]
    encode, means, logvars = self._latent_fn("encode"), [], []
    for i in range(0, len(images), batch_size):
      mean, logvar = encode(to_model_input(jnp.asarray(images[i:i + batch_size]), pad))
      means.append(np.asarray(mean))
      logvars.append(np.asarray(logvar))
    arrays = {**source.arrays, "latent_mean": np.concatenate(means),
              "latent_logvar": np.concatenate(logvars)}
    return data.ArraySource(arrays, source.info)

  def model_input(self, batch: Batch, key: jax.Array | None) -> jax.Array:
    """The denoiser's clean input x₀ of a batch: the padded pixels in [−1, 1]; in latent space
    a posterior sample z = μ + σ ε (key None ⇒ the mean), times the measured scale factor
    1/std so the diffusion sees unit-variance data (sec. 4.3.2 and App. G of 2112.10752)."""
    if self.latent is None:
      return to_model_input(batch["image"], self.config.get("pad", 0))
    mean, logvar = batch["latent_mean"], batch["latent_logvar"]
    z = mean
    if key is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(
          key, mean.shape, jnp.float32)
    return self.latent.scale_factor * z

  def to_pixels(self, x, batch_size: int = 500) -> np.ndarray:
    """Denoiser-space samples → padded pixels in [−1, 1]-ish: decode(x / scale_factor) in latent
    space, unchanged in pixel space."""
    x = np.asarray(x)
    if self.latent is None:
      return x
    decode = self._latent_fn("decode")
    return np.concatenate([np.asarray(decode(jnp.asarray(x[i:i + batch_size])
                                             / self.latent.scale_factor))
                           for i in range(0, len(x), batch_size)])

  def eval_sources(self):
    """The first `eval.num_loss_images` test images (the held-out ε-loss; a U-Net pass on the
    whole test set at every eval would cost as much as many training steps on a CPU)."""
    test = data.load(self.config.dataset, "test")
    n = min(self.config.eval.get("num_loss_images", len(test)), len(test))
    info = dataclasses.replace(test.info, num_examples=n)
    return {"test": self.with_latents(
        data.ArraySource({k: v[:n] for k, v in test.arrays.items()}, info))}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    if self.model_kind == "dit":
      return dit.DiT(self.dit_config(), rngs=rngs)
    m = self._model_kwargs()
    try:
      cfg = UNetConfig(image_channels=self.image_shape[2], image_size=self.image_shape[0],
                       num_classes=self.num_classes, **m)
    except (TypeError, ValueError) as e:        # an unknown key or choice under config.model
      raise ConfigError(f"config.model for the U-Net: {e}") from None
    return UNet(cfg, rngs=rngs)

  # --- losses ---------------------------------------------------------------------------------

  def draw_noise(self, key: jax.Array, x0_BHWC: jax.Array):
    """(t [B] code indices 0..T−1 — flow: t ~ U[0, 1) —, ε [B, H, W, C], u [B] for label
    dropout), laid out like the batch; t from the first of three split keys, ε from the second,
    u from the third."""
    b = x0_BHWC.shape[0]
    t_key, z_key, u_key = jax.random.split(key, 3)
    if self.kind == "flow":
      t_B = jax.random.uniform(t_key, (b,))
    else:
      t_B = jax.random.randint(t_key, (b,), 0, self.config.diffusion.num_timesteps)
    z_BHWC = jax.random.normal(z_key, x0_BHWC.shape, jnp.float32)
    u_B = jax.random.uniform(u_key, (b,))
    return t_B, z_BHWC, u_B

  def per_example_loss(self, model, x0_BHWC, labels_B, t_B, z_BHWC) -> jax.Array:
    """[B] L_simple (eq. 14 of 2006.11239, the library's) at given t, ε and (possibly null)
    labels. Flow: the CFM loss (eq. 9 of 2210.02747) with ε as the noise end."""
    if self.kind == "flow":
      d = self.config.diffusion
      velocity_fn = lambda xt, t: model(xt, FLOW_TIME_LABEL * t, labels_B)
      return flow.cfm_per_example(velocity_fn, d.path, z_BHWC, x0_BHWC, t_B,
                                  d.get("sigma_min", 0.0))
    model_fn = lambda xt, t: model(xt, t, labels_B)
    return gaussian.per_example_loss(model_fn, self.sched, x0_BHWC, t_B, z_BHWC,
                                     self.config.diffusion.prediction)

  def loss(self, model, batch: Batch, key: jax.Array):
    if self.latent is not None:    # pixel runs keep their exact key stream (and numbers)
      key, z_key = jax.random.split(key)
    x0_BHWC = self.model_input(batch, None if self.latent is None else z_key)
    t_B, z_BHWC, u_B = self.draw_noise(key, x0_BHWC)
    # Label dropout, Algorithm 1 of 2207.12598: c ← ∅ with probability p_uncond.
    labels_B = jnp.where(u_B < self.config.diffusion.p_uncond, self.num_classes,
                         batch["label"].astype(jnp.int32))
    return jnp.mean(self.per_example_loss(model, x0_BHWC, labels_B, t_B, z_BHWC)), {}

  def eval_metrics(self, model, batch: Batch):
    """Held-out conditional ε-loss with a fixed key (the same t and ε at every eval)."""
    x0_BHWC = self.model_input(batch, None)     # latent: the posterior mean (deterministic)
    mask_B = batch["mask"]
    t_B, z_BHWC, _ = self.draw_noise(jax.random.key(1234), x0_BHWC)
    loss_B = self.per_example_loss(model, x0_BHWC, batch["label"].astype(jnp.int32), t_B, z_BHWC)
    return {"loss": (loss_B * mask_B).sum(), "count": mask_B.sum()}

  # --- sampling and evaluation ----------------------------------------------------------------

  def sample(self, model: nnx.Module, key: jax.Array, labels_B: jax.Array, sampler: str,
             num_steps: int | None = None, scale: float | None = None) -> jax.Array:
    """Guided samples [B, H, W, C] in [−1, 1]-ish (traceable; jit it around the model)."""
    d = self.config.diffusion
    scale = d.guidance_scale if scale is None else scale
    model_fn = guidance.guided_model(model, labels_B, self.num_classes, scale)
    shape = (labels_B.shape[0],) + self.image_shape
    if self.kind == "flow":          # t = 0 noise → t = 1 data; the network sees 999·t
      velocity_fn = lambda x, t_B: model_fn(x, FLOW_TIME_LABEL * t_B)
      noise = jax.random.normal(key, shape, jnp.float32)
      steps = d.sample_steps if num_steps is None else num_steps
      return flow.sample(velocity_fn, noise, sampler, steps)
    return samplers.sample(sampler, model_fn, self.sched, key, shape,
                           **sampler_kwargs(d, sampler, num_steps))

  def sample_fn(self, graphdef, sampler: str, num_steps: int | None = None):
    """jit((state, key, labels) → samples), compiled once per (sampler, steps)."""
    name = (sampler, num_steps)
    if name not in self._sample_fns:
      self._sample_fns[name] = jax.jit(lambda state, key, labels: self.sample(
          nnx.merge(graphdef, state), key, labels, sampler, num_steps))
    return self._sample_fns[name]

  def balanced_labels(self, n: int) -> np.ndarray:
    return (np.arange(n) % self.num_classes).astype(np.int32)

  def generate(self, model, n: int, sampler: str, num_steps: int | None = None,
               seed: int | None = None, batch_size: int | None = None) -> np.ndarray:
    """n guided samples with balanced labels (sample i has class i mod C), in batches."""
    graphdef, state = nnx.split(model)
    seed = self.config.eval.sample_seed if seed is None else seed
    batch_size = batch_size or self.config.eval.get("sample_batch_size", n)
    fn, labels, out = self.sample_fn(graphdef, sampler, num_steps), self.balanced_labels(n), []
    for i, start in enumerate(range(0, n, batch_size)):
      lab = jnp.asarray(labels[start:start + batch_size])
      out.append(np.asarray(jax.device_get(fn(state, jax.random.key(seed + 1000 * i), lab))))
    return np.concatenate(out)

  def fid_evaluator(self) -> fashion_fid.FrechetEvaluator | None:
    """The FD evaluator (classifier features, reference set, floor), built once; None when
    `config.fid_classifier_workdir` is empty."""
    return fid_classifier.evaluator_for(self.config)

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    d, n = self.config.diffusion, self.config.eval.num_samples
    fid = self.fid_evaluator()           # first: a missing classifier fails before sampling
    samples = self.to_pixels(self.generate(model, n, d.sampler))
    sampler = d.sampler if d.sampler == "ddpm" else f"{d.sampler}-{d.sample_steps}"
    if self.kind == "flow":
      sampler = f"flow ({d.path}) {sampler}"
    if self.latent is not None:
      sampler = f"latent {'×'.join(map(str, self.image_shape))} {sampler}"
    title = (f"{self.config.get('name', 'diffusion_image')} step {step}: {sampler}, "
             f"guidance s = {d.guidance_scale}")
    out = {}
    if fid is not None:
      out = {"fd": fid(samples), "fd_floor": fid.floor}
      title += f", FD {out['fd']:.2f} (real-vs-real floor {fid.floor:.2f}, n = {n})"
    save_grid(os.path.join(workdir, f"samples_step{step}.png"), samples,
              self.balanced_labels(n), self.num_classes, self.config.eval.get("grid_cols", 10),
              CLASS_NAMES.get(self.config.dataset), title)
    return out


def save_grid(path: str, samples_BHWC: np.ndarray, labels_B: np.ndarray, num_classes: int,
              cols: int, class_names=None, title: str = "") -> str:
  """A PNG grid of samples in [−1, 1]: row c holds the first `cols` samples of class c."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  h, w, c = samples_BHWC.shape[1:]
  tiles = np.full((num_classes, cols, h, w, c), -1.0, np.float32)
  for k in range(num_classes):
    mine = samples_BHWC[labels_B == k][:cols]
    tiles[k, :len(mine)] = mine
  grid = tiles.transpose(0, 2, 1, 3, 4).reshape(num_classes * h, cols * w, c)
  grid = np.clip((grid + 1.0) / 2.0, 0.0, 1.0)
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * cols, 0.3 + 0.6 * num_classes))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
  names = class_names or [str(k) for k in range(num_classes)]
  ax.set_yticks((np.arange(num_classes) + 0.5) * h)
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xticks([])
  ax.set_title(title, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
