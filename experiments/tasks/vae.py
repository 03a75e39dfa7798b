"""A VAE on image sets (Fashion-MNIST), evaluated by its test ELBO and IWAE-K bound in nats.

Kingma & Welling 2013, arXiv:1312.6114: MLP encoder and decoder (`genfm.foundations.vae.VAE`),
trained on −ELBO of eq. (10) (one reparameterised sample, KL in closed form; `config.vae.beta`
weights the KL, β-VAE of Higgins et al. 2017). Evaluated with the importance-weighted bound L_K
of Burda et al. 2015, arXiv:1509.00519, eq. (8), K = `config.eval.iwae_num_samples` (5000:
the IWAE paper's test log-likelihood estimate).

Data. Pixels p = uint8/255 ∈ [0, 1], flattened to X = H·W·C. With the Bernoulli decoder the
data are binary: during training each batch is binarised afresh, x ~ Bernoulli(p), keyed by the
step's key (dynamic binarisation: the grey levels are read as probabilities and resampled
each time an image is used, a common protocol for binarised-MNIST log-likelihoods, and a
regulariser against overfitting one fixed binarisation); the test set is binarised ONCE with
`numpy.random.default_rng(config.eval.binarize_seed)` (x = 1 where u < p, u ~ U[0, 1)), so
every eval and every run scores the same binary images. The numbers are then log-probabilities
of binary images, in nats per image (higher is better). Gaussian decoders see p itself
(continuous densities: their nats are not comparable with the Bernoulli's).

Eval metrics: `test_elbo` (β = 1, one sample per image, fixed key, the whole test set), with
its parts `test_log_likelihood` (E_q log p(x|z), one sample) and `test_kl`; from `after_eval`,
`test_iwae` = L_K on the first `eval.iwae_num_images` test images, `iwae_subset_elbo` (the
single-sample ELBO on the same images, for the gap), and `active_units` (latent dims with
Cov_x(E_q[z_j]) > 0.01, §5.2 of 1509.00519). Figures in the workdir: reconstructions (one test
image per class: inputs on top — for Bernoulli the grey image, then the binary input — and
E[x|z = μ(x)] below), a latent traversal (the dims with the
largest mean KL, one per row, z_j from −r to r, the others 0) and an interpolation between the
means of two test images.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments import data
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.diffusion_common import choice
from genfm.foundations import vae

EVAL_KEY = 1234                 # the fixed key of the test ELBO's one sample per image


def pixels(image_BHWC: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] → float32 [B, X] in [0, 1]."""
  return image_BHWC.reshape(image_BHWC.shape[0], -1).astype(jnp.float32) / 255.0


def binarize_fixed(image_NHWC: np.ndarray, seed: int) -> np.ndarray:
  """The seeded, fixed binarisation of a test set: uint8 {0, 255}, pixel on with prob. p/255."""
  u = np.random.default_rng(seed).uniform(size=image_NHWC.shape)
  return np.where(u < image_NHWC / 255.0, 255, 0).astype(np.uint8)


def _positive_int(what: str, v) -> int:
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise ConfigError(f"{what} must be a positive integer, got {v!r}")
  return v


class VAETask(Task):
  """`config.dataset` (images) → `vae.VAE` → −ELBO; evaluated by test ELBO and IWAE-K."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    info = self._train.info
    if info.image_shape is None:
      raise ConfigError(f"dataset {config.dataset!r} is not an image set; the vae task needs "
                        "one (fashion_mnist, digits, mnist_subset)")
    self.image_shape = tuple(info.image_shape)
    v, e = config.vae, config.eval
    choice("config.vae.decoder", v.decoder, vae.DECODERS)
    choice("config.vae.activation", v.activation, tuple(vae.ACTIVATIONS))
    _positive_int("config.vae.latent_dim", v.latent_dim)
    for h in v.hidden:
      _positive_int("each of config.vae.hidden", h)
    if isinstance(v.beta, bool) or not isinstance(v.beta, (int, float)) or v.beta <= 0:
      raise ConfigError(f"config.vae.beta must be a number > 0 (1 = the ELBO), got {v.beta!r}")
    for key in ("iwae_num_samples", "iwae_num_images", "iwae_batch_size", "iwae_chunk_size",
                "num_traversal_dims"):
      _positive_int(f"config.eval.{key}", e[key])
    if not isinstance(e.traversal_range, (int, float)) or e.traversal_range <= 0:
      raise ConfigError(f"config.eval.traversal_range must be a number > 0 (3: ±3 prior std), "
                        f"got {e.traversal_range!r}")
    self.binary = v.decoder == "bernoulli"
    self._test, self._fns = None, None
    n_test = len(self.test_source())
    pair = tuple(e.interpolation_pair)
    if len(pair) != 2 or not all(isinstance(i, int) and 0 <= i < n_test for i in pair):
      raise ConfigError(f"config.eval.interpolation_pair must be two test-image indices in "
                        f"[0, {n_test}), got {pair!r}")

  # --- data and model -------------------------------------------------------------------------

  def train_source(self):
    return self._train

  def test_source(self) -> data.ArraySource:
    """The test split, binarised once with `eval.binarize_seed` for the Bernoulli decoder."""
    if self._test is None:
      test = data.load(self.config.dataset, "test")
      arrays = dict(test.arrays)
      if self.binary:
        arrays["image"] = binarize_fixed(arrays["image"], self.config.eval.binarize_seed)
      self._test = data.ArraySource(arrays, dataclasses.replace(test.info))
    return self._test

  def eval_sources(self):
    return {"test": self.test_source()}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    v = self.config.vae
    return vae.VAE(int(np.prod(self.image_shape)), v.latent_dim, tuple(v.hidden), v.decoder,
                   v.decoder_logvar, v.activation, rngs=rngs)

  # --- losses ---------------------------------------------------------------------------------

  def loss(self, model, batch: Batch, key: jax.Array):
    p_BX = pixels(batch["image"])
    bin_key, z_key = jax.random.split(key)
    # Dynamic binarisation: a fresh x ~ Bernoulli(p) per step.
    x_BX = jax.random.bernoulli(bin_key, p_BX).astype(jnp.float32) if self.binary else p_BX
    terms = vae.elbo(model, x_BX, z_key, self.config.vae.beta)
    return -jnp.mean(terms.elbo), {"elbo": jnp.mean(terms.log_likelihood - terms.kl),
                                   "log_likelihood": jnp.mean(terms.log_likelihood),
                                   "kl": jnp.mean(terms.kl)}

  def eval_metrics(self, model, batch: Batch):
    """Per-example sums of the β = 1 ELBO and its parts (one sample, fixed key)."""
    mask_B = batch["mask"]
    terms = vae.elbo(model, pixels(batch["image"]), jax.random.key(EVAL_KEY))
    return {"elbo": (terms.elbo * mask_B).sum(),
            "log_likelihood": (terms.log_likelihood * mask_B).sum(),
            "kl": (terms.kl * mask_B).sum(), "count": mask_B.sum()}

  # --- evaluation on the host -----------------------------------------------------------------

  def functions(self, model):
    """(iwae, figures): jit(state, ...) functions, each compiled once per run."""
    if self._fns is None:
      graphdef, e = nnx.graphdef(model), self.config.eval

      def iwae(state, x_BX, key):
        """L_K and the single-sample ELBO per image."""
        m, (iwae_key, elbo_key) = nnx.merge(graphdef, state), jax.random.split(key)
        return (vae.iwae_bound(m, x_BX, iwae_key, e.iwae_num_samples, e.iwae_chunk_size),
                vae.elbo(m, x_BX, elbo_key).elbo)

      def figures(state, x_stats_NX, x_show_BX, x_pair_2X):
        """Per-dim mean KL [Z] and active units over x_stats; the traversal's dims; the
        reconstructions, traversal [D, 11, X] and interpolation [10, X] images."""
        m = nnx.merge(graphdef, state)
        mean_NZ, logvar_NZ = m.encode(x_stats_NX)
        kl_Z = jnp.mean(-0.5 * (1 + logvar_NZ - mean_NZ ** 2 - jnp.exp(logvar_NZ)), axis=0)
        active = jnp.sum(jnp.var(mean_NZ, axis=0) > 1e-2)   # §5.2 of 1509.00519
        recon_BX = m.mean_image(m.encode(x_show_BX)[0])
        _, dims_D = jax.lax.top_k(kl_Z, min(e.num_traversal_dims, m.latent_dim))
        values = jnp.linspace(-e.traversal_range, e.traversal_range, 11)
        z_DVZ = jax.nn.one_hot(dims_D, m.latent_dim)[:, None, :] * values[None, :, None]
        mu_2Z = m.encode(x_pair_2X)[0]
        t = jnp.linspace(0.0, 1.0, 10)[:, None]
        path = m.mean_image((1 - t) * mu_2Z[0] + t * mu_2Z[1])
        return kl_Z, active, dims_D, recon_BX, m.mean_image(z_DVZ), path

      self._fns = jax.jit(iwae), jax.jit(figures)
    return self._fns

  def iwae(self, model, images_NHWC: np.ndarray) -> tuple[float, float]:
    """(mean L_K, mean single-sample ELBO) over the images, in batches of eval.iwae_batch_size
    (the last one padded to that size, so one compile serves all)."""
    e, n = self.config.eval, len(images_NHWC)
    iwae_fn, _ = self.functions(model)
    state, lk, el = nnx.state(model), [], []
    for i, start in enumerate(range(0, n, e.iwae_batch_size)):
      batch = images_NHWC[start:start + e.iwae_batch_size]
      pad = e.iwae_batch_size - len(batch)
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
      a, b = iwae_fn(state, pixels(jnp.asarray(batch)),
                     jax.random.fold_in(jax.random.key(e.iwae_seed), i))
      lk.append(np.asarray(a)[:len(batch) - pad])
      el.append(np.asarray(b)[:len(batch) - pad])
    return float(np.concatenate(lk).mean()), float(np.concatenate(el).mean())

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    e, test = self.config.eval, self.test_source()
    images, labels = test.arrays["image"], test.arrays["label"]
    n = min(e.iwae_num_images, len(images))
    lk, subset_elbo = self.iwae(model, images[:n])
    # Figures: the first test image of each class; stats over the first 1000 test images.
    first = [int(np.argmax(labels == k)) for k in np.unique(labels)]
    pair = list(e.interpolation_pair)
    x_show, x_pair = pixels(jnp.asarray(images[first])), pixels(jnp.asarray(images[pair]))
    kl_Z, active, dims, recon, trav, path = (np.asarray(a) for a in self.functions(model)[1](
        nnx.state(model), pixels(jnp.asarray(images[:1000])), x_show, x_pair))
    h, w, c = self.image_shape
    to_img = lambda x: np.asarray(x).reshape(-1, h, w, c)
    name = self.config.get("name", "vae")
    rows, row_labels = [to_img(x_show), to_img(recon)], ["input", "recon."]
    if self.binary:                 # the grey images the binary inputs were drawn from, on top
      grey = data.load(self.config.dataset, "test").arrays["image"][first]
      rows, row_labels = [grey / 255.0] + rows, ["grey p"] + row_labels
    save_rows(os.path.join(workdir, f"reconstructions_step{step}.png"), rows, row_labels,
              f"{name} step {step}: test inputs / reconstructions E[x|z=μ(x)]")
    save_rows(os.path.join(workdir, f"traversal_step{step}.png"),
              [to_img(r) for r in trav], [f"z{d} KL {kl_Z[d]:.2f}" for d in dims],
              f"{name} step {step}: z_j from {-e.traversal_range:g} to {e.traversal_range:g}, "
              "others 0 (dims by mean test KL)")
    ends = to_img(x_pair)
    save_rows(os.path.join(workdir, f"interpolation_step{step}.png"),
              [np.concatenate([ends[:1], to_img(path), ends[1:]])], ["a → b"],
              f"{name} step {step}: test images {pair[0]} and {pair[1]}, decoded "
              "(1 − t) μ_a + t μ_b")
    return {"test_iwae": lk, "iwae_subset_elbo": subset_elbo,
            "iwae_num_samples": float(e.iwae_num_samples), "iwae_num_images": float(n),
            "active_units": float(active)}


def save_rows(path: str, rows: list[np.ndarray], row_labels: list[str], title: str = "") -> str:
  """A PNG of image rows ([N, H, W, C] each, values in [0, 1]), one labelled row per array."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")                        # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  h, w, c = rows[0].shape[1:]
  cols = max(len(r) for r in rows)
  tiles = np.ones((len(rows), cols, h, w, c), np.float32)
  for i, r in enumerate(rows):
    tiles[i, :len(r)] = r
  grid = np.clip(tiles.transpose(0, 2, 1, 3, 4).reshape(len(rows) * h, cols * w, c), 0.0, 1.0)
  fig, ax = plt.subplots(figsize=(1.2 + 0.6 * cols, 0.4 + 0.6 * len(rows)))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
  ax.set_yticks((np.arange(len(rows)) + 0.5) * h)
  ax.set_yticklabels(row_labels, fontsize=7)
  ax.set_xticks([])
  ax.set_title(title, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
