"""A GAN on the 2-D toy sets: two models, two optimizers, alternating updates in one step.

Goodfellow et al. 2014, arXiv:1406.2661, Algorithm 1: per training step, k discriminator
updates (`config.gan.critic_steps`) on the real batch against fresh generator samples, then one
generator update on fresh noise; losses from `genfm.foundations.gan` (the discriminator's
−V of eq. (1), and the non-saturating or minimax generator loss). Each model has its own
optimizer and schedule (`config.optimizers.{generator,discriminator}`, e.g. the two learning
rates of TTUR, Heusel et al. 2017, arXiv:1706.08500). This is also the loop's small two-model
task: its metrics go under each model's name (`train_generator/loss`,
`train_discriminator/grad_norm`), and it resumes bitwise after SIGKILL like every task.

`config.gan.generator_loss = "wgan_gp"` trains WGAN-GP instead (Gulrajani et al. 2017,
arXiv:1704.00028, Alg. 1): the discriminator is a critic scored by eq. (3) — E[D(x̃)] − E[D(x)]
plus λ (`config.gan.gp_lambda`) times the gradient penalty at per-example interpolates — and G
descends −E[D(G(z))]; `critic_steps` (n_critic, 5 in the paper) critic updates per G update, all
on the step's real batch with fresh fakes each.

Evaluation: held-out discriminator loss (fixed noise; the critic gap E[D(x)] − E[D(G(z))] for
WGAN-GP), and the energy distance of `eval.num_samples` generator samples to held-out points
beside the data floor (`toy2d_eval`), with a scatter plot. On the Gaussian mixtures
(eight_gaussians, grid25) also the mode-collapse metrics of Unrolled GAN (Metz et al. 2017,
arXiv:1611.02163, §3.1) and VEEGAN (Srivastava et al. 2017, arXiv:1705.07761, §5.1): a sample
is high quality when it lies within 3σ of the nearest mode centre; `high_quality_share` is
their fraction, and `modes_covered` counts the modes with at least `eval.mode_min_count`
high-quality samples (our threshold, stated in the config; VEEGAN does not print its own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments import data
from genfm.experiments.data import toy2d
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import toy2d_eval
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import choice
from genfm.foundations import gan

LOSSES = gan.GENERATOR_LOSSES + ("wgan_gp",)


def mode_coverage(samples_N2: np.ndarray, centres_K2: np.ndarray, std: float,
                  min_count: int) -> dict[str, float]:
  """{"modes_covered", "high_quality_share"}: a sample is high quality within 3σ (Euclidean) of
  its nearest centre (1611.02163 §3.1, 1705.07761 §5.1); a mode is covered when at least
  `min_count` high-quality samples are nearest to it. Non-finite samples are low quality."""
  x = np.where(np.isfinite(samples_N2), samples_N2, np.inf)
  dist_NK = np.linalg.norm(x[:, None, :] - centres_K2[None, :, :], axis=-1)
  nearest_N, good_N = dist_NK.argmin(axis=1), dist_NK.min(axis=1) <= 3.0 * std
  counts_K = np.bincount(nearest_N[good_N], minlength=len(centres_K2))
  return {"modes_covered": float((counts_K >= min_count).sum()),
          "high_quality_share": float(good_N.mean())}


class GAN2DTask(Task):
  """`config.dataset` (2-D points) → MLP generator vs MLP discriminator."""

  def __init__(self, config):
    super().__init__(config)
    self._train = toy2d_eval.train_points(config, "gan2d")
    g = config.gan
    choice("config.gan.generator_loss", g.generator_loss, LOSSES)
    if not isinstance(g.critic_steps, int) or g.critic_steps < 1:
      raise ConfigError(f"config.gan.critic_steps must be a positive integer, got "
                        f"{g.critic_steps!r}")
    toy2d_eval.check_num_samples(config)
    self._sample_fn = None

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": data.load(self.config.dataset, "test")}

  def build_models(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    g = self.config.gan
    return {"generator": gan.MLPGenerator(g.latent_dim, 2, g.hidden, g.depth, rngs=rngs),
            "discriminator": gan.MLPDiscriminator(2, g.hidden, g.depth, rngs=rngs)}

  def noise(self, key: jax.Array, like_B2: jax.Array) -> jax.Array:
    """z [B, Z] ~ N(0, I), laid out like the batch."""
    return jax.random.normal(key, (like_B2.shape[0], self.config.gan.latent_dim), jnp.float32)

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    x_B2, g = batch["x"], self.config.gan
    for i in range(g.critic_steps):           # Algorithm 1: k steps of D, then one of G
      fake_B2 = ctx.model("generator", train=True)(self.noise(jax.random.fold_in(key, i), x_B2))

      if g.generator_loss == "wgan_gp":     # eq. (3) of 1704.00028, ε ~ U[0, 1] per example
        eps_B = jax.random.uniform(jax.random.fold_in(key, g.critic_steps + 1 + i),
                                   x_B2.shape[:1])
        ctx.update("discriminator", lambda d, fake_B2=fake_B2, eps_B=eps_B:
                   gan.wgan_gp_critic_loss(d, x_B2, fake_B2, eps_B,
                                           g.get("gp_lambda", gan.GP_LAMBDA)))
        continue

      def d_loss(disc, fake_B2=fake_B2):
        real_B, fake_B = disc(x_B2), disc(fake_B2)
        return gan.discriminator_loss(real_B, fake_B), {
            "d_real": jnp.mean(jax.nn.sigmoid(real_B)), "d_fake": jnp.mean(jax.nn.sigmoid(fake_B))}

      ctx.update("discriminator", d_loss)
    z_BZ = self.noise(jax.random.fold_in(key, g.critic_steps), x_B2)
    disc = ctx.model("discriminator", train=True)   # after its updates; a constant for G's loss
    if g.generator_loss == "wgan_gp":
      ctx.update("generator", lambda gen: (gan.wgan_generator_loss(disc(gen(z_BZ))), {}))
    else:
      ctx.update("generator", lambda gen: (
          gan.generator_loss(disc(gen(z_BZ)), g.generator_loss), {}))

  def eval_metrics(self, models, batch: Batch):
    """Held-out discriminator loss −V (fixed noise), as per-example sums."""
    x_B2, mask_B = batch["x"], batch["mask"]
    disc = models["discriminator"]
    fake_B2 = models["generator"](self.noise(jax.random.key(1234), x_B2))
    real_B, fake_B = disc(x_B2), disc(fake_B2)
    if self.config.gan.generator_loss == "wgan_gp":   # the critic gap, whose mean estimates W₁
      return {"wasserstein": ((real_B - fake_B) * mask_B).sum(), "count": mask_B.sum()}
    loss_B = jax.nn.softplus(-real_B) + jax.nn.softplus(fake_B)   # −V per example, eq. (1)
    return {"discriminator_loss": (loss_B * mask_B).sum(), "count": mask_B.sum()}

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    if self._sample_fn is None:
      graphdef = nnx.graphdef(models["generator"])
      num, seed = self.config.eval.num_samples, self.config.eval.sample_seed
      self._sample_fn = jax.jit(lambda state: nnx.merge(graphdef, state)(
          jax.random.normal(jax.random.key(seed), (num, self.config.gan.latent_dim))))
    samples_N2 = np.asarray(jax.device_get(self._sample_fn(nnx.state(models["generator"]))))
    out = toy2d_eval.evaluate(self.config, samples_N2, workdir, step,
                              self.config.get("name", "gan2d"))
    modes = toy2d.mixture_modes(self.config.dataset)
    if modes is not None:
      out.update(mode_coverage(samples_N2, *modes, self.config.eval.get("mode_min_count", 20)))
    return out
