"""The KL autoencoder task (2112.10752) through the launcher: the `:smoke` config reaches its
stated PSNR, writes latent_stats.json whose scale factor gives unit-variance latents on the
training set, trains its PatchGAN only from disc_start with the adaptive weight, and reads back
through `load_autoencoder`; bad settings and bad workdirs are one line."""

import json

import jax
import numpy as np
import pytest

from genfm.diffusion import fashion_fid
from genfm.experiments import data
from genfm.experiments.configs import fashion_kl_ae
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import autoencoder, get_task

SMOKE_PSNR_MIN = 17.0       # stated in fashion_kl_ae.py `:smoke` (measured 18.84 dB)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """One `:smoke` run through the launcher (~35 s on an idle core), shared by the tests below."""
  from tests.experiments.conftest import _launch  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("kl_ae_smoke")
  proc = _launch("fashion_kl_ae.py:smoke", workdir, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_smoke_config_reaches_its_psnr_and_writes_its_outputs(smoke_run):
  s = json.load(open(smoke_run / "summary.json"))
  assert s["finished"] and s["step"] == 300, s
  assert s["test_psnr"] >= SMOKE_PSNR_MIN, s
  assert 0.0 < s["test_l1"] < 0.3 and s["test_kl"] > 0.0, s
  assert (smoke_run / "reconstructions_step300.png").read_bytes()[:4] == b"\x89PNG"
  stats = json.load(open(smoke_run / "latent_stats.json"))
  assert stats["latent_shape"] == [4, 4, 2] and stats["num_images"] == 1500, stats
  assert stats["scale_factor"] == pytest.approx(1.0 / stats["latent_std"])
  assert s["scale_factor"] == pytest.approx(stats["scale_factor"])


def test_the_discriminator_starts_at_disc_start_with_the_adaptive_weight(smoke_run):
  rows = [json.loads(l) for l in open(smoke_run / "metrics.jsonl")]
  by_step = {r["step"]: r for r in rows if "train_discriminator/loss" in r}
  assert by_step[100]["train_discriminator/loss"] == 0.0          # steps 0..99 < disc_start
  assert by_step[100]["train_discriminator/grad_norm"] == 0.0
  assert by_step[300]["train_discriminator/loss"] > 0.0
  assert by_step[300]["train_autoencoder/adaptive_weight"] > 0.0


def test_loaded_autoencoder_gives_unit_variance_latents_on_the_training_set(smoke_run):
  """Sec. 4.3.2 of 2112.10752: scale_factor · z has unit variance over the training set. Here
  with posterior noise drawn from another key than the one behind latent_stats.json; and the
  file's own numbers recomputed exactly with its key."""
  loaded = autoencoder.load_autoencoder(str(smoke_run))
  assert (loaded.latent_shape, loaded.pad, loaded.dataset) == ((4, 4, 2), 0, "digits")
  images = data.load("digits", "train").arrays["image"]
  x = fashion_fid.from_pixels(images, loaded.pad)
  q = loaded.model.encode(x)
  z_other = np.asarray(q.sample(jax.random.key(123)), np.float64)
  assert np.std(loaded.scale_factor * z_other) == pytest.approx(1.0, abs=0.03)
  # deterministic encoding reproduces the mean; the mode is not a sample
  np.testing.assert_array_equal(np.asarray(q.mode()), np.asarray(q.mean))
  stats = json.load(open(smoke_run / "latent_stats.json"))
  zs = [np.asarray(loaded.model.encode(x[i:i + 500]).sample(
      jax.random.fold_in(jax.random.key(autoencoder.STATS_KEY), k)))
        for k, i in enumerate(range(0, len(x), 500))]
  z = np.concatenate(zs).astype(np.float64)
  assert z.std() == pytest.approx(stats["latent_std"], rel=1e-5)
  assert z.mean() == pytest.approx(stats["latent_mean"], rel=1e-4, abs=1e-6)


def test_load_autoencoder_refuses_other_workdirs_in_one_line(tmp_path, smoke_run):
  with pytest.raises(ConfigError, match="has no readable config.json") as e:
    autoencoder.load_autoencoder(str(tmp_path / "missing"))
  assert "\n" not in str(e.value)
  (tmp_path / "config.json").write_text(json.dumps({"task": "classify"}))
  with pytest.raises(ConfigError, match="holds a 'classify' run, not an autoencoder"):
    autoencoder.load_autoencoder(str(tmp_path))
  cfg = json.load(open(smoke_run / "config.json"))
  other = tmp_path / "no_stats"
  other.mkdir()
  (other / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConfigError, match="has no latent_stats.json"):
    autoencoder.load_autoencoder(str(other))


@pytest.mark.parametrize("key,value,needle", [
    ("ae.rec_loss", "l3", "unknown config.ae.rec_loss 'l3'"),
    ("ae.base_channels", 12, "not divisible by num_groups=8"),
    ("ae.channel_mults", (1, 2, 2, 2, 2), "not divisible by the downsampling factor f = 16"),
    ("ae.kl_weight", -1.0, "config.ae.kl_weight must be a number ≥ 0"),
    ("ae.perceptual_weight", 1.0, "needs config.perceptual_classifier_workdir"),
    ("pad", -1, "config.pad must be a non-negative integer"),
    ("eval.num_samples", 1, "config.eval.num_samples must be an integer ≥ 2"),
])
def test_bad_settings_are_one_line(key, value, needle):
  c = fashion_kl_ae.get_config("smoke")
  node = c
  *path, last = key.split(".")
  for k in path:
    node = node[k]
  node[last] = value
  with pytest.raises(ConfigError, match=needle) as e:
    get_task(c)
  assert "\n" not in str(e.value)


def test_a_perceptual_classifier_that_is_not_a_run_is_one_launcher_line(tmp_path, launch):
  proc = launch("fashion_kl_ae.py:smoke", tmp_path / "run", "--config.ae.perceptual_weight=0.1",
                f"--config.perceptual_classifier_workdir={tmp_path / 'nowhere'}", timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.perceptual_classifier_workdir: no FID classifier" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_variants_state_their_shapes():
  f4, f2 = fashion_kl_ae.get_config(), fashion_kl_ae.get_config("f2")
  assert tuple(f4.ae.channel_mults) == (1, 2, 2) and f4.ae.latent_channels == 4 and f4.pad == 2
  assert tuple(f2.ae.channel_mults) == (1, 2)
  assert f4.perceptual_classifier_workdir == "runs/fashion_lenet"    # relative defaults
  assert f4.fid_classifier_workdir == "runs/fashion_lenet"
  with pytest.raises(ValueError, match="unknown variant"):
    fashion_kl_ae.get_config("f8")
