"""DCGAN generator and discriminator for 32×32 images, and the batch-norm-free WGAN-GP critic.

Radford et al. 2016, arXiv:1511.06434, §3 architecture guidelines:
  - strided convolutions (D) and fractional-strided convolutions (G) instead of pooling;
  - batch norm in both G and D, except at G's output layer and D's input layer;
  - no fully connected hidden layers: G's first layer is a matrix multiplication of z reshaped
    into a 4×4 tensor (Fig. 1), D's last convolution is flattened into one output;
  - ReLU in G with tanh at the output, LeakyReLU (slope 0.2) in D;
and §4: all weights from N(0, 0.02²) (here every conv / linear kernel; biases start at 0, batch
norm scales at 1).

Sizes: images [B, 32, 32, C] in [−1, 1] (Fashion-MNIST's 28×28 padded by 2, as the diffusion
task does), base width W: G is z [B, Z] → 4×4×4W → 8×8×2W → 16×16×W → 32×32×C; D mirrors it,
32×32×C → 16×16×W → 8×8×2W → 4×4×4W → logit. Kernels 4×4, stride 2, padding 1 (each layer
exactly halves or doubles the side). z ~ N(0, I) (the paper draws U[−1, 1]^100; either works).

The WGAN-GP critic (Gulrajani et al. 2017, arXiv:1704.00028, §4 "no critic batch
normalization"): batch norm couples the examples of a batch, so the gradient penalty's
per-example ∇_x̂ D(x̂) would be wrong; `norm="layer"` (the paper's suggested replacement) or
`"none"` instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INIT = nnx.initializers.normal(0.02)          # §4 of 1511.06434
NORMS = ("batch", "layer", "none")
IMAGE_SIZE = 32
BN_MOMENTUM = 0.9                             # running-average decay (PyTorch's momentum 0.1)


def _check(name: str, **sizes) -> None:
  for k, v in sizes.items():
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name}: {k} must be a positive integer, got {v!r}")


class DCGANGenerator(nnx.Module):
  """z [B, Z] → images [B, 32, 32, C] in [−1, 1] (Fig. 1 of 1511.06434, three up-samplings)."""

  def __init__(self, latent_dim: int, channels: int = 1, width: int = 64, *, rngs: nnx.Rngs):
    _check("DCGANGenerator", latent_dim=latent_dim, channels=channels, width=width)
    self.latent_dim, self.width = latent_dim, width
    # No biases before batch norm: its β makes them redundant.
    self.project = nnx.Linear(latent_dim, 4 * 4 * 4 * width, use_bias=False, kernel_init=INIT,
                              rngs=rngs)
    self.norm0 = nnx.BatchNorm(4 * width, momentum=BN_MOMENTUM, rngs=rngs)
    up = lambda a, b, bias: nnx.ConvTranspose(a, b, (4, 4), strides=(2, 2), padding="SAME",
                                              use_bias=bias, kernel_init=INIT, rngs=rngs)
    self.up1, self.norm1 = up(4 * width, 2 * width, False), nnx.BatchNorm(
        2 * width, momentum=BN_MOMENTUM, rngs=rngs)
    self.up2, self.norm2 = up(2 * width, width, False), nnx.BatchNorm(
        width, momentum=BN_MOMENTUM, rngs=rngs)
    self.out = up(width, channels, True)      # output layer: no batch norm (§3)

  def __call__(self, z_BZ: jax.Array) -> jax.Array:
    h = self.project(z_BZ).reshape(z_BZ.shape[0], 4, 4, 4 * self.width)
    h = jax.nn.relu(self.norm0(h))                              # [B, 4, 4, 4W]
    h = jax.nn.relu(self.norm1(self.up1(h)))                    # [B, 8, 8, 2W]
    h = jax.nn.relu(self.norm2(self.up2(h)))                    # [B, 16, 16, W]
    return jnp.tanh(self.out(h))                                # [B, 32, 32, C]


def _norm(kind: str, features: int, rngs: nnx.Rngs):
  if kind == "batch":
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, rngs=rngs)
  if kind == "layer":        # per example over (h, w, c), a scale and shift per channel
    return nnx.LayerNorm(features, reduction_axes=(-3, -2, -1), feature_axes=-1, rngs=rngs)
  return None


class DCGANDiscriminator(nnx.Module):
  """images [B, 32, 32, C] → logit (or critic score) [B].

  `norm="batch"`: DCGAN's discriminator (no batch norm at the input layer, §3 of 1511.06434).
  `norm="layer"` / `"none"`: the WGAN-GP critic, whose rows must not interact (1704.00028 §4).
  """

  def __init__(self, channels: int = 1, width: int = 64, norm: str = "batch", *,
               rngs: nnx.Rngs):
    _check("DCGANDiscriminator", channels=channels, width=width)
    if norm not in NORMS:
      raise ValueError(f"unknown discriminator norm {norm!r}; valid: {', '.join(NORMS)}")
    self.norm = norm
    down = lambda a, b, bias: nnx.Conv(a, b, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                                       use_bias=bias, kernel_init=INIT, rngs=rngs)
    bias = norm != "batch"                    # batch norm's β replaces the bias
    self.conv0 = down(channels, width, True)  # input layer: no normalisation (§3)
    self.conv1, self.norm1 = down(width, 2 * width, bias), _norm(norm, 2 * width, rngs)
    self.conv2, self.norm2 = down(2 * width, 4 * width, bias), _norm(norm, 4 * width, rngs)
    self.out = nnx.Linear(4 * 4 * 4 * width, 1, kernel_init=INIT, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if x_BHWC.ndim != 4 or x_BHWC.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
      raise ValueError(f"DCGANDiscriminator takes [B, {IMAGE_SIZE}, {IMAGE_SIZE}, C] images, got "
                       f"{x_BHWC.shape}; pad 28×28 images by 2 per side")
    lrelu = lambda h: jax.nn.leaky_relu(h, 0.2)
    maybe = lambda f, h: h if f is None else f(h)
    h = lrelu(self.conv0(x_BHWC))                               # [B, 16, 16, W]
    h = lrelu(maybe(self.norm1, self.conv1(h)))                 # [B, 8, 8, 2W]
    h = lrelu(maybe(self.norm2, self.conv2(h)))                 # [B, 4, 4, 4W]
    return self.out(h.reshape(h.shape[0], -1))[:, 0]
