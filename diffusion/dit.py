"""Diffusion Transformer with adaLN-Zero conditioning, Peebles & Xie 2022, arXiv:2212.09748.

An image (or latent) [H, W, C] is cut into T = (H/p)(W/p) patches of Q = p·p·C features
(`transformers.vit.patchify`), embedded linearly, plus fixed 2-D sin-cos positions
(`vit.sincos_2d`; the reference keeps them frozen too). The conditioning is one vector per
example, c = MLP(timestep_embedding(t)) + E_y[label] (sec. 3.2, "in-context" → "adaLN"), and
every block is a pre-norm transformer block whose LayerNorms have no affine parameters; instead
a linear map of SiLU(c) regresses a shift β, a scale γ and a residual gate α for each branch
(sec. 3.2, "adaLN-Zero block"):

    (β₁, γ₁, α₁, β₂, γ₂, α₂) = W_ada SiLU(c) + b_ada,          W_ada, b_ada zero at init
    x ← x + α₁ ⊙ Attn(LN(x) ⊙ (1 + γ₁) + β₁)
    x ← x + α₂ ⊙ MLP(LN(x) ⊙ (1 + γ₂) + β₂)

With W_ada = b_ada = 0 every α is exactly 0, so every block is exactly the identity at init for
any conditioning ("adaLN-Zero": the block is initialised as the identity function). The final
layer (adaptive LN with its own zero-initialised (β, γ), then a zero-initialised linear map to
p·p·C_out features per patch) outputs exactly 0, as the reference does; the linear decoder is
un-patchified back to [H, W, C_out], C_out = 2C when `learn_sigma` (ε and the Σ interpolation of
Improved DDPM, arXiv:2102.09672; the diffusion tasks here use C_out = C).

Label index `num_classes` is the null label of classifier-free guidance (arXiv:2207.12598), as
in `unet.UNet`; labels None ⇒ the null label. t is the DDPM time label (0..999, integer or real;
flow-matching models are fed 999·t with t ∈ [0, 1], t = 0 noise, as `diffusion/flow.py` states).
The call is the U-Net's: (x [B, H, W, C], t [B], labels [B] | None) → [B, H, W, C_out].

Sizes (Table 1 of 2212.09748): S (D 384, 12 layers, 6 heads), B (768, 12, 12), L (1024, 24,
16), XL (1152, 28, 16); "XL/2" is patch 2. At the paper's setting (256×256 images ⇒ 32×32×4
latents, 1000 classes, learn_sigma) `param_count` gives 32.87M / 130.32M / 457.84M / 674.83M
trainable parameters — the paper's 33M / 130M / 458M / 675M (Table 4). The reference's
`sum(p.numel())` also counts its frozen T·D sin-cos table (here a constant, not a parameter).

Differences from the reference code, none changing a parameter count: the frequency embedding
is `unet.timestep_embedding` ([sin, cos], ω_k = 10⁴^{−k/(d/2 − 1)}) rather than [cos, sin] with
ω_k = 10⁴^{−k/(d/2)}; label dropout is the task's (as for the U-Net), not the embedder's.
`attention_impl` picks the attention as in the GPT/ViT ("pallas" = the genfm.kernels flash
kernel, interpreter on CPU).

Text conditioning (`context_dim` set; PixArt-α, arXiv:2310.00426 sec. 2.3 and Fig. 3): each block
gains a multi-head cross-attention between its self-attention and its MLP, queries from the
image tokens and keys/values from the text encoder's per-token states (`context_BSD`, PAD keys
masked by `context_mask_BS`), added to the residual stream without adaLN modulation or gate:

    x ← x + α₁ ⊙ Attn(…);   x ← x + CrossAttn(x, c_text);   x ← x + α₂ ⊙ MLP(…)

(`cross_attention.CrossAttention`, norm "none" as PixArt-α's `x + cross_attn(x, y, mask)`; its
output projection zero-initialised as PixArt-α's, so the blocks stay the identity at init).
PixArt-α keeps the class/time adaLN (shared across blocks); here the per-block adaLN and the
label embedding are unchanged, so `context_dim` None gives exactly the DiT above.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.diffusion import cross_attention
from genfm.diffusion.unet import timestep_embedding
from genfm.transformers import attention, ffn, vit

Array = jax.Array
ATTENTION_IMPLS = vit.ATTENTION_IMPLS
# (D, depth, heads), Table 1 of 2212.09748.
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}

_zeros = nnx.initializers.zeros_init()
_xavier = nnx.initializers.xavier_uniform()   # the reference's init of every nn.Linear
_normal02 = nnx.initializers.normal(0.02)     # its timestep MLP and label table


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  image_size: int            # H = W of the network input (the latent side at the paper's size)
  in_channels: int           # C
  num_classes: int | None    # None: unconditional; else index num_classes = the null label
  patch_size: int = 2
  hidden: int = 384          # D
  depth: int = 12            # L
  num_heads: int = 6         # N
  mlp_ratio: float = 4.0     # F = mlp_ratio · D
  learn_sigma: bool = False  # C_out = 2C (ε and Σ, 2102.09672) instead of C
  attention_impl: str = "xla"
  freq_dim: int = 256        # width of the sinusoidal timestep features
  context_dim: int | None = None   # width of the text states (cross-attention); None: no text

  def __post_init__(self):
    if self.patch_size < 1 or self.image_size % self.patch_size:
      raise ValueError(f"DiT patch size {self.patch_size} does not divide the image size "
                       f"{self.image_size}; choose a patch that divides it")
    if self.hidden % self.num_heads:
      raise ValueError(f"DiT hidden={self.hidden} is not divisible by num_heads={self.num_heads}")
    if self.hidden % 4:
      raise ValueError(f"DiT hidden={self.hidden} must be divisible by 4 (2-D sin-cos positions)")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention_impl {self.attention_impl!r}; valid choices: "
                       f"{', '.join(ATTENTION_IMPLS)}")
    if self.freq_dim % 2 or self.freq_dim < 4:
      raise ValueError(f"DiT freq_dim must be even and ≥ 4, got {self.freq_dim}")
    if self.context_dim is not None and self.context_dim < 1:
      raise ValueError(f"DiT context_dim must be a positive width or None, got "
                       f"{self.context_dim}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:                  # T = (H/p)(W/p)
    return self.grid * self.grid

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @property
  def mlp_dim(self) -> int:                      # F
    return int(self.hidden * self.mlp_ratio)


def dit_config(name: str, **overrides) -> DiTConfig:
  """"S/2", "B/4", "XL/2", … (size/patch). Without overrides: the paper's ImageNet-256 latent
  setting (32×32×4, 1000 classes, learn_sigma)."""
  size, _, patch = name.partition("/")
  if size not in DIT_SIZES or not patch.isdigit():
    raise ValueError(f"unknown DiT {name!r}; expected <size>/<patch> with size in "
                     f"{', '.join(DIT_SIZES)}, e.g. 'S/2', 'XL/2'")
  hidden, depth, heads = DIT_SIZES[size]
  kwargs = dict(image_size=32, in_channels=4, num_classes=1000, patch_size=int(patch),
                hidden=hidden, depth=depth, num_heads=heads, learn_sigma=True)
  return DiTConfig(**{**kwargs, **overrides})


def param_count(cfg: DiTConfig) -> int:
  """Trainable parameters by hand (the 2-D position table is a constant)."""
  D, F, p = cfg.hidden, cfg.mlp_dim, cfg.patch_size
  embed = p * p * cfg.in_channels * D + D                         # patch embedding E, b
  temb = cfg.freq_dim * D + D + D * D + D                         # t MLP: freq → D → D
  yemb = (cfg.num_classes + 1) * D if cfg.num_classes else 0      # + the null label
  attn = 4 * D * D + 4 * D                                        # q, k, v, o with biases
  mlp = 2 * D * F + F + D
  ada = D * 6 * D + 6 * D                                         # (β₁, γ₁, α₁, β₂, γ₂, α₂)
  q_out = p * p * cfg.out_channels
  final = D * q_out + q_out + D * 2 * D + 2 * D                   # linear + its (β, γ)
  xattn = (cross_attention.param_count(D, cfg.context_dim, "none") if cfg.context_dim
           else 0)                                                # PixArt-α cross-attention
  return embed + temb + yemb + cfg.depth * (attn + mlp + ada + xattn) + final


@functools.cache  # one object per choice, so every model shares one jit cache entry
def _attention_fn(impl: str):
  if impl == "pallas":  # imported lazily: the kernels area is optional for CPU users
    from genfm.kernels import flash_attention  # pylint: disable=g-import-not-at-top
    return functools.partial(flash_attention.dot_product_attention, implementation="pallas")
  return functools.partial(attention.dot_product_attention, implementation=impl)


def modulate(x_BTD: Array, shift_BD: Array, scale_BD: Array) -> Array:
  """LN(x) ⊙ (1 + γ) + β, one (β, γ) per example broadcast over the tokens (sec. 3.2)."""
  return x_BTD * (1.0 + scale_BD[:, None, :]) + shift_BD[:, None, :]


def _norm(D: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # No affine parameters: adaLN regresses the scale and shift from c instead (sec. 3.2).
  return nnx.LayerNorm(D, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)


class DiTBlock(nnx.Module):
  """adaLN-Zero block: x + α₁ Attn(mod(LN x)), then + α₂ MLP(mod(LN x)); α = 0 at init."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    D = cfg.hidden
    self.norm1, self.norm2 = _norm(D, rngs), _norm(D, rngs)
    self.attn = attention.MultiHeadAttention(
        D, cfg.num_heads, use_bias=True, attention_fn=_attention_fn(cfg.attention_impl),
        kernel_init=_xavier, rngs=rngs)
    self.mlp = ffn.GeluMLP(D, cfg.mlp_dim, use_bias=True, kernel_init=_xavier, rngs=rngs)
    # adaLN-Zero: the modulation regressor is zero-initialised, so α₁ = α₂ = 0 for every c.
    self.ada = nnx.Linear(D, 6 * D, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)
    if cfg.context_dim is not None:   # only then: the class DiT keeps its exact state
      self.cross_attn = cross_attention.CrossAttention(D, cfg.context_dim,
                                                       num_heads=cfg.num_heads, norm="none",
                                                       rngs=rngs)

  def __call__(self, x_BTD: Array, c_BD: Array, context_BSD: Array | None = None,
               context_mask_BS: Array | None = None) -> Array:
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.ada(jax.nn.silu(c_BD)), 6, -1)
    h_BTD = self.attn(modulate(self.norm1(x_BTD), shift1, scale1), is_causal=False)
    x_BTD = x_BTD + gate1[:, None, :] * h_BTD
    if context_BSD is not None:       # x + CrossAttn(x, text), PixArt-α (2310.00426 Fig. 3)
      x_BTD = self.cross_attn(x_BTD, context_BSD, context_mask_BS)
    h_BTD = self.mlp(modulate(self.norm2(x_BTD), shift2, scale2))
    return x_BTD + gate2[:, None, :] * h_BTD


class FinalLayer(nnx.Module):
  """Adaptive LN then a linear map to p·p·C_out per token; both zero-initialised ⇒ output 0."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    D = cfg.hidden
    self.norm = _norm(D, rngs)
    self.ada = nnx.Linear(D, 2 * D, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)
    self.linear = nnx.Linear(D, cfg.patch_size ** 2 * cfg.out_channels, kernel_init=_zeros,
                             bias_init=_zeros, rngs=rngs)

  def __call__(self, x_BTD: Array, c_BD: Array) -> Array:
    shift, scale = jnp.split(self.ada(jax.nn.silu(c_BD)), 2, -1)
    return self.linear(modulate(self.norm(x_BTD), shift, scale))


class DiT(nnx.Module):
  """(x [B, H, W, C], t [B], labels [B] | None) → [B, H, W, C_out]; see the module docstring."""

  # Logical axes of every parameter (`genfm.foundations.partitioning`; GSPMD, 2105.04663).
  # Megatron split (1909.08053 sec. 3): q/k/v [D, N, H] and MLP up [D, F] column-parallel
  # (output on `model`), out-projections and MLP down row-parallel (input on `model`); the
  # cross-attention's 2-D kernels split D = N·H the same way (N·H blocks of whole heads when
  # `model` divides N). `embed` (FSDP, 1910.02054) is the width D (and the text width of the
  # cross-attention's k/v). adaLN regressors [D, 6D] are a third of a block's weights, so they
  # are column-split too (their [B, 6D] output is small to gather). Patch features p·p·C, the
  # class table's num_classes + 1 rows (odd: no mesh axis divides them), the time features and
  # the p·p·C_out output stay unsplit; biases are replicated.
  PARAM_AXES = (
      (r"attn/(q|k|v)_proj/kernel$", ("embed", "heads", None)),
      (r"attn/o_proj/kernel$", ("heads", None, "embed")),
      (r"attn/(q|k|v)_proj/bias$", (None, None)),  # [N, H]
      (r"cross_attn/(q|k|v)/kernel$", ("embed", "heads")),
      (r"cross_attn/out/kernel$", ("heads", "embed")),
      (r"mlp/up/kernel$", ("embed", "mlp")),
      (r"mlp/down/kernel$", ("mlp", "embed")),
      (r"ada/kernel$", ("embed", "mlp")),  # [D, 6D] in a block, [D, 2D] in the final layer
      (r"^embed/kernel$", (None, "embed")),  # patch embedding [p·p·C, D]
      (r"^t_mlp1/kernel$", (None, "embed")),  # [freq_dim, D]
      (r"^t_mlp2/kernel$", ("embed", None)),
      (r"^label_emb/embedding$", (None, "embed")),
      (r"^final/linear/kernel$", ("embed", None)),  # [D, p·p·C_out]
      (r"(scale|bias)$", (None,)),
  )

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D = cfg.hidden
    q = cfg.patch_size ** 2 * cfg.in_channels
    self.embed = nnx.Linear(q, D, kernel_init=_xavier, bias_init=_zeros, rngs=rngs)
    self.t_mlp1 = nnx.Linear(cfg.freq_dim, D, kernel_init=_normal02, rngs=rngs)
    self.t_mlp2 = nnx.Linear(D, D, kernel_init=_normal02, rngs=rngs)
    self.label_emb = (nnx.Embed(cfg.num_classes + 1, D, embedding_init=_normal02, rngs=rngs)
                      if cfg.num_classes else None)
    self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final = FinalLayer(cfg, rngs=rngs)

  def condition(self, x_BHWC: Array, t_B: Array, labels_B: Array | None) -> Array:
    """c [B, D] = MLP(timestep features of t) + E_y[label] (null label when labels is None)."""
    cfg = self.cfg
    t_B = jnp.broadcast_to(t_B, x_BHWC.shape[:1])
    c_BD = self.t_mlp2(jax.nn.silu(self.t_mlp1(timestep_embedding(t_B, cfg.freq_dim))))
    if self.label_emb is not None:
      if labels_B is None:
        labels_B = jnp.full(x_BHWC.shape[:1], cfg.num_classes, jnp.int32)
      c_BD = c_BD + self.label_emb(labels_B)
    return c_BD

  def __call__(self, x_BHWC: Array, t_B: Array, labels_B: Array | None = None, *,
               context_BSD: Array | None = None, context_mask_BS: Array | None = None) -> Array:
    """`context_BSD` [B, S, context_dim] and its mask [B, S] (True = real token): the text the
    cross-attention reads; required exactly when the DiT has `context_dim`."""
    cfg = self.cfg
    want = (cfg.image_size, cfg.image_size, cfg.in_channels)
    if x_BHWC.ndim != 4 or tuple(x_BHWC.shape[1:]) != want:
      raise ValueError(f"DiT built for images [B, H, W, C] with (H, W, C) = {want}, got shape "
                       f"{tuple(x_BHWC.shape)}")
    if labels_B is not None and self.label_emb is None:
      raise ValueError("labels given to an unconditional DiT (num_classes=None).")
    B = x_BHWC.shape[0]
    if cfg.context_dim is None and (context_BSD is not None or context_mask_BS is not None):
      raise ValueError("context given to a DiT without cross-attention (context_dim=None)")
    if cfg.context_dim is not None and (
        context_BSD is None or context_BSD.ndim != 3 or context_BSD.shape[0] != B
        or context_BSD.shape[2] != cfg.context_dim):
      got = None if context_BSD is None else tuple(context_BSD.shape)
      raise ValueError(f"this DiT reads text: context_BSD must be [B={B}, S, "
                       f"{cfg.context_dim}], got {got}")
    c_BD = self.condition(x_BHWC, t_B, labels_B)
    x_BTD = self.embed(vit.patchify(x_BHWC, cfg.patch_size))
    x_BTD = x_BTD + jnp.asarray(vit.sincos_2d(cfg.grid, cfg.grid, cfg.hidden))[None]
    for blk in self.blocks:
      x_BTD = blk(x_BTD, c_BD, context_BSD, context_mask_BS)
    out_BTQ = self.final(x_BTD, c_BD)
    return vit.unpatchify(out_BTQ, cfg.patch_size, cfg.image_size, cfg.image_size,
                          cfg.out_channels)
