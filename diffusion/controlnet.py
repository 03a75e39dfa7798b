"""ControlNet: a trainable copy of a locked U-Net's encoder, joined to it by zero convolutions.

Zhang, Rao & Agrawala 2023, arXiv:2302.05543. A locked block F(·; Θ) gets a trainable copy
F(·; Θ_c) fed with the condition c through a zero convolution Z(·; Θ_z1), and the copy's output
returns through a second zero convolution Z(·; Θ_z2):
    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)                 — eq. (2) of 2302.05543
Applied to a U-Net (sec. 3.2, Fig. 3): the copy is the whole encoder half and middle block
(`UNet(cfg, encoder_only=True)`, initialised from the locked model's encoder), the condition is
embedded by a small conv "hint encoder" whose last conv is zero (Z(c; Θ_z1), added to the copy's
conv_in output: `UNet.encode(hint_BHWC=)`), and one zero 1×1 conv per skip feature plus one for
the middle block (Z(·; Θ_z2)) give the residuals `UNet.decode(control=)` adds to the locked
model's skip connections and middle output. At initialisation every zero conv outputs exactly 0,
so the controlled model is the locked one bit for bit (sec. 3.1: "harmful noise ... not added").

Hint encoder (the official `input_hint_block`, shrunk): conv3×3 + SiLU layers of widths
`hint_widths` at the hint's resolution, one stride-2 conv3×3 + SiLU per factor 2 of
`hint_factor` (hint resolution / denoiser resolution: 1 in pixel space, the autoencoder's f in
latent space), then the zero conv3×3 to the U-Net's base width.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion.unet import UNet, UNetConfig

Array = jax.Array
_zeros = nnx.initializers.zeros_init()


def zero_conv(c_in: int, c_out: int, kernel: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
  """A convolution with kernel and bias 0 — the "zero convolution" of sec. 3.1 of 2302.05543."""
  return nnx.Conv(c_in, c_out, (kernel, kernel), kernel_init=_zeros, bias_init=_zeros, rngs=rngs)


class HintEncoder(nnx.Module):
  """Condition image [B, f·H, f·W, hint_channels] → [B, H, W, base_channels], zero at init."""

  def __init__(self, hint_channels: int, out_channels: int, *, widths: tuple[int, ...] = (16, 32),
               factor: int = 1, rngs: nnx.Rngs):
    if factor < 1 or factor & (factor - 1):
      raise ValueError(f"hint_factor must be a power of 2 ≥ 1, got {factor}")
    if not widths:
      raise ValueError("hint_widths must name at least one layer width")
    convs, c = [], hint_channels
    for w in widths:
      convs.append(nnx.Conv(c, w, (3, 3), rngs=rngs))
      c = w
    for _ in range(int(np.log2(factor))):
      convs.append(nnx.Conv(c, c, (3, 3), strides=(2, 2), rngs=rngs))
    self.convs = nnx.List(convs)
    self.out = zero_conv(c, out_channels, 3, rngs=rngs)     # Z(c; Θ_z1)

  def __call__(self, hint_BHWC: Array) -> Array:
    h = hint_BHWC
    for conv in self.convs:
      h = jax.nn.silu(conv(h))
    return self.out(h)


class ControlNet(nnx.Module):
  """(x, t, labels, hint) → the `len(skip_channels) + 1` residuals of `UNet.decode(control=)`."""

  def __init__(self, unet_cfg: UNetConfig, *, hint_channels: int = 1,
               hint_widths: tuple[int, ...] = (16, 32), hint_factor: int = 1, rngs: nnx.Rngs):
    self.base_cfg = unet_cfg                 # the locked model this copy belongs to
    self.hint_channels, self.hint_factor = hint_channels, hint_factor
    self.copy = UNet(unet_cfg, encoder_only=True, rngs=rngs)     # F(·; Θ_c)
    self.hint = HintEncoder(hint_channels, unet_cfg.base_channels, widths=tuple(hint_widths),
                            factor=hint_factor, rngs=rngs)
    # Z(·; Θ_z2): one zero 1×1 conv per skip feature (push order), then the middle block's.
    self.zero_convs = nnx.List([zero_conv(c, c, rngs=rngs) for c in self.copy.skip_channels])
    self.zero_mid = zero_conv(self.copy.mid_channels, self.copy.mid_channels, rngs=rngs)

  def __call__(self, x_BHWC: Array, t_B: Array, labels_B: Array | None, hint_BHWC: Array,
               **context) -> list[Array]:
    """The control residuals for the skip features (push order) and, last, the middle block.
    `context` (cross-attention keywords, e.g. context_BSD=) goes to the copy's encoder."""
    f = self.hint_factor
    want = (x_BHWC.shape[0], f * x_BHWC.shape[1], f * x_BHWC.shape[2], self.hint_channels)
    if tuple(hint_BHWC.shape) != want:
      raise ValueError(f"ControlNet hint has shape {tuple(hint_BHWC.shape)}; for x of shape "
                       f"{tuple(x_BHWC.shape)} it must be {want} (hint_factor={f})")
    h, hs, _ = self.copy.encode(x_BHWC, t_B, labels_B, hint_BHWC=self.hint(hint_BHWC), **context)
    return [zc(s) for zc, s in zip(self.zero_convs, hs)] + [self.zero_mid(h)]


def check_base(unet: UNet, controlnet: ControlNet) -> None:
  """ValueError (one line) unless `controlnet` was built for `unet`'s configuration."""
  if controlnet.base_cfg != unet.cfg:
    a, b = dataclasses.asdict(controlnet.base_cfg), dataclasses.asdict(unet.cfg)
    diff = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b.get(k)]
    raise ValueError("this ControlNet was built for another base U-Net (ControlNet's vs the "
                     f"base's {'; '.join(diff)})")


def controlled(unet: UNet, controlnet: ControlNet, x_BHWC: Array, t_B: Array,
               labels_B: Array | None, hint_BHWC: Array, *, strength: float = 1.0,
               **context) -> Array:
  """The locked `unet`'s prediction with `controlnet`'s residuals (× strength) added — eq. (2)
  of 2302.05543 over the whole U-Net. With the zero convs of a fresh ControlNet it equals
  `unet(x, t, labels)` bit for bit (x + 0 = x in floating point)."""
  check_base(unet, controlnet)
  residuals = controlnet(x_BHWC, t_B, labels_B, hint_BHWC, **context)
  if not (isinstance(strength, (int, float)) and strength == 1.0):
    residuals = [strength * r for r in residuals]
  return unet(x_BHWC, t_B, labels_B, control=residuals, **context)


def init_copy_from(controlnet: ControlNet, unet: UNet) -> None:
  """Copies the locked `unet`'s encoder half and middle block into the ControlNet's trainable
  copy ("the trainable copy ... initialised from the locked model", sec. 3.2 of 2302.05543)."""
  check_base(unet, controlnet)
  _, copy_state = nnx.split(controlnet.copy)
  source = dict(nnx.to_flat_state(nnx.state(unet)))
  flat = []
  for path, var in nnx.to_flat_state(copy_state):
    flat.append((path, var.replace(jnp.array(source[path][...], copy=True))))
  nnx.update(controlnet.copy, nnx.from_flat_state(flat))


def encoder_paths(path: str) -> bool:
  """Whether a flat U-Net parameter path ('down/0/res/conv1/kernel') belongs to the encoder half
  and middle block that the ControlNet copy holds (everything but up/, norm_out/, conv_out/)."""
  return path.split("/", 1)[0] not in ("up", "norm_out", "conv_out")
