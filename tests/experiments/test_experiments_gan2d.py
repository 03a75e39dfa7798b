"""The 2-D GAN through the launcher: the `:smoke` config reaches its stated energy distance, and
bad GAN settings are one line."""

import json

import pytest

from genfm.experiments.configs import toy2d_gan
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import get_task


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
