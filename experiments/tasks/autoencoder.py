"""The first stage of latent diffusion: a KL autoencoder trained through the shared loop.

Rombach et al. 2022, arXiv:2112.10752 (sec. 3.1, App. G; library `diffusion/autoencoder.py`).
Images: uint8 → x = p/127.5 − 1 ∈ [−1, 1], padded by `config.pad` (Fashion 28 → 32, background
−1), as `diffusion_image` does. Loss per image, in the LDM code's units (sums over pixels and
latent dims, `LPIPSWithDiscriminator`):
    nll = Σ_pixels |x − x̂| (or (x − x̂)²) + P · perceptual_weight · d_perc(x, x̂)
    L   = E_B[nll] + kl_weight · E_B[KL(q(z|x) ‖ N(0, I))]  (+ λ · disc_weight · E[−D(x̂)])
with x̂ decoded from a posterior SAMPLE (the reparameterised z), P = H·W·C. d_perc is the
LPIPS-style distance (1801.03924 eq. (1), unit-normalised channels, no learned weights) on the
activations of OUR trained Fashion classifier (`config.perceptual_classifier_workdir`, a LeNet
run: relu(conv1), relu(conv2), fc1, fc2), fed the centre crop in [0, 1] as in its training; ""
turns the term off. With `ae.disc_weight` > 0 a PatchGAN (1611.07004) trains on the hinge loss
from step `ae.disc_start`, and the generator term's λ is the adaptive weight of eq. (7) of
2012.09841 (gradients at the decoder's last conv).

Evaluation: on the test images (deterministic encoding: x̂ = D(μ)), mean PSNR in dB on [0, 1]
pixels of the UNPADDED image (the 28×28 crop: the padded border would flatter it), L1, MSE and
KL; then (`after_eval`) the Fréchet distance (`diffusion/fashion_fid.py`, classifier
`config.fid_classifier_workdir`, "" skips) of the reconstructions of the floor's own n real
images to the reference set, beside that real-vs-real floor (so FD − floor is what
reconstruction loses), a grid `reconstructions_step{N}.png`, and `<workdir>/latent_stats.json`:
scale_factor = 1/std of posterior samples z (fixed key) over `eval.latent_stats_images` training
images (sec. 4.3.2 / App. G of 2112.10752: "we rescale the latents ... by the component-wise
standard deviation" — one scalar, as the LDM's scale_factor), with their mean and std.
`load_autoencoder(workdir)` reads a finished run back for the latent diffusion tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from genfm.diffusion import autoencoder as ae_lib
from genfm.diffusion import fashion_fid
from genfm.experiments import data, fid_classifier
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import choice
from genfm.experiments.tasks.diffusion_image import to_model_input
from genfm.experiments.tasks.vae import save_rows

REC_LOSSES = ("l1", "l2")
MODEL_KEYS = ("base_channels", "channel_mults", "num_res_blocks", "latent_channels",
              "num_groups")
STATS_FILE = "latent_stats.json"
STATS_KEY = 0                    # fixed key of the posterior samples behind latent_stats.json


def autoencoder_of(models):
  """The autoencoder among the loop's eval models: a dict by name with the discriminator, the
  module itself when it is the run's only model."""
  return models["autoencoder"] if isinstance(models, dict) else models


class AutoencoderTask(Task):
  """`config.dataset` (images, padded) → KLAutoencoder (+ PatchGAN) → reconstruction, PSNR, FD."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    info = self._train.info
    if info.image_shape is None:
      raise ConfigError(f"dataset {config.dataset!r} is not an image set; the autoencoder task "
                        "needs one (fashion_mnist, digits, mnist_subset)")
    pad = config.get("pad", 0)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
      raise ConfigError(f"config.pad must be a non-negative integer, got {pad!r}")
    h, w, c = info.image_shape
    if h != w:
      raise ConfigError(f"the autoencoder takes square images; {config.dataset} is {h}×{w}")
    self.pad, self.raw_shape = pad, (h, w, c)
    a = config.ae
    try:
      self.ae_config = ae_lib.AutoencoderConfig(
          image_channels=c, image_size=h + 2 * pad,
          **{k: tuple(a[k]) if k == "channel_mults" else a[k] for k in MODEL_KEYS})
    except ValueError as e:
      raise ConfigError(f"config.ae: {e}") from None
    choice("config.ae.rec_loss", a.rec_loss, REC_LOSSES)
    for k in ("perceptual_weight", "kl_weight", "disc_weight"):
      v = a[k]
      if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ConfigError(f"config.ae.{k} must be a number ≥ 0, got {v!r}")
    if a.perceptual_weight > 0 and not config.get("perceptual_classifier_workdir", ""):
      raise ConfigError(f"config.ae.perceptual_weight={a.perceptual_weight} needs "
                        "config.perceptual_classifier_workdir (a Fashion classifier run, e.g. "
                        "runs/fashion_lenet); set the weight to 0 to train without it")
    n = config.eval.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
      raise ConfigError(f"config.eval.num_samples must be an integer ≥ 2, got {n!r}")
    self._features, self._fns = None, {}
    if a.perceptual_weight > 0:               # a missing classifier fails before the first step
      self.perceptual_features()
    if config.get("fid_classifier_workdir", ""):
      fid_classifier.ensure(config.fid_classifier_workdir,
                            config.get("fid_classifier_config", ""), config.dataset)

  # --- data and models ------------------------------------------------------------------------

  def train_source(self):
    return self._train

  def eval_sources(self):
    test = data.load(self.config.dataset, "test")
    n = min(self.config.eval.get("num_test_images", len(test)), len(test))
    info = dataclasses.replace(test.info, num_examples=n)
    return {"test": data.ArraySource({k: v[:n] for k, v in test.arrays.items()}, info)}

  @property
  def use_disc(self) -> bool:
    return self.config.ae.disc_weight > 0

  def build_models(self, rngs: nnx.Rngs):
    models = {"autoencoder": ae_lib.KLAutoencoder(self.ae_config, rngs=rngs)}
    if self.use_disc:
      a = self.config.ae
      models["discriminator"] = ae_lib.PatchDiscriminator(
          self.ae_config.image_channels, a.disc_width, a.disc_layers,
          self.ae_config.num_groups, rngs=rngs)
    return models

  def model_input(self, batch: Batch) -> jax.Array:
    # Replicated: one device here; the convs do not need the batch split (see diffusion_common).
    return to_model_input(batch["image"], self.pad)

  # --- the perceptual term --------------------------------------------------------------------

  def perceptual_features(self):
    """features_fn(x [B, H, W, C] in [−1, 1], padded) → [relu(conv1), relu(conv2), fc1, fc2]
    of the frozen LeNet of `config.perceptual_classifier_workdir` (its parameters constants)."""
    if self._features is None:
      workdir = self.config.perceptual_classifier_workdir
      try:
        clf, clf_cfg = fid_classifier.load_classifier(workdir)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.perceptual_classifier_workdir: {e}") from None
      if clf_cfg.get("dataset") != self.config.dataset:
        raise ConfigError(f"the perceptual classifier in {workdir} was trained on "
                          f"{clf_cfg.get('dataset')!r}, this autoencoder reads "
                          f"{self.config.dataset!r}")
      if not all(hasattr(clf, k) for k in ("conv1", "conv2", "fc1", "fc2")):
        raise ConfigError(f"config.perceptual_classifier_workdir={workdir!r} holds a "
                          f"{type(clf).__name__}; the perceptual term reads a LeNet's layers "
                          "(train one with fashion_lenet.py)")
      graphdef, state = nnx.split(clf)
      h, w, _ = self.raw_shape
      pad = self.pad

      def features_fn(x_BHWC):
        m = nnx.merge(graphdef, state)
        x = (x_BHWC[:, pad:pad + h, pad:pad + w] + 1.0) / 2.0   # the classifier's [0, 1] input
        a1 = jax.nn.relu(m.conv1(x))
        a2 = jax.nn.relu(m.conv2(nnx.max_pool(a1, (2, 2), strides=(2, 2))))
        f = nnx.max_pool(a2, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
        f1 = jax.nn.relu(m.fc1(f))
        return [a1, a2, f1, jax.nn.relu(m.fc2(f1))]

      self._features = features_fn
    return self._features

  # --- training -------------------------------------------------------------------------------

  def nll(self, x_BHWC, recon_BHWC) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(nll_B, rec_B per pixel, perceptual_B): the LDM's Σ_pixels (rec + w_p · d_perc)."""
    a = self.config.ae
    diff = x_BHWC - recon_BHWC
    per_pixel = jnp.abs(diff) if a.rec_loss == "l1" else diff ** 2
    num_pixels = per_pixel[0].size
    rec_B = jnp.mean(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)
    if a.perceptual_weight > 0:
      perc_B = ae_lib.perceptual_distance(self.perceptual_features(), x_BHWC, recon_BHWC)
    else:
      perc_B = jnp.zeros_like(rec_B)
    return num_pixels * (rec_B + a.perceptual_weight * perc_B), rec_B, perc_B

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    a = self.config.ae
    x = self.model_input(batch)
    on = (ctx.step >= a.disc_start).astype(jnp.float32) if self.use_disc else 0.0

    def ae_loss(model):
      posterior = model.encode(x)
      feats = model.decode_features(posterior.sample(key))
      out = model.decoder.conv_out
      kernel = out.kernel[...]
      head = lambda k: ae_lib.conv_with_kernel(out, feats, k)   # x̂ as a function of G_L
      recon = head(kernel)
      nll_B, rec_B, perc_B = self.nll(x, recon)
      kl_B = posterior.kl()
      loss = jnp.mean(nll_B) + a.kl_weight * jnp.mean(kl_B)
      metrics = {"rec": jnp.mean(rec_B), "perceptual": jnp.mean(perc_B), "kl": jnp.mean(kl_B),
                 "nll": jnp.mean(nll_B)}
      if self.use_disc:
        disc = ctx.model("discriminator")
        g_of = lambda k: -jnp.mean(disc(head(k)))           # generator loss of the hinge GAN
        lam = ae_lib.adaptive_weight(
            jax.grad(lambda k: jnp.mean(self.nll(x, head(k))[0]))(kernel), jax.grad(g_of)(kernel))
        g_loss = -jnp.mean(disc(recon))
        loss = loss + on * a.disc_weight * lam * g_loss
        metrics.update(g_loss=g_loss, adaptive_weight=lam)
      return loss, metrics

    ctx.update("autoencoder", ae_loss)
    if self.use_disc:
      recon = jax.lax.stop_gradient(ctx.model("autoencoder")(x, key)[0])
      ctx.update("discriminator", lambda d: (on * ae_lib.hinge_d_loss(d(x), d(recon)), {}))

  # --- evaluation -----------------------------------------------------------------------------

  def psnr(self, x_BHWC, recon_BHWC) -> jax.Array:
    """PSNR [B] in dB on [0, 1] pixels of the unpadded image: 10 log10(1 / MSE)."""
    h, w, _ = self.raw_shape
    crop = lambda t: (jnp.clip(t, -1.0, 1.0)[:, self.pad:self.pad + h, self.pad:self.pad + w]
                      + 1.0) / 2.0
    mse_B = jnp.mean(((crop(x_BHWC) - crop(recon_BHWC)) ** 2).reshape(x_BHWC.shape[0], -1), -1)
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse_B, 1e-10))

  def eval_metrics(self, models, batch: Batch):
    x, mask_B = self.model_input(batch), batch["mask"]
    recon, posterior = autoencoder_of(models)(x)                 # key None: x̂ = D(μ)
    diff = (x - recon).reshape(x.shape[0], -1)
    s = lambda v_B: (v_B * mask_B).sum()
    return {"psnr": s(self.psnr(x, recon)), "l1": s(jnp.mean(jnp.abs(diff), -1)),
            "mse": s(jnp.mean(diff ** 2, -1)), "kl": s(posterior.kl()), "count": mask_B.sum()}

  def _fn(self, model, name: str):
    """jit((state, x) → ...) of the autoencoder, compiled once per run."""
    if name not in self._fns:
      graphdef = nnx.graphdef(model)
      if name == "reconstruct":
        f = lambda state, x: nnx.merge(graphdef, state)(x)[0]
      else:                                                        # "sample_latents"
        f = lambda state, x, key: nnx.merge(graphdef, state).encode(x).sample(key)
      self._fns[name] = jax.jit(f)
    return self._fns[name]

  def reconstruct(self, model, images_NHWC: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Deterministic reconstructions D(μ(x)) in [−1, 1], padded [N, H, W, C]."""
    fn, state = self._fn(model, "reconstruct"), nnx.state(model)
    return np.concatenate([np.asarray(fn(state, fashion_fid.from_pixels(
        images_NHWC[i:i + batch_size], self.pad))) for i in range(0, len(images_NHWC),
                                                                   batch_size)])

  def latent_stats(self, model) -> dict:
    """Mean and std of posterior samples z over the first `eval.latent_stats_images` training
    images (fixed key), scale_factor = 1/std (sec. 4.3.2 / App. G of 2112.10752). float64 sums:
    ~10⁶ values."""
    n = min(self.config.eval.latent_stats_images, len(self._train))
    images = self._train.arrays["image"][:n]
    fn, state, zs = self._fn(model, "sample_latents"), nnx.state(model), []
    for i, start in enumerate(range(0, n, 500)):
      x = fashion_fid.from_pixels(images[start:start + 500], self.pad)
      zs.append(np.asarray(fn(state, x, jax.random.fold_in(jax.random.key(STATS_KEY), i))))
    z = np.concatenate(zs).astype(np.float64)
    std = float(z.std())
    return {"scale_factor": 1.0 / std, "latent_mean": float(z.mean()), "latent_std": std,
            "latent_shape": list(self.ae_config.latent_shape), "num_images": int(n)}

  def fid_evaluator(self):
    return fid_classifier.evaluator_for(self.config)

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    e, model = self.config.eval, autoencoder_of(models)
    out = {}
    fid = self.fid_evaluator()
    test = data.load(self.config.dataset, "test").arrays
    if fid is not None:
      # the floor set of FrechetEvaluator (same split, same seed), reconstructed
      _, floor_idx = fashion_fid.reference_split(len(test["image"]), e.num_samples,
                                                 e.sample_seed)
      out.update(fd=fid(self.reconstruct(model, test["image"][floor_idx])), fd_floor=fid.floor)
      out["fd_minus_floor"] = out["fd"] - out["fd_floor"]
    stats = self.latent_stats(model)
    with open(os.path.join(workdir, f"{STATS_FILE}.tmp"), "w") as f:
      json.dump(stats, f, indent=2)
    os.replace(os.path.join(workdir, f"{STATS_FILE}.tmp"), os.path.join(workdir, STATS_FILE))
    out.update(scale_factor=stats["scale_factor"], latent_std=stats["latent_std"])
    labels = test["label"]
    first = [int(np.argmax(labels == k)) for k in np.unique(labels)][:e.get("grid_cols", 10)]
    first += [i for i in range(len(labels)) if i not in first][:e.get("grid_cols", 10) - len(first)]
    inputs = fashion_fid.from_pixels(test["image"][first], self.pad)
    recon = self.reconstruct(model, test["image"][first])
    to01 = lambda t: (np.clip(t, -1.0, 1.0) + 1.0) / 2.0
    f = self.ae_config.downsample_factor
    save_rows(os.path.join(workdir, f"reconstructions_step{step}.png"),
              [to01(inputs), to01(recon), np.clip(np.abs(recon - inputs) / 2.0, 0, 1)],
              ["input", "D(μ(x))", "|error|"],
              f"{self.config.get('name', 'autoencoder')} step {step}: f = {f}, latent "
              f"{'×'.join(map(str, self.ae_config.latent_shape))}"
              + (f", FD {out['fd']:.2f} (floor {out['fd_floor']:.2f})" if fid else ""))
    return out


# --- reading a finished run back (latent diffusion) -----------------------------------------------

@dataclasses.dataclass
class LoadedAutoencoder:
  model: ae_lib.KLAutoencoder
  scale_factor: float
  latent_shape: tuple
  pad: int
  dataset: str
  config: dict


def load_autoencoder(workdir: str) -> LoadedAutoencoder:
  """The autoencoder trained by the launcher in `workdir` (config.json, newest checkpoint and
  latent_stats.json), eval mode; one ConfigError line when `workdir` holds no such run."""
  from genfm.experiments import train  # pylint: disable=g-import-not-at-top (train imports tasks)

  where = f"autoencoder workdir {workdir!r}"
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      cfg = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"{where} has no readable config.json; train one with `python -m "
                      "genfm.experiments.run --config=experiments/configs/fashion_kl_ae.py "
                      f"--workdir={workdir}`") from None
  if cfg.get("task") != "autoencoder":
    raise ConfigError(f"{where} holds a {cfg.get('task')!r} run, not an autoencoder (task "
                      "'autoencoder', fashion_kl_ae.py)")
  try:
    with open(os.path.join(workdir, STATS_FILE)) as f:
      stats = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"{where} has no {STATS_FILE} (written at its first eval); let the run "
                      "reach an eval") from None
  config = ml_collections.ConfigDict(cfg)
  # Reading back needs neither classifier: no perceptual loss, no FD.
  config.ae.perceptual_weight, config.perceptual_classifier_workdir = 0.0, ""
  config.fid_classifier_workdir = ""
  task = AutoencoderTask(config)
  restored = train.restore_eval_model(task, config, workdir)
  if restored is None:
    raise ConfigError(f"{where} has a config but no checkpoint; finish the run")
  models, _ = restored
  return LoadedAutoencoder(model=autoencoder_of(models), scale_factor=float(stats["scale_factor"]),
                           latent_shape=tuple(stats["latent_shape"]), pad=task.pad,
                           dataset=cfg["dataset"], config=cfg)
