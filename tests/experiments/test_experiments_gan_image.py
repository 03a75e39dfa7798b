"""The image GAN through the launcher: the `:smoke` config reaches its stated Fréchet distance
and writes its grid; bad GAN settings are one line; the WGAN-GP variant follows Alg. 1."""

import json

import pytest

from genfm.experiments.configs import fashion_dcgan
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import get_task

SMOKE_GAP_MAX = 0.3         # stated in fashion_dcgan.py: measured 0.193, untrained 0.587


@pytest.mark.slow           # ~2 min on the shared 2-core CPU (compiles, 150 steps, one eval)
def test_smoke_config_reaches_its_mean_image_gap(tmp_path, launch):
  """Stated in fashion_dcgan.py (`:smoke`: 150 steps of a width-8 DCGAN on Fashion-MNIST; the
  mean-image gap of 200 samples to 200 test images; the untrained generator's is stated there)."""
  proc = launch("fashion_dcgan.py:smoke", tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.load(open(tmp_path / "summary.json"))
  assert s["finished"] and s["mean_image_gap"] <= SMOKE_GAP_MAX, s
  assert 0.0 < s["test_discriminator_loss"] < 2.0, s
  assert (tmp_path / "samples_step150.png").read_bytes()[:4] == b"\x89PNG"
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any("train_generator/loss" in r and "train_discriminator/d_real" in r for r in rows)


def test_wgan_gp_variant_is_algorithm_1():
  c = fashion_dcgan.get_config("wgan_gp")
  assert (c.gan.loss, c.gan.critic_steps, c.gan.gp_lambda) == ("wgan_gp", 5, 10.0)
  assert (c.learning_rate, c.b1, c.b2, c.schedule) == (1e-4, 0.0, 0.9, "constant")
  assert c.gan.disc_norm != "batch" and c.batch_size % 5 == 0


@pytest.mark.parametrize("key,value,needle", [
    ("loss", "wgan", "unknown config.gan.loss 'wgan'"),
    ("critic_steps", 0, "critic_steps must be a positive integer"),
    ("critic_steps", 3, "must be a multiple of config.gan.critic_steps=3"),
    ("disc_norm", "group", "unknown config.gan.disc_norm 'group'"),
])
def test_bad_gan_settings_are_one_line(key, value, needle):
  c = fashion_dcgan.get_config("smoke")
  c.fid_classifier_workdir = ""
  c.gan[key] = value
  with pytest.raises(ConfigError, match=needle):
    get_task(c)


def test_wgan_gp_rejects_a_batch_norm_critic_and_a_wrong_pad():
  c = fashion_dcgan.get_config("smoke")
  c.fid_classifier_workdir = ""
  c.gan.loss, c.gan.disc_norm = "wgan_gp", "batch"
  with pytest.raises(ConfigError, match="couples the examples"):
    get_task(c)
  c = fashion_dcgan.get_config("smoke")
  c.fid_classifier_workdir, c.pad = "", 0
  with pytest.raises(ConfigError, match="set config.pad=2"):
    get_task(c)
