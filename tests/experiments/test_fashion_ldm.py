"""Latent diffusion (2112.10752) through the image task: the denoiser trains on the frozen KL
autoencoder's scaled posterior samples and its samples are decoded to pixels before scoring.

One digits autoencoder (`fashion_kl_ae.py:smoke`, f = 2 → 4×4×2) is trained per module, in
process; the launcher test then trains `fashion_ldm.py:smoke` on it.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data, train
from genfm.experiments.configs import fashion_kl_ae, fashion_ldm
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask, to_model_input

# Stated in fashion_ldm.py (`:smoke`): FD of 140 decoded DDIM-20 samples.
SMOKE_FD_BOUND = 100.0


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ae_smoke"))
  cfg = fashion_kl_ae.get_config("smoke")       # a third of its steps: any trained AE will do
  cfg.num_train_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = 100
  cfg.eval.latent_stats_images = 1500
  train.train_and_evaluate(cfg, workdir)
  return workdir


def _task(ae_dir, **overrides):
  cfg = fashion_ldm.get_config("smoke")
  cfg.latent_autoencoder_workdir, cfg.latent_autoencoder_config = ae_dir, ""
  cfg.fid_classifier_workdir = ""
  for k, v in overrides.items():
    cfg[k] = v
  return DiffusionImageTask(cfg)


def _batch(task, n=16):
  source = task.train_source()
  return {k: jnp.asarray(v[:n]) for k, v in source.arrays.items()}


def test_latents_are_the_encoders_posteriors_scaled_to_unit_variance(ae_dir):
  task = _task(ae_dir)
  ae = task.latent
  assert task.image_shape == tuple(ae.latent_shape) == (4, 4, 2)
  assert task.pixel_shape == (8, 8, 1)
  batch = _batch(task)
  q = ae.model.encode(to_model_input(batch["image"], 0))
  np.testing.assert_allclose(batch["latent_mean"], q.mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(batch["latent_logvar"], q.logvar, rtol=1e-5, atol=1e-6)
  # key None: the posterior mean, scaled; a key: μ + σ ε with ε from that key, scaled
  np.testing.assert_allclose(task.model_input(batch, None), ae.scale_factor * q.mean, rtol=1e-5,
                             atol=1e-6)   # jitted vs eager encoder
  key = jax.random.key(3)
  eps = jax.random.normal(key, q.mean.shape)
  np.testing.assert_allclose(task.model_input(batch, key),
                             ae.scale_factor * (q.mean + jnp.exp(0.5 * q.logvar) * eps),
                             rtol=1e-5, atol=1e-6)
  # what the denoiser sees has (close to) unit variance over the training set
  x = task.model_input({k: jnp.asarray(v) for k, v in task.train_source().arrays.items()
                        if k.startswith("latent")}, jax.random.key(0))
  assert 0.9 < float(jnp.std(x)) < 1.1


def test_samples_are_decoded_to_pixels(ae_dir):
  task = _task(ae_dir)
  batch = _batch(task)
  z = task.model_input(batch, None)
  pixels = task.to_pixels(z)
  assert pixels.shape == (16, *task.pixel_shape)
  np.testing.assert_allclose(pixels, task.latent.model.decode(batch["latent_mean"]), rtol=1e-4,
                             atol=1e-5)


def test_the_denoiser_is_built_for_latents_and_trains_on_them(ae_dir):
  task = _task(ae_dir)
  model = task.build_model(nnx.Rngs(0))
  batch = _batch(task)
  x0 = task.model_input(batch, None)
  assert model(x0, jnp.zeros(16, jnp.int32), batch["label"].astype(jnp.int32)).shape == x0.shape
  loss, _ = task.loss(model, {**batch, "label": batch["label"]}, jax.random.key(0))
  assert np.isfinite(float(loss))
  # the pixel path keeps its key stream: same loss as before latents existed
  assert "latent_mean" not in data.load("digits", "train").arrays


def test_mismatched_autoencoders_are_one_line(ae_dir, tmp_path):
  with pytest.raises(ConfigError, match=r"holds an autoencoder of 'digits' with pad 0; this run "
                                        r"diffuses 'digits' with pad 2"):
    _task(ae_dir, pad=2)
  with pytest.raises(ConfigError, match="latents \\(4, 4\\) are not divisible by 8"):
    cfg_mults = fashion_ldm.get_config("smoke").model
    cfg_mults.channel_mults = (1, 2, 2, 2)
    _task(ae_dir, model=cfg_mults)
  with pytest.raises(ConfigError, match="holds no finished autoencoder run.*fashion_kl_ae.py:smoke"):
    _task(str(tmp_path / "none"))


@pytest.mark.slow   # ~1 min CPU: encodes 1,500 digits, 150 U-Net steps, 140 DDIM-20 samples
def test_smoke_reaches_its_fd_through_the_launcher(ae_dir, tmp_path, launch):
  clf_dir, workdir = str(tmp_path / "clf"), tmp_path / "ldm"
  proc = launch("fashion_ldm.py:smoke", str(workdir), f"--config.latent_autoencoder_workdir={ae_dir}",
                f"--config.fid_classifier_workdir={clf_dir}", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "summary.json") as f:
    s = json.load(f)
  assert s["finished"] and s["step"] == 150
  assert 0.0 < s["fd_floor"] < s["fd"] <= SMOKE_FD_BOUND, s
  assert os.path.getsize(workdir / "samples_step150.png") > 1000
