"""The 2-D task under `diffusion.kind = "flow"` (configs/toy2d_flow.py): its loss is the library's
CFM loss on hand-drawn t, noise and OT pairs; `:smoke` reaches its stated energy distance through
the launcher; reflow trains on the source run's own (noise, ODE(noise)) pairs and straightens
the paths; every bad input is one line."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.optimize import linear_sum_assignment

from genfm.diffusion import flow
from genfm.experiments.configs import toy2d_ddpm, toy2d_flow
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import diffusion2d
from genfm.experiments.tasks.diffusion2d import Diffusion2DTask

# Stated in toy2d_flow.py: `:smoke` (rf, moons, 1500 steps, Euler 20) energy distance ≤ 0.01
# (measured 0.0039, floor 0.0028; a Gaussian fit of the data scores 0.027, N(0, I) 0.19).
SMOKE_BOUND = 0.01


def perturbed_model(task, seed=0):
  model = task.build_model(nnx.Rngs(seed))
  model.out.kernel[...] = jax.random.normal(jax.random.key(seed + 100), model.out.kernel[...].shape)
  model.out.bias[...] = jnp.full(model.out.bias[...].shape, 0.3)
  return model


def toy_batch(n=32, seed=0):
  return {"x": jax.random.normal(jax.random.key(seed), (n, 2)) * 1.5 + jnp.array([0.0, 0.3])}


@pytest.mark.parametrize("variant,coupling", [("rf_moons", "independent"),
                                              ("fm_moons", "independent"),
                                              ("otcfm_moons", "ot")])
def test_flow_loss_equals_hand_computation(variant, coupling):
  """t ~ U(0, 1) from the key's first half, noise from the second; OT pairs from scipy's
  assignment on the batch; x_t = t·data + (1 − (1 − σ_min)t)·noise, target data − (1 − σ_min)
  noise; the network fed 999·t (NumPy float64)."""
  cfg = toy2d_flow.get_config(variant)
  assert cfg.diffusion.coupling == coupling
  task = Diffusion2DTask(cfg)
  model, batch, key = perturbed_model(task), toy_batch(), jax.random.key(7)
  t_key, z_key = jax.random.split(key)
  t = np.asarray(jax.random.uniform(t_key, (32,)), np.float64)[:, None]
  z = np.asarray(jax.random.normal(z_key, (32, 2)), np.float64)
  x = np.asarray(batch["x"], np.float64)
  if coupling == "ot":
    rows, cols = linear_sum_assignment(((z[:, None] - x[None]) ** 2).sum(-1))
    paired = np.empty_like(z)
    paired[cols] = z[rows]                    # noise row i goes with data cols[i]
    z = paired
  s = cfg.diffusion.sigma_min
  xt = t * x + (1 - (1 - s) * t) * z
  pred = np.asarray(model(jnp.asarray(xt, jnp.float32), jnp.asarray(999.0 * t[:, 0], jnp.float32)))
  hand = np.mean((pred - (x - (1 - s) * z)) ** 2)
  loss, _ = nnx.jit(task.loss)(model, batch, key)
  np.testing.assert_allclose(float(loss), hand, rtol=1e-5)
  assert hand > 0.1


def test_reflow_batch_trains_on_its_own_noise():
  """A batch that carries "noise" (the reflow pairs) is used as is: no fresh noise, no OT."""
  task = Diffusion2DTask(toy2d_flow.get_config("rf_moons"))
  model, batch, key = perturbed_model(task), toy_batch(), jax.random.key(3)
  noise = jax.random.normal(jax.random.key(9), (32, 2))
  t_B = jax.random.uniform(jax.random.split(key)[0], (32,))
  expect = jnp.mean(flow.cfm_per_example(task.velocity_fn(model), "rf", noise, batch["x"], t_B))
  loss, _ = task.loss(model, {**batch, "noise": noise}, key)
  np.testing.assert_allclose(float(loss), float(expect), rtol=1e-6)


# --- through the launcher --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from tests.experiments.conftest import _launch  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("flow_smoke")
  proc = _launch("toy2d_flow.py:smoke", workdir, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_smoke_reaches_its_energy_distance_through_the_launcher(smoke_run):
  with open(smoke_run / "summary.json") as f:
    s = json.load(f)
  assert s["finished"] and s["energy_distance"] <= SMOKE_BOUND, s
  assert 0.001 < s["energy_floor"] < 0.01, s       # ≈ 0.0027 for moons at n = 2000 (ANCHORS)
  assert s["straightness"] > 0.3, s                # 1-RF paths bend (measured 1.16)
  assert (smoke_run / "samples_step1500.png").exists()


def test_reflow_pairs_are_the_source_models_ode(smoke_run):
  """The reflow training set is (noise, Euler-`reflow_steps` ODE(noise)) of the loaded source."""
  cfg = toy2d_flow.get_config("smoke")
  cfg.diffusion.reflow_from, cfg.diffusion.reflow_pairs, cfg.diffusion.reflow_steps = (
      str(smoke_run), 300, 10)
  src = Diffusion2DTask(cfg).train_source()
  assert len(src) == 300 and set(src.arrays) == {"x", "noise"}
  _, src_task, model = diffusion2d.load_run(str(smoke_run))
  expect = flow.sample(src_task.velocity_fn(model), jnp.asarray(src.arrays["noise"][:5]),
                       "euler", 10)
  np.testing.assert_allclose(src.arrays["x"][:5], expect, atol=1e-5)


def test_reflow_through_the_launcher_straightens_paths(smoke_run, tmp_path, launch):
  """2-RF (init from the smoke run, 300 steps on 4000 Euler-20 pairs): straightness falls by
  more than 10× and the samples stay within the smoke bound."""
  proc = launch("toy2d_flow.py:smoke", tmp_path,
                f"--config.diffusion.reflow_from={smoke_run}", f"--config.init_from={smoke_run}",
                "--config.diffusion.reflow_pairs=4000", "--config.diffusion.reflow_steps=20",
                "--config.num_train_steps=300",
                "--config.eval_every_steps=300", "--config.checkpoint_every_steps=300",
                timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(smoke_run / "summary.json") as f:
    before = json.load(f)
  with open(tmp_path / "summary.json") as f:
    after = json.load(f)
  assert after["straightness"] < before["straightness"] / 10, (before, after)
  assert after["energy_distance"] <= SMOKE_BOUND, after


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("path", "vp", "unknown config.diffusion.path 'vp'; valid choices: fm, rf"),
    ("coupling", "sinkhorn", "unknown config.diffusion.coupling 'sinkhorn'; valid choices: "
                             "independent, ot"),
    ("sampler", "ddim", "unknown config.diffusion.sampler 'ddim'; valid choices: euler, heun, rk45"),
    ("sample_steps", 0, "config.diffusion.sample_steps: NFE < 1 (got 0)"),
    ("sigma_min", 1.5, "config.diffusion.sigma_min must be in [0, 1), got 1.5")])
def test_bad_choices_one_line(key, value, needle):
  cfg = toy2d_flow.get_config("smoke")
  cfg.diffusion[key] = value
  with pytest.raises(ConfigError, match=r"^" + re.escape(needle)):
    Diffusion2DTask(cfg)


def test_flow_kind_on_a_ddpm_config_names_the_missing_keys():
  cfg = toy2d_ddpm.get_config("smoke")
  cfg.diffusion.kind = "flow"
  with pytest.raises(ConfigError, match=r"needs config\.diffusion\.path, sigma_min, coupling"):
    Diffusion2DTask(cfg)


def test_bad_reflow_sources_one_line(smoke_run, tmp_path):
  """reflow_from: no run there, a run without a checkpoint, a run of another task / kind, of
  another data set, or with the OT coupling asked for on top."""
  def refused(where, needle, **overrides):
    cfg = toy2d_flow.get_config("smoke")
    cfg.diffusion.reflow_from = str(where)
    for k, v in overrides.items():
      cfg.diffusion[k] = v
    with pytest.raises(ConfigError, match=needle):
      Diffusion2DTask(cfg)

  refused(tmp_path / "nothing", r"holds no run \(no config\.json\)")
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(smoke_run / "config.json", no_ckpt / "config.json")
  refused(no_ckpt, r"holds no checkpoint .*; train that run first")
  ddpm = tmp_path / "ddpm"
  ddpm.mkdir()
  (ddpm / "config.json").write_text(toy2d_ddpm.get_config("smoke").to_json())
  refused(ddpm, r"is a run of another task \('diffusion2d', diffusion kind 'ddpm'\)")
  other = tmp_path / "other"
  other.mkdir()
  rec = json.loads((smoke_run / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**rec, "task": "gan2d"}))
  refused(other, r"is a run of another task \('gan2d'")
  rec["dataset"] = "swiss_roll"
  (other / "config.json").write_text(json.dumps(rec))
  refused(other, r"trained on 'swiss_roll', this run on 'moons'")
  refused(smoke_run, r"set config\.diffusion\.coupling='independent'", coupling="ot")
  refused(smoke_run, r"reflow_pairs must be a positive integer, got 0", reflow_pairs=0)


def test_bad_input_through_the_launcher_is_one_line_exit_2(tmp_path, launch):
  proc = launch("toy2d_flow.py:smoke", tmp_path / "run",
                f"--config.diffusion.reflow_from={tmp_path / 'missing'}", timeout=120)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "holds no run (no config.json)" in proc.stderr


def test_flow_table_reproduces_the_runs_own_eval(smoke_run, monkeypatch):
  """flow_table's protocol (same key, reference and floor as toy2d_eval) gives the run's own
  eval numbers at the run's NFE (Euler 20), and its table prints that ratio."""
  from genfm.experiments import flow_table  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(flow_table, "NFES", (20,))
  r = flow_table.evaluate_run(str(smoke_run), None)
  with open(smoke_run / "summary.json") as f:
    s = json.load(f)
  np.testing.assert_allclose(r["floor"], s["energy_floor"], rtol=1e-6)
  np.testing.assert_allclose(r["energy"][20], s["energy_distance"], rtol=1e-4)
  assert 0.0 < r["straightness"] and abs(r["straightness"] - s["straightness"]) < 0.2
  table = flow_table.markdown({"moons": {"RF (1-RF)": r}})
  assert f"| RF (1-RF) | {r['ratio'][20]:.2f} | {r['straightness']:.4f} |" in table


def test_reflow_noise_is_not_the_eval_noise(smoke_run):
  """The pairs' noise shares no row with the eval's (key(sample_seed), the same for every eval
  and flow_table) or the straightness noise: 2-RF is scored on couplings it never trained on."""
  cfg = toy2d_flow.get_config("smoke")
  cfg.diffusion.reflow_from, cfg.diffusion.reflow_pairs, cfg.diffusion.reflow_steps = (
      str(smoke_run), 3000, 2)
  pairs = Diffusion2DTask(cfg).train_source().arrays["noise"]
  for seed in (cfg.eval.sample_seed, cfg.eval.sample_seed + 1):
    eval_noise = np.asarray(jax.random.normal(jax.random.key(seed), (2000, 2)))
    shared = (pairs[:, None, :] == eval_noise[None, :, :]).all(-1).any()
    assert not shared, seed
