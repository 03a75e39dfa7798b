"""KL autoencoder of latent diffusion (2112.10752): posterior, shapes, parameter count, the
adaptive GAN weight (eq. (7) of 2012.09841), the LPIPS-style distance (1801.03924) and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import autoencoder as ae
from genfm.foundations import vae

SMALL = ae.AutoencoderConfig(base_channels=8, channel_mults=(1, 2, 2), latent_channels=4)


def _params(module_fn) -> int:
  shapes = jax.eval_shape(lambda: nnx.state(module_fn(), nnx.Param))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# --- the diagonal Gaussian posterior --------------------------------------------------------------

def test_kl_of_standard_normal_against_itself_is_zero():
  q = ae.DiagonalGaussian(jnp.zeros((3, 2, 2, 4)), jnp.zeros((3, 2, 2, 4)))
  np.testing.assert_array_equal(np.asarray(q.kl()), np.zeros(3))


def test_kl_closed_form_matches_monte_carlo_and_the_vae_formula():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  mean = jax.random.normal(k1, (3, 2, 2, 2)) * jnp.array([0.3, 1.0, 2.0])[:, None, None, None]
  logvar = jax.random.uniform(k2, (3, 2, 2, 2), minval=-2.0, maxval=1.0)
  q = ae.DiagonalGaussian(mean, logvar)
  kl = np.asarray(q.kl())
  assert len(set(np.round(kl, 3))) == 3                    # rows differ
  # independent reference: App. B of 1312.6114 as written in foundations/vae.py
  np.testing.assert_allclose(kl, vae.gaussian_kl(mean.reshape(3, -1), logvar.reshape(3, -1)),
                             rtol=1e-6)
  # Monte Carlo: E_q[log q(z) − log N(z; 0, I)]
  z = jax.vmap(q.sample)(jax.random.split(k3, 200_000))               # [S, B, h, w, c]
  log_q = -0.5 * (((z - mean) ** 2) / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi))
  log_p = -0.5 * (z ** 2 + jnp.log(2 * jnp.pi))
  mc = np.asarray(jnp.mean(jnp.sum((log_q - log_p).reshape(z.shape[:2] + (-1,)), -1), 0))
  np.testing.assert_allclose(mc, kl, rtol=0.02, atol=0.02)


def test_from_moments_splits_and_clips_logvar_like_ldm():
  m = jnp.concatenate([jnp.full((1, 2, 2, 3), 0.5), jnp.array([-50.0, 0.0, 50.0])
                       * jnp.ones((1, 2, 2, 3))], -1)
  q = ae.DiagonalGaussian.from_moments(m)
  np.testing.assert_array_equal(q.mean, jnp.full((1, 2, 2, 3), 0.5))
  np.testing.assert_array_equal(q.logvar[0, 0, 0], [-30.0, 0.0, 20.0])
  np.testing.assert_allclose(q.std[0, 0, 0, 1], 1.0)
  np.testing.assert_array_equal(q.mode(), q.mean)


# --- the autoencoder ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    ae.AutoencoderConfig(),                                                  # f = 4, the default
    ae.AutoencoderConfig(base_channels=16, channel_mults=(1, 2), latent_channels=2),   # f = 2
    ae.AutoencoderConfig(image_size=8, base_channels=8, channel_mults=(1, 2, 4),
                         num_res_blocks=2, latent_channels=3, image_channels=3, num_groups=4),
])
def test_param_count_matches_eval_shape(cfg):
  assert _params(lambda: ae.KLAutoencoder(cfg, rngs=nnx.Rngs(0))) == ae.param_count(cfg)


def test_latent_and_output_shapes():
  assert ae.AutoencoderConfig().downsample_factor == 4
  assert ae.AutoencoderConfig().latent_shape == (8, 8, 4)
  assert ae.AutoencoderConfig(channel_mults=(1, 2)).latent_shape == (16, 16, 4)
  model = ae.KLAutoencoder(SMALL, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1), minval=-1, maxval=1)
  q = model.encode(x)
  assert q.mean.shape == q.logvar.shape == (2, 8, 8, 4)
  recon, posterior = model(x, jax.random.key(2))
  assert recon.shape == (2, 32, 32, 1) and posterior.mean.shape == (2, 8, 8, 4)
  assert model.decode(jnp.zeros((5, 8, 8, 4))).shape == (5, 32, 32, 1)


def test_deterministic_encoding_decodes_the_posterior_mean():
  model = ae.KLAutoencoder(SMALL, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1), minval=-1, maxval=1)
  recon, posterior = model(x)                                   # key None ⇒ mode
  np.testing.assert_allclose(recon, model.decode(model.encode(x).mean), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(posterior.mode(), posterior.mean)
  sampled, _ = model(x, jax.random.key(3))
  assert float(jnp.max(jnp.abs(sampled - recon))) > 1e-4        # a sample is not the mode


def test_conv_with_kernel_is_the_layer():
  model = ae.KLAutoencoder(SMALL, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  feats = model.decode_features(z)
  out = model.decoder.conv_out
  np.testing.assert_allclose(ae.conv_with_kernel(out, feats, out.kernel[...]), model.decode(z),
                             rtol=1e-5, atol=1e-6)


def test_patch_discriminator_logits_per_patch():
  d = ae.PatchDiscriminator(1, 8, 2, 8, rngs=nnx.Rngs(0))
  assert d(jnp.zeros((3, 32, 32, 1))).shape == (3, 8, 8, 1)
  assert ae.PatchDiscriminator(1, 8, 1, 8, rngs=nnx.Rngs(0))(jnp.zeros((2, 8, 8, 1))).shape == (
      2, 4, 4, 1)


def test_hinge_d_loss():
  assert float(ae.hinge_d_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 1.0]))) == pytest.approx(
      0.5 * (0.5 + 1.0))


# --- adaptive weight, eq. (7) of 2012.09841 -----------------------------------------------------

def test_adaptive_weight_formula():
  rec = {"kernel": jnp.array([3.0, 0.0]), "bias": jnp.array([4.0])}        # ‖·‖ = 5
  gan = jnp.array([[0.0, 2.0]])                                              # ‖·‖ = 2
  assert float(ae.adaptive_weight(rec, gan)) == pytest.approx(5.0 / (2.0 + 1e-4), rel=1e-6)
  assert float(ae.adaptive_weight(rec, gan, delta=0.5)) == pytest.approx(2.0)
  assert float(ae.adaptive_weight(rec, jnp.zeros(2))) == pytest.approx(1e4)   # clipped
  assert float(ae.adaptive_weight(rec, jnp.zeros(2), max_weight=7.0)) == pytest.approx(7.0)
  # a constant: no gradient flows through λ
  g = jax.grad(lambda s: ae.adaptive_weight(s * jnp.ones(2), jnp.ones(2)))(1.0)
  assert float(g) == 0.0


# --- perceptual distance, eq. (1) of 1801.03924 ---------------------------------------------------

def test_perceptual_distance_matches_a_numpy_reference():
  k1, k2 = jax.random.split(jax.random.key(0))
  x, y = jax.random.normal(k1, (3, 4, 4, 2)), jax.random.normal(k2, (3, 4, 4, 2))
  feats = lambda t: [jax.nn.relu(t) + 0.1, jnp.tanh(t) ** 2 + 0.1,
                     t.reshape(t.shape[0], -1)]                 # maps and a vector
  d = np.asarray(ae.perceptual_distance(feats, x, y))
  ref = np.zeros(3)
  for a, b in zip(feats(np.asarray(x, np.float64)), feats(np.asarray(y, np.float64))):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2:
      a, b = a[:, None, None], b[:, None, None]
    na = a / np.linalg.norm(a, axis=-1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=-1, keepdims=True)
    ref += ((na - nb) ** 2).sum(-1).mean(axis=(1, 2))
  np.testing.assert_allclose(d, ref, rtol=1e-4)
  assert len(set(np.round(d, 4))) == 3
  np.testing.assert_allclose(ae.perceptual_distance(feats, x, x), np.zeros(3), atol=1e-6)
  # channel-unit normalisation: scaling a layer's features changes nothing
  np.testing.assert_allclose(ae.perceptual_distance(lambda t: [3.0 * f for f in feats(t)], x, y),
                             d, rtol=1e-5)


# --- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_raise_one_clear_value_error():
  with pytest.raises(ValueError, match="not divisible by the downsampling factor f = 4"):
    ae.AutoencoderConfig(image_size=30)
  with pytest.raises(ValueError, match="not divisible by num_groups=8"):
    ae.AutoencoderConfig(base_channels=12)
  with pytest.raises(ValueError, match="latent_channels must be a positive integer"):
    ae.AutoencoderConfig(latent_channels=0)
  with pytest.raises(ValueError, match="channel_mults must be positive integers"):
    ae.AutoencoderConfig(channel_mults=())
  model = ae.KLAutoencoder(SMALL, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"encode takes \[B, 32, 32, 1\].*got shape \(2, 28, 28, 1\)"):
    model.encode(jnp.zeros((2, 28, 28, 1)))
  with pytest.raises(ValueError, match=r"decode takes \[B, 8, 8, 4\].*got shape \(2, 16, 16, 4\)"):
    model.decode(jnp.zeros((2, 16, 16, 4)))
  with pytest.raises(ValueError, match="same ≥ 1"):
    ae.perceptual_distance(lambda t: [], jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)))
  with pytest.raises(ValueError, match="num_layers ≥ 1"):
    ae.PatchDiscriminator(1, 8, 0, rngs=nnx.Rngs(0))
