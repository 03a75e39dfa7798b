"""The 2-D GAN through the launcher: the `:smoke` config reaches its stated energy distance, and
bad GAN settings are one line."""

import json

import numpy as np
import pytest

from genfm.experiments import data
from genfm.experiments.configs import toy2d_gan
from genfm.experiments.data import toy2d
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import get_task
from genfm.experiments.tasks.gan2d import mode_coverage


def test_smoke_config_reaches_its_energy_distance(tmp_path, launch):
  """Stated in toy2d_gan.py: ED ≤ 0.01 after 2,000 steps (measured 0.0039, floor 0.0028; the
  untrained generator scores 0.86). The EMA weights are scored, the raw ones reported beside."""
  proc = launch("toy2d_gan.py:smoke", tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.load(open(tmp_path / "summary.json"))
  assert s["finished"] and s["energy_distance"] <= 0.01, s
  assert s["energy_floor"] < 0.005 and "raw_energy_distance" in s, s
  assert 1.2 < s["test_discriminator_loss"] < 1.6, s             # near 2 ln 2: D cannot tell
  assert (tmp_path / "samples_step2000.png").read_bytes()[:4] == b"\x89PNG"
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any("train_generator/grad_norm" in r and "train_discriminator/d_real" in r for r in rows)


@pytest.mark.parametrize("key,value,needle", [
    ("generator_loss", "wgan", "unknown config.gan.generator_loss 'wgan'"),
    ("critic_steps", 0, "critic_steps must be a positive integer"),
])
def test_bad_gan_settings_are_one_line(key, value, needle):
  c = toy2d_gan.get_config("smoke")
  c.gan[key] = value
  with pytest.raises(ConfigError, match=needle):
    get_task(c)


def test_mode_coverage_counts_modes_and_high_quality_samples():
  """Hand-built samples on the 25-grid (σ = 0.05, 3σ = 0.15): 30 samples at each of the first
  3 centres, 10 at the 4th (< min_count 20), 7 far from every centre, one NaN."""
  centres, std = toy2d.mixture_modes("grid25")
  offset = np.array([0.1, 0.1])                       # ‖·‖ = 0.141 < 3σ: still high quality
  x = np.concatenate([np.repeat(centres[:3] + offset, 30, axis=0),
                      np.repeat(centres[3:4], 10, axis=0),
                      np.full((7, 2), 1.0),             # between modes: 1.41 from the nearest
                      np.array([[np.nan, 0.0]])])
  m = mode_coverage(x, centres, std, min_count=20)
  assert m == {"modes_covered": 3.0, "high_quality_share": 100 / 108}
  assert mode_coverage(x, centres, std, min_count=10)["modes_covered"] == 4.0
  # Held-out data covers every mode with ~99% high quality (P(r ≤ 3σ) = 1 − e^{−4.5} in 2-D).
  for name, k in (("grid25", 25), ("eight_gaussians", 8)):
    test = data.load(name, "test").arrays["x"][:2000]
    m = mode_coverage(test, *toy2d.mixture_modes(name), min_count=20)
    assert m["modes_covered"] == k and 0.98 < m["high_quality_share"] < 1.0, (name, m)


def test_wgan_gp_variants_follow_algorithm_1():
  for name in ("grid25_wgan_gp", "eight_gaussians_wgan_gp"):
    c = toy2d_gan.get_config(name)
    assert (c.gan.generator_loss, c.gan.critic_steps, c.b2) == ("wgan_gp", 5, 0.9)
    assert c.schedule == "constant" and c.dataset == name.removesuffix("_wgan_gp")
    get_task(c)                                       # accepted by the task
