"""`experiments/diffusion_steps.py`: its bits/dim pipeline (network → VP score → PF-ODE →
Hutchinson → dequantised bits/dim) against the closed form of a network that predicts ε̂ = 0, and
its errors for runs it cannot read. The table itself runs in test_fashion_ddpm_smoke.py."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments import diffusion_steps
from genfm.experiments.configs import fashion_ddpm
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask


def test_bits_per_dim_equals_closed_form_for_a_zero_network():
  """The untrained U-Net's output conv is zero-initialised, so ε̂ ≡ 0 and the score is 0: the
  PF-ODE is dx/dt = −½β(t)x, a linear map. With B = ∫_ε^1 β(t) dt, x₁ = x_ε e^{−B/2} and
  log p(x_ε) = log N(x₁; 0, I) − ½DB (change of variables, eq. (39) of 2011.13456); a Rademacher
  probe gives vᵀ(−½βI)v = −½βD exactly. The dequantisation noise is redrawn from the same key."""
  cfg = fashion_ddpm.get_config("smoke")
  task = DiffusionImageTask(cfg)
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  x_probe = jax.random.normal(jax.random.key(0), (2, *task.image_shape))
  assert float(abs(model(x_probe, np.array([10.0, 500.0]))).max()) == 0.0   # ε̂ ≡ 0

  out = diffusion_steps.bits_per_dim(task, model, cfg, num_images=2, seed=3)

  eps, b0, b1 = 1e-5, 0.1, 20.0
  big_b = b0 * (1 - eps) + 0.5 * (b1 - b0) * (1 - eps ** 2)
  images = data.load(cfg.dataset, "test").arrays["image"][:2].astype(np.float64)
  u_key, _ = jax.random.split(jax.random.key(3))
  u = np.asarray(jax.random.uniform(u_key, images.shape), np.float64)
  x = (images + u) / 128.0 - 1.0
  x1 = (x * np.exp(-0.5 * big_b)).reshape(2, -1)
  d = x1.shape[1]
  logp = -0.5 * d * np.log(2 * np.pi) - 0.5 * (x1 ** 2).sum(1) - 0.5 * d * big_b
  bpd = -logp / (d * np.log(2.0)) + 7.0
  assert out["dims"] == d and not out["failed"]
  np.testing.assert_allclose(out["per_image"], bpd, rtol=0, atol=2e-4)
  assert out["bits_per_dim"] > 7.0 + 0.5 * big_b / np.log(2.0) - 1.0   # the −½DB term dominates


def test_bits_per_dim_refuses_what_it_cannot_read():
  cfg = fashion_ddpm.get_config("smoke")
  task = DiffusionImageTask(cfg)
  model = task.build_model(nnx.Rngs(0))
  cfg.diffusion.schedule = "cosine"
  with pytest.raises(ValueError, match="linear schedule"):
    diffusion_steps.bits_per_dim(task, model, cfg, 1, 0)


def test_load_run_explains_missing_and_foreign_runs(tmp_path):
  with pytest.raises(FileNotFoundError, match="fashion_ddpm.py"):
    diffusion_steps.load_run(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"task": "lm"}, f)
  with pytest.raises(ValueError, match="diffusion_image run"):
    diffusion_steps.load_run(str(tmp_path))
