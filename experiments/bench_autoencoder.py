"""KL-autoencoder throughput (`genfm-bench autoencoder`): encode and decode images/s.

Models: `diffusion/autoencoder.py` at the `fashion_kl_ae.py` sizes (base 16, GroupNorm 8): f = 4
(32×32×1 → 8×8×4, channel_mults (1, 2, 2)) and f = 2 (→ 16×16×2, (1, 2)), random weights (the
speed does not depend on them), batch 256 of [−1, 1] images. Timed alone and jitted:
  encode   x → q(z|x) → z = μ + σ ε (what latent diffusion pays once per training image)
  decode   z → x̂ (what it pays per generated sample, after the denoiser's steps)
plus the train step's forward + backward of L1 + KL without the perceptual term (images/s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.diffusion import autoencoder as ae
from genfm.experiments import bench

BATCH = 256
CONFIGS = {"f4": ae.AutoencoderConfig(base_channels=16, channel_mults=(1, 2, 2), latent_channels=4),
           "f2": ae.AutoencoderConfig(base_channels=16, channel_mults=(1, 2), latent_channels=2)}


def autoencoder_throughput(emit) -> None:
  x_BHWC = jax.random.uniform(jax.random.key(0), (BATCH, 32, 32, 1), minval=-1.0, maxval=1.0)
  for name, cfg in CONFIGS.items():
    graphdef, state = nnx.split(ae.KLAutoencoder(cfg, rngs=nnx.Rngs(0)))
    encode = jax.jit(lambda s, x, k: nnx.merge(graphdef, s).encode(x).sample(k))
    decode = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))

    def loss(s, x, k):
      recon, q = nnx.merge(graphdef, s)(x, k)
      return jnp.mean(jnp.sum(jnp.abs(x - recon), axis=(1, 2, 3))) + 1e-6 * jnp.mean(q.kl())

    grad = jax.jit(jax.grad(loss))
    key = jax.random.key(1)
    z = encode(state, x_BHWC, key)
    t_enc = bench.time_fn(encode, state, x_BHWC, key, warmup=1, iters=3)
    t_dec = bench.time_fn(decode, state, z, warmup=1, iters=3)
    t_grad = bench.time_fn(grad, state, x_BHWC, key, warmup=1, iters=3)
    emit({"name": "autoencoder", "variant": name, "f": cfg.downsample_factor,
          "latent_shape": "×".join(map(str, cfg.latent_shape)), "params": ae.param_count(cfg),
          "batch": BATCH, "encode_images_per_sec": BATCH / t_enc,
          "decode_images_per_sec": BATCH / t_dec, "train_images_per_sec": BATCH / t_grad})
