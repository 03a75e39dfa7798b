"""Class-unconditional image GANs through the shared loop: DCGAN and WGAN-GP.

DCGAN (Radford et al. 2016, arXiv:1511.06434): the convolutional G and D of
`foundations/dcgan.py`, trained with the GAN losses of 1406.2661 (non-saturating G by default),
one D update per G update. WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028, Alg. 1): the same G,
a critic without batch norm, n_critic = `config.gan.critic_steps` critic updates on the loss of
eq. (3) (λ = `config.gan.gp_lambda`, ε ~ U[0, 1] per example), then one G update on −E[D(G(z))].
Alg. 1 draws a fresh real batch for each critic update: the loop's batch of `batch_size` = k·m
images is cut into k chunks of m, chunk i feeding critic update i; G's update draws m latents.
Losses come from `genfm.foundations.gan`.

Images: uint8 → [−1, 1], padded by `config.pad` pixels of background (−1) per side to the
networks' 32×32 (Fashion-MNIST 28 + 2·2; sklearn digits 8 + 2·12), as `diffusion_image` does.

Evaluation: on the first `eval.num_loss_images` test images, the held-out D loss −V (GAN) or the
critic's Wasserstein estimate E[D(x)] − E[D(G(z))] (WGAN-GP) with fixed noise; then
(`after_eval`) `eval.num_samples` generator samples from a fixed key, a grid PNG
`samples_step{N}.png`, the mean-image gap (a classifier-free first-moment check), and, when
`config.fid_classifier_workdir` is set, their Fréchet distance to as many real test images on
the classifier's penultimate features (`diffusion/fashion_fid.py`, the `fashion_ddpm` protocol),
beside the real-vs-real floor at the same n. The GAN is unconditional; the reference set is the
same class-mixed test subset the DDPM is scored on.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import fashion_fid
from genfm.experiments import data, fid_classifier
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import choice
from genfm.experiments.tasks.diffusion_image import save_grid, to_model_input
from genfm.foundations import dcgan, gan

LOSSES = gan.GENERATOR_LOSSES + ("wgan_gp",)


class GANImageTask(Task):
  """`config.dataset` (images) → DCGAN generator vs DCGAN discriminator / WGAN-GP critic."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    info = self._train.info
    if info.image_shape is None:
      raise ConfigError(f"dataset {config.dataset!r} is not an image set; the gan_image task "
                        "needs one (fashion_mnist, digits, mnist_subset)")
    pad = config.get("pad", 0)
    if not isinstance(pad, int) or pad < 0:
      raise ConfigError(f"config.pad must be a non-negative integer, got {pad!r}")
    h, w, c = info.image_shape
    if (h + 2 * pad, w + 2 * pad) != (dcgan.IMAGE_SIZE, dcgan.IMAGE_SIZE):
      raise ConfigError(f"{config.dataset} images {h}×{w} padded by config.pad={pad} are "
                        f"{h + 2 * pad}×{w + 2 * pad}; the DCGAN networks take "
                        f"{dcgan.IMAGE_SIZE}×{dcgan.IMAGE_SIZE}: set config.pad="
                        f"{(dcgan.IMAGE_SIZE - h) // 2}")
    self.channels = c
    g = config.gan
    choice("config.gan.loss", g.loss, LOSSES)
    if not isinstance(g.critic_steps, int) or g.critic_steps < 1:
      raise ConfigError(f"config.gan.critic_steps must be a positive integer, got "
                        f"{g.critic_steps!r}")
    if config.batch_size % g.critic_steps:
      raise ConfigError(f"config.batch_size={config.batch_size} must be a multiple of "
                        f"config.gan.critic_steps={g.critic_steps}: each critic update takes "
                        "its own chunk of the batch (Alg. 1 of 1704.00028)")
    norm = self.disc_norm()
    if g.loss == "wgan_gp" and norm == "batch":
      raise ConfigError("config.gan.disc_norm='batch' couples the examples the gradient penalty "
                        "differentiates one by one; WGAN-GP's critic takes 'layer' or 'none' "
                        "(1704.00028 §4)")
    n = config.eval.num_samples
    if not isinstance(n, int) or n < 2:
      raise ConfigError(f"config.eval.num_samples must be an integer ≥ 2, got {n!r}")
    self._sample_fn = None
    if config.get("fid_classifier_workdir", ""):   # before the first step, not at the first eval
      fid_classifier.ensure(config.fid_classifier_workdir,
                            config.get("fid_classifier_config", ""), config.dataset)

  def disc_norm(self) -> str:
    norm = self.config.gan.get("disc_norm", "batch")
    choice("config.gan.disc_norm", norm, dcgan.NORMS)
    return norm

  def train_source(self):
    return self._train

  def eval_sources(self):
    test = data.load(self.config.dataset, "test")
    n = min(self.config.eval.get("num_loss_images", len(test)), len(test))
    info = dataclasses.replace(test.info, num_examples=n)
    return {"test": data.ArraySource({k: v[:n] for k, v in test.arrays.items()}, info)}

  def build_models(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    g = self.config.gan
    return {"generator": dcgan.DCGANGenerator(g.latent_dim, self.channels, g.width, rngs=rngs),
            "discriminator": dcgan.DCGANDiscriminator(self.channels, g.get("disc_width", g.width),
                                                      self.disc_norm(), rngs=rngs)}

  def noise(self, key: jax.Array, like_B: jax.Array) -> jax.Array:
    """z [B, Z] ~ N(0, I), laid out like the batch."""
    return jax.random.normal(key, (like_B.shape[0], self.config.gan.latent_dim), jnp.float32)

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    g = self.config.gan
    x_BHWC = to_model_input(batch["image"], self.config.get("pad", 0))
    k = g.critic_steps
    m = x_BHWC.shape[0] // k
    for i in range(k):                   # Alg. 1: k updates of D, each on its own real chunk
      real = x_BHWC[i * m:(i + 1) * m]
      fake = ctx.model("generator", train=True)(self.noise(jax.random.fold_in(key, i), real))
      if g.loss == "wgan_gp":
        eps_B = jax.random.uniform(jax.random.fold_in(key, k + 1 + i), (m,))
        ctx.update("discriminator", lambda d, real=real, fake=fake, eps_B=eps_B:
                   gan.wgan_gp_critic_loss(d, real, fake, eps_B, g.gp_lambda))
      else:
        def d_loss(disc, real=real, fake=fake):
          real_B, fake_B = disc(real), disc(fake)
          return gan.discriminator_loss(real_B, fake_B), {
              "d_real": jnp.mean(jax.nn.sigmoid(real_B)),
              "d_fake": jnp.mean(jax.nn.sigmoid(fake_B))}
        ctx.update("discriminator", d_loss)
    z_BZ = self.noise(jax.random.fold_in(key, k), x_BHWC[:m])

    def g_loss(gen):
      # D after its updates, a constant for G's loss; built inside this trace because its batch
      # norm (train mode, batch statistics) writes running statistics, which are discarded.
      scores_B = ctx.model("discriminator", train=True)(gen(z_BZ))
      if g.loss == "wgan_gp":
        return gan.wgan_generator_loss(scores_B), {}
      return gan.generator_loss(scores_B, g.loss), {}

    ctx.update("generator", g_loss)

  def eval_metrics(self, models, batch: Batch):
    """Held-out −V per example (GAN, eq. (1) of 1406.2661) or the critic gap D(x) − D(G(z))
    (WGAN-GP, whose mean estimates W₁), with fixed noise, as sums."""
    x_BHWC = to_model_input(batch["image"], self.config.get("pad", 0))
    mask_B = batch["mask"]
    disc = models["discriminator"]
    real_B = disc(x_BHWC)
    fake_B = disc(models["generator"](self.noise(jax.random.key(1234), x_BHWC)))
    if self.config.gan.loss == "wgan_gp":
      return {"wasserstein": ((real_B - fake_B) * mask_B).sum(), "count": mask_B.sum()}
    loss_B = jax.nn.softplus(-real_B) + jax.nn.softplus(fake_B)
    return {"discriminator_loss": (loss_B * mask_B).sum(), "count": mask_B.sum()}

  def generate(self, generator: nnx.Module, n: int, seed: int) -> np.ndarray:
    """n samples [n, 32, 32, C] in [−1, 1] from a fixed key (G in eval mode: batch norm uses
    its running statistics)."""
    if self._sample_fn is None:
      graphdef = nnx.graphdef(generator)
      self._sample_fn = jax.jit(lambda state, key: nnx.merge(graphdef, state)(
          jax.random.normal(key, (n, self.config.gan.latent_dim))))
    return np.asarray(jax.device_get(self._sample_fn(nnx.state(generator), jax.random.key(seed))))

  def mean_image_gap(self, samples_BHWC: np.ndarray) -> float:
    """mean over pixels of |mean image of the samples − mean image of as many real test images|
    in [−1, 1]: a first-moment check that needs no classifier (an untrained G's grey ≈ 0
    against the real −1 background and clothes scores ~0.5–0.9, see the config)."""
    test = data.load(self.config.dataset, "test").arrays["image"][:len(samples_BHWC)]
    real = fashion_fid.from_pixels(test, self.config.get("pad", 0))
    return float(np.mean(np.abs(samples_BHWC.mean(0) - real.mean(0))))

  def fid_evaluator(self) -> fashion_fid.FrechetEvaluator | None:
    return fid_classifier.evaluator_for(self.config)

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    n = self.config.eval.num_samples
    fid = self.fid_evaluator()           # first: a missing classifier fails before sampling
    samples = self.generate(models["generator"], n, self.config.eval.sample_seed)
    title = f"{self.config.get('name', 'gan_image')} step {step}: {self.config.gan.loss}"
    out = {"mean_image_gap": self.mean_image_gap(samples)}
    if fid is not None:
      out.update(fd=fid(samples), fd_floor=fid.floor)
      out["fd_ratio"] = out["fd"] / out["fd_floor"]
      title += f", FD {out['fd']:.2f} (real-vs-real floor {fid.floor:.2f}, n = {n})"
    rows = self.config.eval.get("grid_rows", 10)
    save_grid(os.path.join(workdir, f"samples_step{step}.png"), samples, np.arange(n) % rows,
              rows, self.config.eval.get("grid_cols", 10), [""] * rows, title)
    return out
