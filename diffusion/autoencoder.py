"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, arXiv:2112.10752).

Sec. 3.1 and App. G of 2112.10752: a convolutional encoder E maps x [B, H, W, C] to the moments
of a diagonal Gaussian posterior q(z|x) over z [B, H/f, W/f, c] (f = 2^(levels − 1)); a decoder
D maps z back to pixels. Training (the task, `experiments/tasks/autoencoder.py`) minimises a
reconstruction loss + a perceptual term + a small KL(q ‖ N(0, I)) weight ("KL-reg.", ~1e-6 in
the LDM configs) + optionally a patch-discriminator's generator loss weighted adaptively
(eq. (7) of VQGAN, 2012.09841). The diffusion model then sees z · scale_factor with
scale_factor = 1 / std(z) measured on the training set (sec. 4.3.2 / App. G of 2112.10752).

Layout follows the LDM code's `Encoder` / `Decoder` (ldm/modules/diffusionmodules/model.py),
without attention (at 8×8 latents of 28×28 clothes the mid-block attention buys little and
costs CPU time):
  encoder  conv_in 3×3 → per level i: num_res_blocks ResBlocks (→ base·mult_i), then a
           stride-2 3×3 conv (pad (0, 1) as the LDM code) except at the last level → mid: 2
           ResBlocks → GroupNorm, swish, conv 3×3 → 2c moments → quant_conv 1×1
  decoder  post_quant_conv 1×1 → conv_in 3×3 → mid: 2 ResBlocks → per level, deepest first:
           num_res_blocks + 1 ResBlocks, then nearest ×2 + conv 3×3 except at level 0 →
           GroupNorm, swish, conv_out 3×3 → C
ResBlock: GroupNorm → swish → conv 3×3 → GroupNorm → swish → conv 3×3, plus x (1×1 conv when
the width changes).

Also here: the PatchGAN discriminator (Isola et al. 2017, arXiv:1611.07004, sec. 3.2.2), the
adaptive weight λ of eq. (7) of 2012.09841, and an LPIPS-style perceptual distance
(Zhang et al. 2018, arXiv:1801.03924, eq. (1)) on any feature map (no learned weights: w_l = 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0      # the LDM code's clip of log σ² (DiagonalGaussian...)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  image_channels: int = 1
  image_size: int = 32
  base_channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 2)      # f = 2 ** (len − 1): (1, 2, 2) → f = 4
  num_res_blocks: int = 1
  latent_channels: int = 4
  num_groups: int = 8

  def __post_init__(self):
    for k in ("image_channels", "image_size", "base_channels", "num_res_blocks",
              "latent_channels", "num_groups"):
      v = getattr(self, k)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"AutoencoderConfig.{k} must be a positive integer, got {v!r}")
    mults = tuple(self.channel_mults)
    if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
      raise ValueError(f"AutoencoderConfig.channel_mults must be positive integers, got {mults!r}")
    if self.image_size % self.downsample_factor:
      raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling "
                       f"factor f = {self.downsample_factor} of channel_mults {mults}")
    for m in mults:
      if (self.base_channels * m) % self.num_groups:
        raise ValueError(f"width {self.base_channels * m} (base_channels · {m}) is not "
                         f"divisible by num_groups={self.num_groups} (GroupNorm)")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mults) - 1)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    h = self.image_size // self.downsample_factor
    return (h, h, self.latent_channels)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DiagonalGaussian:
  """q(z|x) = N(mean, diag exp(logvar)), arrays [B, h, w, c] (a pytree: it crosses jit)."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """Split the encoder's 2c channels into (mean, log σ²), log σ² clipped to [−30, 20] as the
    LDM code does (exp stays finite in fp32 both ways)."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """z = μ + σ ⊙ ε, ε ~ N(0, I) — the reparameterisation of §2.4 of 1312.6114."""
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, jnp.float32)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q ‖ N(0, I)) per example [B], summed over all latent dims; fp32 (a sum of many small
    terms). −KL = ½ Σ (1 + log σ² − μ² − σ²) — App. B of 1312.6114."""
    terms = self.mean ** 2 + jnp.exp(self.logvar) - 1.0 - self.logvar
    return 0.5 * jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def _swish(x):
  return jax.nn.silu(x)


class ResBlock(nnx.Module):
  """GroupNorm → swish → conv3×3 → GroupNorm → swish → conv3×3, + skip (1×1 if widths differ)."""

  def __init__(self, c_in: int, c_out: int, num_groups: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(c_in, num_groups=num_groups, rngs=rngs)
    self.conv1 = nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
    self.norm2 = nnx.GroupNorm(c_out, num_groups=num_groups, rngs=rngs)
    self.conv2 = nnx.Conv(c_out, c_out, (3, 3), rngs=rngs)
    self.skip = nnx.Conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else nnx.data(None)

  def __call__(self, x):
    h = self.conv1(_swish(self.norm1(x)))
    h = self.conv2(_swish(self.norm2(h)))
    return (x if self.skip is None else self.skip(x)) + h


class Encoder(nnx.Module):
  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    self.conv_in = nnx.Conv(cfg.image_channels, cfg.base_channels, (3, 3), rngs=rngs)
    blocks, downs, c = [], [], cfg.base_channels
    for i, w in enumerate(widths):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResBlock(c, w, cfg.num_groups, rngs=rngs))
        c = w
      if i < len(widths) - 1:       # stride 2, pad (0, 1) right/bottom: the LDM Downsample
        downs.append(nnx.Conv(c, c, (3, 3), strides=2, padding=((0, 1), (0, 1)), rngs=rngs))
    self.blocks, self.downs = nnx.List(blocks), nnx.List(downs)
    self.mid = nnx.List([ResBlock(c, c, cfg.num_groups, rngs=rngs) for _ in range(2)])
    self.norm_out = nnx.GroupNorm(c, num_groups=cfg.num_groups, rngs=rngs)
    self.conv_out = nnx.Conv(c, 2 * cfg.latent_channels, (3, 3), rngs=rngs)
    self.num_levels, self.num_res_blocks = len(widths), cfg.num_res_blocks

  def __call__(self, x_BHWC):
    h = self.conv_in(x_BHWC)
    for i in range(self.num_levels):
      for j in range(self.num_res_blocks):
        h = self.blocks[i * self.num_res_blocks + j](h)
      if i < self.num_levels - 1:
        h = self.downs[i](h)
    for block in self.mid:
      h = block(h)
    return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nnx.Module):
  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    c = widths[-1]
    self.conv_in = nnx.Conv(cfg.latent_channels, c, (3, 3), rngs=rngs)
    self.mid = nnx.List([ResBlock(c, c, cfg.num_groups, rngs=rngs) for _ in range(2)])
    blocks, ups = [], []
    for i in reversed(range(len(widths))):
      for _ in range(cfg.num_res_blocks + 1):       # one more than the encoder, as the LDM code
        blocks.append(ResBlock(c, widths[i], cfg.num_groups, rngs=rngs))
        c = widths[i]
      if i > 0:
        ups.append(nnx.Conv(c, c, (3, 3), rngs=rngs))
    self.blocks, self.ups = nnx.List(blocks), nnx.List(ups)
    self.norm_out = nnx.GroupNorm(c, num_groups=cfg.num_groups, rngs=rngs)
    self.conv_out = nnx.Conv(c, cfg.image_channels, (3, 3), rngs=rngs)
    self.num_levels, self.per_level = len(widths), cfg.num_res_blocks + 1

  def features(self, z):
    """Everything before `conv_out`: swish(GroupNorm(h)) [B, H, W, base] (the adaptive weight
    of eq. (7) of 2012.09841 differentiates through conv_out, the last layer)."""
    h = self.conv_in(z)
    for block in self.mid:
      h = block(h)
    for k in range(self.num_levels):
      for j in range(self.per_level):
        h = self.blocks[k * self.per_level + j](h)
      if k < self.num_levels - 1:
        b, hh, ww, c = h.shape
        h = self.ups[k](jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
    return _swish(self.norm_out(h))

  def __call__(self, z):
    return self.conv_out(self.features(z))


class KLAutoencoder(nnx.Module):
  """x [B, H, W, C] ↔ z [B, H/f, W/f, c] with a diagonal-Gaussian posterior (2112.10752)."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.latent_channels
    self.encoder = Encoder(cfg, rngs=rngs)
    self.quant_conv = nnx.Conv(2 * c, 2 * c, (1, 1), rngs=rngs)
    self.post_quant_conv = nnx.Conv(c, c, (1, 1), rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)

  def _check(self, x, shape, what):
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
      raise ValueError(f"KLAutoencoder {what} takes [B, {', '.join(map(str, shape))}] (B, H, W, "
                       f"C), got shape {tuple(x.shape)}")

  def encode(self, x_BHWC: jax.Array) -> DiagonalGaussian:
    cfg = self.cfg
    self._check(x_BHWC, (cfg.image_size, cfg.image_size, cfg.image_channels), "encode")
    return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x_BHWC)))

  def decode_features(self, z_BhwC: jax.Array) -> jax.Array:
    self._check(z_BhwC, self.cfg.latent_shape, "decode")
    return self.decoder.features(self.post_quant_conv(z_BhwC))

  def decode(self, z_BhwC: jax.Array) -> jax.Array:
    """Latent z (unscaled: the posterior's own units) → x̂ [B, H, W, C]."""
    return self.decoder.conv_out(self.decode_features(z_BhwC))

  def __call__(self, x_BHWC: jax.Array, key: jax.Array | None = None):
    """(x̂, q(z|x)): decoded from a posterior sample, or from the mode when key is None."""
    posterior = self.encode(x_BHWC)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z), posterior


class PatchDiscriminator(nnx.Module):
  """PatchGAN (1611.07004 sec. 3.2.2; the LDM/VQGAN `NLayerDiscriminator`): 4×4 convs, stride 2
  `num_layers` times then stride 1, LeakyReLU 0.2, one logit per overlapping patch
  [B, H/2^n, W/2^n, 1]. GroupNorm instead of the original BatchNorm: no running statistics."""

  def __init__(self, image_channels: int = 1, width: int = 32, num_layers: int = 2,
               num_groups: int = 8, *, rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"PatchDiscriminator needs num_layers ≥ 1, got {num_layers}")
    convs, norms, c = [nnx.Conv(image_channels, width, (4, 4), strides=2, rngs=rngs)], [], width
    for n in range(1, num_layers + 1):
      w = width * min(2 ** n, 8)
      stride = 2 if n < num_layers else 1
      convs.append(nnx.Conv(c, w, (4, 4), strides=stride, use_bias=False, rngs=rngs))
      norms.append(nnx.GroupNorm(w, num_groups=num_groups, rngs=rngs))
      c = w
    self.convs, self.norms = nnx.List(convs), nnx.List(norms)
    self.conv_out = nnx.Conv(c, 1, (4, 4), rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(self.convs[0](x_BHWC), 0.2)
    for conv, norm in zip(self.convs[1:], self.norms):
      h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
    return self.conv_out(h)


def conv_with_kernel(conv: nnx.Conv, x_BHWC: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv(x)` (stride 1, SAME) as a function of its kernel: what eq. (7) of 2012.09841
  differentiates when G_L is the decoder's `conv_out`."""
  y = jax.lax.conv_general_dilated(x_BHWC, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + conv.bias[...] if conv.bias is not None else y


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))]), the LDM/VQGAN default discriminator loss."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def adaptive_weight(rec_grad, gan_grad, delta: float = 1e-4, max_weight: float = 1e4) -> jax.Array:
  """λ = ‖∇_{G_L}[L_rec]‖ / (‖∇_{G_L}[L_GAN]‖ + δ), clipped to [0, max_weight] and treated as a
  constant — eq. (7) of 2012.09841 (G_L the decoder's last layer; δ = 1e-4 as there). The
  gradients may be arrays or pytrees (kernel and bias of that layer)."""
  lam = _norm(rec_grad) / (_norm(gan_grad) + delta)        # eq. (7) of 2012.09841
  return jax.lax.stop_gradient(jnp.clip(lam, 0.0, max_weight))


def normalize_channels(f_BHWC: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Unit-normalise each spatial feature vector along channels (ŷ^l of eq. (1), 1801.03924)."""
  return f_BHWC / (jnp.sqrt(jnp.sum(f_BHWC ** 2, axis=-1, keepdims=True)) + eps)


def perceptual_distance(features_fn: Callable[[jax.Array], Sequence[jax.Array]], x: jax.Array,
                        y: jax.Array) -> jax.Array:
  """LPIPS-style d(x, y) [B] = Σ_l 1/(H_l W_l) Σ_{h,w} ‖ŷ^l_hw − ŷ^l_0hw‖² with every learned
  weight w_l = 1 — eq. (1) of 1801.03924 ("lin" weights dropped: nothing to calibrate them on).
  `features_fn(x)` returns the layers' activations, each [B, H_l, W_l, C_l] or [B, C_l]
  (a vector is a 1×1 map). In fp32: differences of unit vectors lose digits in bf16."""
  fx, fy = features_fn(x), features_fn(y)
  if len(fx) != len(fy) or not fx:
    raise ValueError(f"features_fn returned {len(fx)} and {len(fy)} layers; need the same ≥ 1")
  total = 0.0
  for a, b in zip(fx, fy):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if a.ndim == 2:
      a, b = a[:, None, None, :], b[:, None, None, :]
    d = jnp.sum((normalize_channels(a) - normalize_channels(b)) ** 2, axis=-1)   # [B, H, W]
    total = total + jnp.mean(d, axis=(1, 2))
  return total


# --- parameter count by hand (tested against jax.eval_shape) --------------------------------------

def _conv(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
  return k * k * c_in * c_out + (c_out if bias else 0)


def _res(c_in: int, c_out: int) -> int:
  skip = _conv(1, c_in, c_out) if c_in != c_out else 0
  return 2 * c_in + _conv(3, c_in, c_out) + 2 * c_out + _conv(3, c_out, c_out) + skip


def param_count(cfg: AutoencoderConfig) -> int:
  """The KLAutoencoder's parameter count from the layer list in the module docstring."""
  widths = [cfg.base_channels * m for m in cfg.channel_mults]
  z, x = cfg.latent_channels, cfg.image_channels
  n, c = _conv(3, x, cfg.base_channels), cfg.base_channels          # encoder
  for i, w in enumerate(widths):
    for _ in range(cfg.num_res_blocks):
      n, c = n + _res(c, w), w
    if i < len(widths) - 1:
      n += _conv(3, c, c)
  n += 2 * _res(c, c) + 2 * c + _conv(3, c, 2 * z)
  n += _conv(1, 2 * z, 2 * z) + _conv(1, z, z)                       # quant / post-quant
  c = widths[-1]                                                     # decoder
  n += _conv(3, z, c) + 2 * _res(c, c)
  for i in reversed(range(len(widths))):
    for _ in range(cfg.num_res_blocks + 1):
      n, c = n + _res(c, widths[i]), widths[i]
    if i > 0:
      n += _conv(3, c, c)
  return n + 2 * c + _conv(3, c, x)
