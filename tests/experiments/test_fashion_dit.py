"""The image diffusion task with a DiT backbone and the flow-matching objective (config
fashion_dit.py): the flow loss is the CFM loss with label dropout and the 999·t time label, the
flow sampler runs t: 0 (noise) → 1 (data), the equal-FLOPs step count holds, bad choices fail with
one line, and `:smoke` reaches its stated FD through the real launcher."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import bench, data, train
from genfm.experiments.configs import fashion_ddpm, fashion_dit
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask

# Stated in fashion_dit.py: smoke FD (n = 140 DDIM-20 samples, s = 2) measured 27.0 with floor
# 5.6 (fashion_ddpm's U-Net smoke of the same size: 58.7; the untrained network: 128.5).
SMOKE_FD_BOUND = 45.0


def smoke_config(flow: bool = False):
  """fashion_dit's :smoke, without the FD (no classifier is trained or read by unit tests)."""
  cfg = fashion_dit.get_config("smoke")
  cfg.fid_classifier_workdir = ""
  if flow:
    fashion_dit.flow_matching(cfg)
  return cfg


def perturbed_model(task):
  """The task's network with N(0, 0.05²) added to every parameter (host-side draws), so the
  zero-initialised gates and output layer no longer hide the inputs."""
  model = task.build_model(nnx.Rngs(0))
  leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(1)
  nnx.update(model, jax.tree.unflatten(treedef, [
      p + jnp.asarray(0.05 * rng.normal(size=p.shape), p.dtype) for p in leaves]))
  return model


def test_flow_loss_is_cfm_with_label_dropout_and_time_label():
  """‖v(x_t, 999 t, c) − (data − noise)‖² with x_t = t data + (1 − t) noise (rf path, t = 1 is
  data), t ~ U[0, 1) / noise / label-dropout u from the documented three keys."""
  cfg = smoke_config(flow=True)
  cfg.diffusion.p_uncond = 0.5
  task = DiffusionImageTask(cfg)
  model = perturbed_model(task)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1)), jnp.uint8),
           "label": jnp.asarray(rng.integers(0, 10, (16,)), jnp.int32)}
  key = jax.random.key(3)
  t_key, z_key, u_key = jax.random.split(key, 3)
  t = np.asarray(jax.random.uniform(t_key, (16,)), np.float64)
  noise = np.asarray(jax.random.normal(z_key, (16, 8, 8, 1)), np.float64)
  labels = np.where(np.asarray(jax.random.uniform(u_key, (16,))) < 0.5, 10,
                    np.asarray(batch["label"]))
  assert 0 < (labels == 10).sum() < 16
  data_ = np.asarray(batch["image"], np.float64) / 127.5 - 1.0
  tt = t[:, None, None, None]
  x_t = tt * data_ + (1.0 - tt) * noise
  pred = np.asarray(nnx.jit(lambda m, *a: m(*a))(
      model, jnp.asarray(x_t, jnp.float32), jnp.asarray(999.0 * t, jnp.float32),
      jnp.asarray(labels)))
  hand = np.mean((pred - (data_ - noise)) ** 2)
  loss, _ = nnx.jit(task.loss)(model, batch, key)
  np.testing.assert_allclose(float(loss), hand, rtol=1e-5)


@pytest.mark.parametrize("method, steps, want_shift", [
    ("euler", 4, 3.0 / 8.0),     # Σ_k h · (k h) = (n − 1) / (2n) for v = t
    ("heun", 2, 0.5),            # trapezoid: exact for v linear in t
])
def test_flow_sampler_runs_from_noise_at_t0_to_data_at_t1(method, steps, want_shift):
  """A fake network answering v = (time label)/999 = t, guided at s = 2 (cond and null give the
  same v, so CFG leaves it): samples are noise + ∫₀¹ t dt discretised — pins the direction
  (t = 0 noise → 1 data), the 999·t label and the noise drawn from the sampling key."""
  cfg = smoke_config(flow=True)
  cfg.diffusion.sampler, cfg.diffusion.sample_steps = method, steps
  task = DiffusionImageTask(cfg)
  fake = lambda x, t_label, labels: jnp.ones_like(x) * (t_label / 999.0)[:, None, None, None]
  labels = jnp.arange(6) % 10
  got = task.sample(fake, jax.random.key(7), labels, method)
  noise = jax.random.normal(jax.random.key(7), (6, 8, 8, 1), jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(noise) + want_shift, atol=1e-6)


def test_untrained_dit_samples_are_the_noise_under_flow():
  """adaLN-Zero: v ≡ 0 at init, so the ODE leaves the noise where it is."""
  task = DiffusionImageTask(smoke_config(flow=True))
  model = task.build_model(nnx.Rngs(0))
  labels = jnp.arange(4) % 10
  got = task.sample(model, jax.random.key(2), labels, "heun", 3)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(
      jax.random.normal(jax.random.key(2), (4, 8, 8, 1), jnp.float32)))


@pytest.mark.parametrize("config, key, value, match", [
    ("dit", "model.kind", "vit", "valid choices"),
    ("dit", "model.patch_size", 3, "patch size 3 does not divide the image size 8"),
    ("dit", "model.learn_sigma", True, "learn_sigma"),
    ("dit", "model.num_heads", 5, "not divisible by num_heads"),
    ("flow", "diffusion.kind", "score", "valid choices"),
    ("flow", "diffusion.path", "vp", "valid choices"),
    ("flow", "diffusion.sampler", "ddim", "valid choices"),
    ("flow", "diffusion.sample_steps", 0, "NFE < 1"),
    ("flow", "diffusion.sigma_min", 1.5, "sigma_min"),
    ("flow", "diffusion.p_uncond", 0.0, "unconditional model"),
])
def test_bad_choices_raise_config_errors(config, key, value, match):
  cfg = smoke_config(flow=config == "flow")
  group, name = key.split(".")
  cfg[group][name] = value
  with pytest.raises(ConfigError, match=match) as e:
    DiffusionImageTask(cfg)
  assert "\n" not in str(e.value)


def test_variants_build():
  """"" and :flow: the 1.84M-parameter DiT for 3,490 steps; :unet_flow: fashion_ddpm's U-Net for
  its 5,000 steps; fashion_ddpm itself is still a U-Net DDPM (the defaults)."""
  for variant, n_params, kind, model_kind, steps in (
      ("", 1_844_496, "ddpm", "dit", fashion_dit.DIT_STEPS),
      ("flow", 1_844_496, "flow", "dit", fashion_dit.DIT_STEPS),
      ("unet_flow", 268_017, "flow", "unet", 5_000)):
    cfg = fashion_dit.get_config(variant)
    cfg.fid_classifier_workdir = ""
    task = DiffusionImageTask(cfg)
    assert (task.kind, task.model_kind, cfg.num_train_steps) == (kind, model_kind, steps)
    shapes = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(shapes)) == n_params
  legacy_cfg = fashion_ddpm.get_config("smoke")
  legacy_cfg.fid_classifier_workdir = ""          # (else its classifier is trained into ./runs)
  legacy = DiffusionImageTask(legacy_cfg)
  assert (legacy.kind, legacy.model_kind) == ("ddpm", "unet")


def _step_flops(cfg) -> float:
  cfg.fid_classifier_workdir = ""
  task = DiffusionImageTask(cfg)
  models, state = train.init_state(task, cfg)
  step = jax.jit(train.make_train_step(task, cfg, models))
  batch = jax.tree.map(jnp.asarray, next(data.make_iterator(task.train_source(),
                                                            batch_size=cfg.batch_size, seed=0)))
  return bench.compiled_flops(step, state, batch)


@pytest.mark.slow   # two Fashion-size step compiles: ~40 s CPU
def test_dit_steps_match_the_unet_run_in_training_flops():
  """DIT_STEPS × FLOPs(DiT step) = 5,000 × FLOPs(U-Net step) to within one DiT step, from the
  compiled steps' cost analysis (the numbers stated in fashion_dit.py)."""
  unet, dit_ = _step_flops(fashion_ddpm.get_config("")), _step_flops(fashion_dit.get_config(""))
  assert abs(unet / 1e9 - 11.36) < 0.01 and abs(dit_ / 1e9 - 16.27) < 0.01, (unet, dit_)
  assert abs(fashion_dit.DIT_STEPS * dit_ - fashion_dit.UNET_STEPS * unet) <= dit_


def test_smoke_reaches_its_fd_through_the_launcher(tmp_path, launch):
  clf_dir, workdir = str(tmp_path / "clf"), tmp_path / "dit"
  proc = launch("fashion_dit.py:smoke", str(workdir),
                f"--config.fid_classifier_workdir={clf_dir}", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "training the FID classifier fashion_lenet.py:smoke" in proc.stderr
  with open(workdir / "summary.json") as f:
    s = json.load(f)
  assert s["finished"] and s["step"] == 150 and s["num_params"] == 42_692, s
  assert 0.0 < s["fd_floor"] < s["fd"] <= SMOKE_FD_BOUND, s
  assert s["test_loss"] < 0.3, s                  # ε-loss starts at E‖ε‖² = 1
  assert os.path.getsize(workdir / "samples_step150.png") > 1000
