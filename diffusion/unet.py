"""A small DDPM U-Net in Flax NNX (NHWC): sinusoidal time embedding, GroupNorm ResNet
blocks, self-attention at low resolution, skip connections, optional class conditioning.

Architecture of DDPM, Ho et al. 2020, arXiv:2006.11239 (Appendix B; a PixelCNN++-style
U-Net with the Transformer sinusoidal position embedding of arXiv:1706.03762, Sec. 3.5),
with the class embedding added to the time embedding as in Dhariwal & Nichol 2021,
arXiv:2105.05233. Label index `num_classes` is the "null" label used for classifier-free
guidance (guidance.py, arXiv:2207.12598). The last conv of every residual branch and of the
output is zero-initialised (as in the DDPM code), so each block starts as the identity.

Text conditioning (`context_dim` set; latent diffusion, arXiv:2112.10752 sec. 3.3): a
cross-attention block (`cross_attention.CrossAttention`, eq. (3): queries from the image
features, keys/values from the text encoder's per-token states `context_BSD`, PAD keys masked
by `context_mask_BS`) after the ResBlock (and its self-attention) of every level whose size is in
`cross_attn_resolutions`, and after the middle block's self-attention. Their output projections
are zero-initialised, so at init the text-conditioned U-Net computes exactly the unconditioned
one. With `context_dim` None nothing is added: the same parameters, paths and outputs as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion.cross_attention import CrossAttention
from genfm.foundations import remat as remat_lib

Array = jax.Array
_zeros = nnx.initializers.zeros_init()


def timestep_embedding(t_B: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """[B, dim] = [sin(t ω_k), cos(t ω_k)], ω_k = max_period^{−k/(dim/2 − 1)} (DDPM code's
  `get_timestep_embedding`; Sec. 3.5 of 1706.03762). t may be integer or real."""
  if dim % 2 or dim < 4:
    raise ValueError(f"timestep embedding dim must be even and ≥ 4, got {dim}.")
  half = dim // 2
  freqs_K = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args_BK = jnp.asarray(t_B, jnp.float32)[:, None] * freqs_K[None, :]
  return jnp.concatenate([jnp.sin(args_BK), jnp.cos(args_BK)], axis=-1)


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv3×3 → (+ time projection) → GroupNorm → SiLU → dropout → conv3×3,
  plus a 1×1 skip when channels change (DDPM's `resnet_block`)."""

  def __init__(self, c_in: int, c_out: int, temb_dim: int, *, num_groups: int = 8,
               dropout: float = 0.0, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(c_in, num_groups, rngs=rngs)
    self.conv1 = nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
    self.temb_proj = nnx.Linear(temb_dim, c_out, rngs=rngs)
    self.norm2 = nnx.GroupNorm(c_out, num_groups, rngs=rngs)
    # No Dropout module at rate 0: the model then holds parameters only (no RNG state).
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.conv2 = nnx.Conv(c_out, c_out, (3, 3), kernel_init=_zeros, rngs=rngs)
    self.skip = nnx.Conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else None

  def __call__(self, x_BHWC: Array, temb_BD: Array) -> Array:
    h = self.conv1(jax.nn.silu(self.norm1(x_BHWC)))
    h = h + self.temb_proj(jax.nn.silu(temb_BD))[:, None, None, :]
    h = jax.nn.silu(self.norm2(h))
    h = self.conv2(self.dropout(h) if self.dropout is not None else h)
    return (x_BHWC if self.skip is None else self.skip(x_BHWC)) + h


class AttnBlock(nnx.Module):
  """Multi-head self-attention over the H·W positions, residual (DDPM's `attn_block`)."""

  def __init__(self, channels: int, *, num_heads: int = 1, num_groups: int = 8,
               rngs: nnx.Rngs):
    if channels % num_heads:
      raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}.")
    self.num_heads = num_heads
    self.norm = nnx.GroupNorm(channels, num_groups, rngs=rngs)
    self.qkv = nnx.Linear(channels, 3 * channels, rngs=rngs)     # a 1×1 conv
    self.proj = nnx.Linear(channels, channels, kernel_init=_zeros, rngs=rngs)

  def __call__(self, x_BHWC: Array) -> Array:
    B, Hh, Ww, C = x_BHWC.shape
    N = self.num_heads
    qkv = self.qkv(self.norm(x_BHWC)).reshape(B, Hh * Ww, 3, N, C // N)
    q_BTNH, k_BSNH, v_BSNH = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Logits and softmax in fp32 whatever the compute dtype: bf16 loses the max-subtraction.
    logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSNH,
                             preferred_element_type=jnp.float32) / np.sqrt(C // N)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(v_BSNH.dtype)
    out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH)
    return x_BHWC + self.proj(out_BTNH.reshape(B, Hh, Ww, C))


class ResAttn(nnx.Module):
  """A ResBlock followed by self-attention, then cross-attention to the text, when the
  resolution asks for them (`context_dim` None: no cross-attention slot at all)."""

  def __init__(self, c_in: int, c_out: int, temb_dim: int, *, attn: bool, num_heads: int,
               num_groups: int, dropout: float, rngs: nnx.Rngs, context_dim: int | None = None):
    self.res = ResBlock(c_in, c_out, temb_dim, num_groups=num_groups, dropout=dropout,
                        rngs=rngs)
    self.attn = (AttnBlock(c_out, num_heads=num_heads, num_groups=num_groups, rngs=rngs)
                 if attn else None)
    if context_dim is not None:     # only then: the unconditioned U-Net keeps its exact state
      self.xattn = CrossAttention(c_out, context_dim, num_heads=num_heads,
                                  num_groups=num_groups, rngs=rngs)
    self.out_channels = c_out

  def __call__(self, x_BHWC: Array, temb_BD: Array, context_BSD: Array | None = None,
               context_mask_BS: Array | None = None) -> Array:
    h = self.res(x_BHWC, temb_BD)
    h = self.attn(h) if self.attn is not None else h
    xattn = getattr(self, "xattn", None)
    return xattn(h, context_BSD, context_mask_BS) if xattn is not None else h


class Downsample(nnx.Module):
  """Stride-2 conv3×3 (DDPM's `downsample` with_conv=True)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (3, 3), strides=(2, 2), rngs=rngs)
    self.out_channels = channels

  def __call__(self, x_BHWC: Array, temb_BD: Array) -> Array:
    del temb_BD
    return self.conv(x_BHWC)


class Upsample(nnx.Module):
  """×2 nearest-neighbour resize then conv3×3 (DDPM's `upsample` with_conv=True)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

  def __call__(self, x_BHWC: Array, temb_BD: Array) -> Array:
    del temb_BD
    B, Hh, Ww, C = x_BHWC.shape
    return self.conv(jax.image.resize(x_BHWC, (B, 2 * Hh, 2 * Ww, C), "nearest"))


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  image_channels: int = 1
  base_channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: tuple[int, ...] = (8,)   # spatial sizes (H) that get self-attention
  num_heads: int = 1
  num_groups: int = 8
  dropout: float = 0.0
  num_classes: int | None = None            # None: unconditional
  image_size: int = 32
  context_dim: int | None = None            # width of the text states; None: no text
  cross_attn_resolutions: tuple[int, ...] = ()   # sizes (H) with cross-attention (+ the middle)
  # Activation checkpointing of every ResAttn block and middle block (`foundations/remat.py`,
  # 1604.06174): "none" | "full" (recompute each block in the backward pass) | "dots".
  remat: str = "none"

  def __post_init__(self):
    remat_lib.check_policy(self.remat)
    if self.context_dim is None and self.cross_attn_resolutions:
      raise ValueError(f"cross_attn_resolutions={self.cross_attn_resolutions} needs the text "
                       "width: set context_dim")
    if self.context_dim is not None and self.context_dim < 1:
      raise ValueError(f"context_dim must be a positive width or None, got {self.context_dim}")


class UNet(nnx.Module):
  """ε/x₀/v-prediction network: (x [B, H, W, C], t [B], labels [B] | None) → [B, H, W, C]."""

  # Logical axes of every parameter, read by `genfm.foundations.partitioning` (regex searched in
  # the path 'down/0/res/conv1/kernel'; first match wins). Convs [kh, kw, C_in, C_out]: C_in is
  # `embed` (FSDP, 1910.02054) except conv_in's, which is the image's 1 or 3 channels; conv_out's
  # C_out is the image's channels, so left whole. Self-/cross-attention and the time MLP are
  # Megatron column/row pairs (1909.08053): qkv, q/k/v, temb1 on heads/mlp; proj, out, temb2 on
  # their input dim. GroupNorm scales and all biases stay replicated.
  PARAM_AXES = (
      (r"^conv_in/kernel$", (None, None, None, "conv_out")),
      (r"^conv_out/kernel$", (None, None, "embed", None)),
      (r"(conv|conv1|conv2|skip)/kernel$", (None, None, "embed", "conv_out")),
      (r"attn/qkv/kernel$", ("embed", "heads")),                # [C, 3C]
      (r"attn/proj/kernel$", ("heads", "embed")),               # [C, C]
      (r"xattn/(q|k|v)/kernel$", ("embed", "heads")),           # [C or D_ctx, C]
      (r"xattn/out/kernel$", ("heads", "embed")),               # [C, C]
      (r"^temb1/kernel$", ("embed", "mlp")),                    # [ch, 4ch]
      (r"^temb2/kernel$", ("mlp", "embed")),                    # [4ch, 4ch]
      (r"temb_proj/kernel$", ("embed", "conv_out")),            # [4ch, C_out]
      (r"^label_emb/embedding$", (None, "embed")),              # [classes + 1, 4ch]
      (r"(scale|bias)$", (None,)),
  )

  def __init__(self, cfg: UNetConfig, *, encoder_only: bool = False, rngs: nnx.Rngs):
    self.cfg = cfg
    ch = cfg.base_channels
    temb = 4 * ch
    self.temb1 = nnx.Linear(ch, temb, rngs=rngs)
    self.temb2 = nnx.Linear(temb, temb, rngs=rngs)
    self.label_emb = (nnx.Embed(cfg.num_classes + 1, temb, rngs=rngs)
                      if cfg.num_classes else None)
    self.conv_in = nnx.Conv(cfg.image_channels, ch, (3, 3), rngs=rngs)
    blk = dict(num_heads=cfg.num_heads, num_groups=cfg.num_groups, dropout=cfg.dropout,
               rngs=rngs)
    xres = lambda res: dict(context_dim=cfg.context_dim if res in cfg.cross_attn_resolutions
                            else None)
    skips, res, c = [ch], cfg.image_size, ch        # skip channels pushed on the way down
    down = []
    for level, mult in enumerate(cfg.channel_mults):
      for _ in range(cfg.num_res_blocks):
        down.append(ResAttn(c, mult * ch, temb, attn=res in cfg.attn_resolutions, **blk,
                            **xres(res)))
        c = mult * ch
        skips.append(c)
      if level != len(cfg.channel_mults) - 1:
        down.append(Downsample(c, rngs=rngs))
        skips.append(c)
        res //= 2
    self.down = nnx.List(down)
    self.mid1 = ResBlock(c, c, temb, num_groups=cfg.num_groups, dropout=cfg.dropout, rngs=rngs)
    self.mid_attn = AttnBlock(c, num_heads=cfg.num_heads, num_groups=cfg.num_groups, rngs=rngs)
    if cfg.context_dim is not None:    # the middle block always reads the text
      self.mid_xattn = CrossAttention(c, cfg.context_dim, num_heads=cfg.num_heads,
                                      num_groups=cfg.num_groups, rngs=rngs)
    self.mid2 = ResBlock(c, c, temb, num_groups=cfg.num_groups, dropout=cfg.dropout, rngs=rngs)
    # The skip channels the decoder reads, in push order (a ControlNet adds one residual to each).
    self.skip_channels = tuple(skips)
    self.mid_channels = c
    if encoder_only:   # the encoder half only (ControlNet's trainable copy, 2302.05543 sec. 3.2)
      self.up = self.norm_out = self.conv_out = nnx.data(None)
      return
    up = []
    for level, mult in reversed(list(enumerate(cfg.channel_mults))):
      for _ in range(cfg.num_res_blocks + 1):
        up.append(ResAttn(c + skips.pop(), mult * ch, temb, attn=res in cfg.attn_resolutions,
                          **blk, **xres(res)))
        c = mult * ch
      if level != 0:
        up.append(Upsample(c, rngs=rngs))
        res *= 2
    self.up = nnx.List(up)
    self.norm_out = nnx.GroupNorm(c, cfg.num_groups, rngs=rngs)
    self.conv_out = nnx.Conv(c, cfg.image_channels, (3, 3), kernel_init=_zeros, rngs=rngs)

  def __call__(self, x_BHWC: Array, t_B: Array, labels_B: Array | None = None, *,
               context_BSD: Array | None = None, context_mask_BS: Array | None = None,
               control: Sequence[Array] | None = None) -> Array:
    """The prediction [B, H, W, C]; `control` (a ControlNet's output, `len(skip_channels) + 1`
    residuals) is added to the skip features and to the middle block's output. `context_BSD`
    [B, S, context_dim] (and its mask [B, S], True = real token) is the text the
    cross-attention blocks read; required exactly when the U-Net has `context_dim`."""
    ctx = dict(context_BSD=context_BSD, context_mask_BS=context_mask_BS)
    h, hs, temb = self.encode(x_BHWC, t_B, labels_B, **ctx)
    return self.decode(h, hs, temb, control=control, **ctx)

  def _check_context(self, B: int, context_BSD: Array | None,
                     context_mask_BS: Array | None) -> None:
    cfg = self.cfg
    if cfg.context_dim is None:
      if context_BSD is not None or context_mask_BS is not None:
        raise ValueError("context given to a UNet without cross-attention (context_dim=None)")
      return
    if context_BSD is None:
      raise ValueError(f"this UNet reads text (context_dim={cfg.context_dim}): pass "
                       "context_BSD (the empty prompt's states for the unconditional model)")
    if (context_BSD.ndim != 3 or context_BSD.shape[0] != B
        or context_BSD.shape[2] != cfg.context_dim):
      raise ValueError(f"context_BSD must be [B={B}, S, {cfg.context_dim}], got "
                       f"{tuple(context_BSD.shape)}")

  def encode(self, x_BHWC: Array, t_B: Array, labels_B: Array | None = None, *,
             context_BSD: Array | None = None, context_mask_BS: Array | None = None,
             hint_BHWC: Array | None = None) -> tuple[Array, list[Array], Array]:
    """The encoder half and the middle block: (h [B, h, w, C_mid], the skip features in push
    order, the time(+label) embedding [B, 4·base]). `hint_BHWC` (shaped like conv_in's output)
    is added after conv_in: ControlNet's condition enters its copy there (2302.05543 eq. 2).
    `context_BSD` / `context_mask_BS`: the text, as in `__call__`."""
    cfg = self.cfg
    factor = 2 ** (len(cfg.channel_mults) - 1)
    if (x_BHWC.ndim != 4 or x_BHWC.shape[-1] != cfg.image_channels
        or x_BHWC.shape[1] % factor or x_BHWC.shape[2] % factor):
      raise ValueError(f"UNet expects [B, H, W, {cfg.image_channels}] with H, W divisible by "
                       f"{factor}, got {x_BHWC.shape}.")
    if labels_B is not None and self.label_emb is None:
      raise ValueError("labels given to an unconditional UNet (num_classes=None).")
    self._check_context(x_BHWC.shape[0], context_BSD, context_mask_BS)
    t_B = jnp.broadcast_to(t_B, x_BHWC.shape[:1])
    temb = self.temb2(jax.nn.silu(self.temb1(timestep_embedding(t_B, cfg.base_channels))))
    if self.label_emb is not None:
      if labels_B is None:   # no labels ⇒ the null label, i.e. the unconditional model
        labels_B = jnp.full(x_BHWC.shape[:1], cfg.num_classes, jnp.int32)
      temb = temb + self.label_emb(labels_B)

    h = self.conv_in(x_BHWC)
    if hint_BHWC is not None:
      h = h + hint_BHWC
    hs = [h]
    ctx = (context_BSD, context_mask_BS)
    block = self._block
    for layer in self.down:
      h = block(layer, h, temb, *ctx) if isinstance(layer, ResAttn) else layer(h, temb)
      hs.append(h)
    h = block(self.mid_attn, block(self.mid1, h, temb))
    if cfg.context_dim is not None:
      h = block(self.mid_xattn, h, *ctx)
    h = block(self.mid2, h, temb)
    return h, hs, temb

  def _block(self, module: nnx.Module, *args):
    """module(*args), rematerialised per `UNetConfig.remat` ("none": the plain call)."""
    return remat_lib.remat(_apply, self.cfg.remat)(module, *args)

  def decode(self, h: Array, hs: list[Array], temb: Array, *,
             context_BSD: Array | None = None, context_mask_BS: Array | None = None,
             control: Sequence[Array] | None = None) -> Array:
    """The decoder half from `encode`'s outputs. `control`: residuals for each skip feature
    (push order) and, last, the middle output: ControlNet's zero-convolution outputs, added to
    the locked model's skip connections and middle block (sec. 3.2 and Fig. 3 of 2302.05543).
    `context_BSD` / `context_mask_BS`: the text, as in `__call__`."""
    if self.up is None:
      raise ValueError("this UNet was built encoder_only (a ControlNet copy); it has no decoder")
    self._check_context(h.shape[0], context_BSD, context_mask_BS)
    ctx = (context_BSD, context_mask_BS)
    hs = list(hs)
    if control is not None:
      if len(control) != len(hs) + 1:
        raise ValueError(f"control must hold {len(hs) + 1} residuals (one per skip feature and "
                         f"one for the middle block), got {len(control)}")
      hs = [a + b for a, b in zip(hs, control[:-1])]
      h = h + control[-1]
    for layer in self.up:
      if isinstance(layer, Upsample):
        h = layer(h, temb)
      else:
        h = self._block(layer, jnp.concatenate([h, hs.pop()], axis=-1), temb, *ctx)   # skip
    return self.conv_out(jax.nn.silu(self.norm_out(h)))


def _apply(module: nnx.Module, *args):
  return module(*args)
