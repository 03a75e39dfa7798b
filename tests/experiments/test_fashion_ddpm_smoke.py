"""The class-conditional image DDPM task (`diffusion_image`, config fashion_ddpm.py): its loss is
eq. (14) of 2006.11239 with label dropout as documented, bad choices fail with one line, and the
`:smoke` config reaches its stated Fréchet distance through the real launcher, with a digits
LeNet (the FID classifier) trained in the test."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments.configs import fashion_ddpm
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Stated in fashion_ddpm.py: smoke FD (n = 140 DDIM-20 samples, s = 2) measured 58.7 with floor
# 5.6; the untrained network (zero output layer, ε̂ = 0) scores 128.5 with the same classifier.
SMOKE_FD_BOUND = 100.0


def test_loss_is_eq14_with_label_dropout():
  """L_simple from float64 NumPy ᾱ (linear β 1e-4 → 0.02) and the documented key split (t, ε, u
  from three keys); labels with u < p_uncond become the null label 10."""
  cfg = fashion_ddpm.get_config("smoke")
  cfg.diffusion.p_uncond = 0.5
  task = DiffusionImageTask(cfg)
  model = task.build_model(nnx.Rngs(0))
  # Perturb every parameter: with the zero-initialised residual convs the labels (which enter
  # through the time embedding of each ResBlock) would not reach the output.
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [
      p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1)), jnp.uint8),
           "label": jnp.asarray(rng.integers(0, 10, (16,)), jnp.int32)}
  key = jax.random.key(3)

  t_key, z_key, u_key = jax.random.split(key, 3)
  t = np.asarray(jax.random.randint(t_key, (16,), 0, 1000))
  z = np.asarray(jax.random.normal(z_key, (16, 8, 8, 1)), np.float64)
  u = np.asarray(jax.random.uniform(u_key, (16,)))
  labels = np.where(u < 0.5, 10, np.asarray(batch["label"]))
  assert 0 < (labels == 10).sum() < 16
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  x0 = np.asarray(batch["image"], np.float64) / 127.5 - 1.0
  xt = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * z
  pred = np.asarray(model(jnp.asarray(xt, jnp.float32), jnp.asarray(t), jnp.asarray(labels)))
  hand = np.mean((pred - z) ** 2)

  loss, _ = nnx.jit(task.loss)(model, batch, key)
  np.testing.assert_allclose(float(loss), hand, rtol=1e-5)
  # Without dropout the labels differ, and so does the loss: the labels reach the network.
  cfg.diffusion.p_uncond, cfg.diffusion.guidance_scale = 0.0, 1.0
  loss0, _ = DiffusionImageTask(cfg).loss(model, batch, key)
  assert abs(float(loss0) - hand) > 1e-6


def test_clip_x0_reaches_the_sampler():
  """The untrained U-Net (zero output layer) predicts ε̂ = 0, so unclipped DDIM returns
  x_T/√ᾱ_T (≈ 157 x_T); with diffusion.clip_x0 = 1 every sample is a clipped x̂_0 in [−1, 1]."""
  cfg = fashion_ddpm.get_config("smoke")
  model = DiffusionImageTask(cfg).build_model(nnx.Rngs(0))
  labels = jnp.arange(8) % 10
  free = DiffusionImageTask(cfg).sample(model, jax.random.key(0), labels, "ddim", 5)
  cfg.diffusion.clip_x0 = 1.0
  clipped = DiffusionImageTask(cfg).sample(model, jax.random.key(0), labels, "ddim", 5)
  assert float(jnp.max(jnp.abs(free))) > 50.0
  assert float(jnp.max(jnp.abs(clipped))) <= 1.0 and float(jnp.max(clipped)) == 1.0


@pytest.mark.parametrize("key, value, match", [
    ("diffusion.sampler", "euler", "valid choices"),
    ("diffusion.prediction", "score", "valid choices"),
    ("diffusion.sample_steps", 5000, "num_steps"),
    ("diffusion.p_uncond", 0.0, "unconditional model"),   # guidance s = 2 without ∅ training
    ("model.channel_mults", (1, 2, 2, 2, 2), "not divisible"),   # 8×8 digits, 16 needed
    ("diffusion.clip_x0", -1.0, "clip_x0 must be 0"),
])
def test_bad_choices_raise_config_errors(key, value, match):
  cfg = fashion_ddpm.get_config("smoke")
  group, name = key.split(".")
  cfg[group][name] = value
  with pytest.raises(ConfigError, match=match):
    DiffusionImageTask(cfg)


def test_variants_build():
  """The CPU, long-CPU and GPU configs describe 32×32 Fashion-MNIST U-Nets (parameter shapes
  only); `:long` is the CPU U-Net trained longer on an EMA, `:gpu` a bigger one on an EMA."""
  for variant, n_params in (("", 268_017), ("long", 268_017), ("gpu", None)):
    config = fashion_ddpm.get_config(variant)
    assert (config.ema_decay > 0) == (variant != ""), (variant, config.ema_decay)
    config.fid_classifier_workdir = ""   # else the task trains the FD classifier first (minutes)
    task = DiffusionImageTask(config)
    assert task.image_shape == (32, 32, 1)
    shapes = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(shapes))
    if n_params is not None:
      assert total == n_params
    else:
      assert total > 4 * 268_017


@pytest.mark.slow   # ~1–2 min CPU: LeNet + U-Net compiles, 150 steps, 140 guided DDIM-20 samples
def test_smoke_reaches_its_fd_through_the_launcher(tmp_path, launch):
  missing = launch("fashion_ddpm.py:smoke", str(tmp_path / "no_clf"),
                   f"--config.fid_classifier_workdir={tmp_path / 'nowhere'}",
                   "--config.fid_classifier_config=", timeout=600)
  assert missing.returncode == 2, missing.stderr[-2000:]
  assert "fashion_lenet.py:smoke" in missing.stderr and "Traceback" not in missing.stderr
  assert not (tmp_path / "no_clf" / "checkpoints").exists()     # refused before any step

  # One command: the digits classifier is trained first into its workdir, then the DDPM.
  clf_dir, workdir = str(tmp_path / "clf"), tmp_path / "ddpm"
  proc = launch("fashion_ddpm.py:smoke", str(workdir),
                f"--config.fid_classifier_workdir={clf_dir}", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "training the FID classifier fashion_lenet.py:smoke" in proc.stderr
  with open(os.path.join(clf_dir, "summary.json")) as f:
    assert json.load(f)["test_accuracy"] >= 0.95
  with open(workdir / "summary.json") as f:
    s = json.load(f)
  assert s["finished"] and s["step"] == 150
  assert 0.0 < s["fd_floor"] < s["fd"] <= SMOKE_FD_BOUND, s
  assert s["test_loss"] < 0.3, s                  # ε-loss starts at E‖ε‖² = 1
  assert os.path.getsize(workdir / "samples_step150.png") > 1000

  # The quality-vs-steps script reads the trained run back and writes its table and figure.
  steps = subprocess.run(
      [sys.executable, "-m", "genfm.experiments.diffusion_steps", f"--workdir={workdir}",
       "--num_samples=140", "--ddim_steps=5,20", "--noddpm", "--bpd_images=0"],
      capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert steps.returncode == 0, steps.stderr[-3000:]
  with open(workdir / "diffusion_steps.json") as f:
    rows = json.load(f)
  assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 5), ("ddim", 20)]
  assert all(r["fd"] > r["fd_floor"] > 0 for r in rows), rows
  # The same sampler, labels and n as the launcher's eval: the 20-step row reproduces its FD
  # up to sampling noise (different keys), within the smoke bound.
  assert rows[1]["fd"] <= SMOKE_FD_BOUND, rows
  assert os.path.getsize(workdir / "diffusion_steps.png") > 1000
  # Clipped sampling (x̂_0 ∈ [−1, 1]) writes its own *_clip1 outputs beside those.
  clipped = subprocess.run(
      [sys.executable, "-m", "genfm.experiments.diffusion_steps", f"--workdir={workdir}",
       "--num_samples=140", "--ddim_steps=5", "--noddpm", "--bpd_images=0", "--clip_x0=1"],
      capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert clipped.returncode == 0, clipped.stderr[-3000:]
  with open(workdir / "diffusion_steps_clip1.json") as f:
    clip_rows = json.load(f)
  assert [(r["sampler"], r["steps"]) for r in clip_rows] == [("ddim", 5)]
  assert clip_rows[0]["fd"] != rows[0]["fd"]                 # other samples, same n and labels
  with open(workdir / "diffusion_steps.json") as f:
    assert json.load(f) == rows                              # the unclipped table is kept
  assert "clipped to ±1" in (workdir / "diffusion_steps_clip1.md").read_text()
