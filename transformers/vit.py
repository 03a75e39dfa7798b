"""Vision Transformer, Dosovitskiy et al. 2020, arXiv:2010.11929 ("An image is worth 16x16 words").

An image [H, W, C] is cut into T = (H/p)(W/p) non-overlapping p×p patches, each flattened to
Q = p·p·C features (row-major over patches, `patchify`) and embedded linearly; a class token is
prepended (or the patch tokens are mean-pooled) and a pre-norm transformer encoder runs over the
sequence with *bidirectional* attention (sec. 3.1):

    z_0  = [x_class; x_p^1 E; …; x_p^T E] + E_pos,   E ∈ R^{Q×D}, E_pos ∈ R^{(T+1)×D}   eq. (1)
    z'_ℓ = MSA(LN(z_{ℓ−1})) + z_{ℓ−1}                                                   eq. (2)
    z_ℓ  = MLP(LN(z'_ℓ)) + z'_ℓ                                                          eq. (3)
    y    = LN(z_L^0)                                                                     eq. (4)

Blocks are `block.Block` (pre-norm) around `attention.MultiHeadAttention(is_causal=False)` and the
GELU MLP of `ffn.py` (tanh-approximate GELU; the paper's is exact — the two differ by < 1e-3).
LayerNorm ε = 1e-6 as in the reference code. `pool="mean"` replaces the class token by the mean
of the final patch tokens (the "GAP" variant of app. D.3); `positions="sincos2d"` replaces the
learned table by fixed 2-D sin-cos embeddings (`sincos_2d`; Chen, Xie & He 2021, arXiv:2104.02057,
sec. 4; app. D.4 of 2010.11929 finds the 2-D variants on par with 1-D learned ones).

The patch embedding E is a plain matrix on the flattened patches, exactly eq. (1); it equals the
reference code's p×p convolution with stride p (same parameter count, Q·D + D).

ViT-B/16 at 224×224 with a 1000-class linear head has 86,567,656 parameters (`param_count`; the
paper's Table 1 rounds to "86M").
"""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from genfm.transformers import attention, block, ffn, norms

Array = jax.Array
P = jax.sharding.PartitionSpec
POOLS = ("cls", "mean")
POSITIONS = ("learned", "sincos2d")
ATTENTION_IMPLS = ("reference", "reference_vjp", "xla", "cudnn", "pallas")


def _batch_sharding(x_B: Array, ndim: int):
  """The sharding of a new rank-`ndim` array split along the batch axis like `x_B`, or None off
  an Explicit mesh. The launcher shards batches along an Explicit `data` axis, where a reshape
  or a concatenation must be told its output sharding (jax raises a ShardingTypeError otherwise);
  only the batch axis is ever sharded here, so every reshape keeps it."""
  s = jax.typeof(x_B).sharding
  mesh = getattr(s, "mesh", None)
  if mesh is None or mesh.empty or jax.sharding.AxisType.Explicit not in mesh.axis_types:
    return None
  return jax.sharding.NamedSharding(mesh, P(s.spec[0] if len(s.spec) else None,
                                            *([None] * (ndim - 1))))


def _reshape(x: Array, shape: tuple[int, ...]) -> Array:
  return jax.lax.reshape(x, shape, out_sharding=_batch_sharding(x, len(shape)))


def patchify(images_BHWC: Array, patch: int) -> Array:
  """[B, H, W, C] → [B, T, Q], T = (H/p)(W/p) patches in row-major order, Q = p·p·C features
  ordered (row within the patch, column within the patch, channel)."""
  B, H, W, C = images_BHWC.shape
  if H % patch or W % patch:
    raise ValueError(f"image size {H}×{W} is not divisible by the patch size {patch}")
  x = _reshape(images_BHWC, (B, H // patch, patch, W // patch, patch, C))
  x = x.transpose(0, 1, 3, 2, 4, 5)  # b (h p) (w q) c -> b h w (p q c)
  return _reshape(x, (B, (H // patch) * (W // patch), patch * patch * C))


def unpatchify(patches_BTQ: Array, patch: int, height: int, width: int, channels: int) -> Array:
  """Inverse of `patchify`: [B, T, Q] → [B, H, W, C]."""
  B = patches_BTQ.shape[0]
  h, w = height // patch, width // patch
  x = _reshape(patches_BTQ, (B, h, w, patch, patch, channels))
  return _reshape(x.transpose(0, 1, 3, 2, 4, 5), (B, height, width, channels))


def sincos_2d(h: int, w: int, dim: int, *, max_wavelength: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D position embeddings [h·w, dim] for a row-major h×w grid of patches.

  A quarter of the channels each: [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)] with x the column,
  y the row and ω_i = max_wavelength^{−i/(dim/4)}, i = 0..dim/4 − 1 — the frequencies of sec. 3.5
  of 1706.03762 per axis (2104.02057, sec. 4). The dot product of two positions' embeddings is
  Σ_i cos(Δx·ω_i) + cos(Δy·ω_i): it depends on the offset only. Float32 numpy: a constant.
  """
  if dim % 4:
    raise ValueError(f"sincos2d positions need d_model divisible by 4, got {dim}")
  omega_d = max_wavelength ** (-np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  y_hw, x_hw = np.mgrid[:h, :w]
  ang_x_Td = x_hw.reshape(-1, 1) * omega_d[None]
  ang_y_Td = y_hw.reshape(-1, 1) * omega_d[None]
  pe_TD = np.concatenate([np.sin(ang_x_Td), np.cos(ang_x_Td), np.sin(ang_y_Td),
                          np.cos(ang_y_Td)], axis=1)
  return pe_TD.astype(np.float32)


def _check_choice(what: str, got, valid) -> None:
  if got not in valid:
    raise ValueError(f"unknown {what} {got!r}; valid choices: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """A small ViT for 28×28 grey images by default; ViT-B/16 is
  `ViTConfig(image_size=(224, 224), channels=3, patch=16, num_layers=12, d_model=768,
  num_heads=12, num_classes=1000)`."""

  image_size: tuple[int, int] = (28, 28)  # (H, W)
  channels: int = 1
  patch: int = 4
  num_layers: int = 4
  d_model: int = 64
  num_heads: int = 4
  d_ff: int | None = None  # None = 4·D (Table 1: MLP size = 4 × hidden size)
  pool: str = "cls"  # "cls" (eq. (4)) | "mean" (GAP over the patch tokens)
  positions: str = "learned"  # "learned" (E_pos of eq. (1)) | "sincos2d" (fixed)
  num_classes: int | None = None  # None: no head, __call__ returns the pooled features
  dropout: float = 0.0
  norm_eps: float = 1e-6
  attention_impl: str = "reference"  # as GPTConfig; "pallas" = genfm.kernels flash attention

  def __post_init__(self):
    H, W = self.image_size
    if H % self.patch or W % self.patch:
      raise ValueError(f"image size {H}×{W} is not divisible by the patch size {self.patch}; "
                       "choose a patch that divides both sides")
    _check_choice("pool", self.pool, POOLS)
    _check_choice("positions", self.positions, POSITIONS)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if self.positions == "sincos2d" and self.d_model % 4:
      raise ValueError(f"sincos2d positions need d_model divisible by 4, got {self.d_model}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def grid(self) -> tuple[int, int]:
    return self.image_size[0] // self.patch, self.image_size[1] // self.patch

  @property
  def num_patches(self) -> int:  # T = HW / p², sec. 3.1
    return self.grid[0] * self.grid[1]

  @property
  def num_tokens(self) -> int:  # patches, plus the class token when pool = "cls"
    return self.num_patches + (self.pool == "cls")

  @property
  def patch_dim(self) -> int:  # Q = p²·C
    return self.patch * self.patch * self.channels

  @property
  def ffn_dim(self) -> int:
    return 4 * self.d_model if self.d_ff is None else self.d_ff


def param_count(cfg: ViTConfig) -> int:
  """Parameters by hand: E and its bias, x_class, E_pos, L pre-norm layers, the final LN, head."""
  D, F, L = cfg.d_model, cfg.ffn_dim, cfg.num_layers
  embed = cfg.patch_dim * D + D + (D if cfg.pool == "cls" else 0)
  table = cfg.num_tokens * D if cfg.positions == "learned" else 0
  layer = 2 * 2 * D + (4 * D * D + 4 * D) + (2 * D * F + F + D)  # 2 LNs, MSA (+biases), MLP
  head = 0 if cfg.num_classes is None else D * cfg.num_classes + cfg.num_classes
  return embed + table + L * layer + 2 * D + head


@functools.cache  # one object per choice, so every model shares one jit cache entry
def _attention_fn(impl: str):
  if impl == "pallas":  # imported lazily: the kernels area is optional for CPU users
    from genfm.kernels import flash_attention  # pylint: disable=g-import-not-at-top
    return functools.partial(flash_attention.dot_product_attention, implementation="pallas")
  return functools.partial(attention.dot_product_attention, implementation=impl)


class ViT(nnx.Module):
  """images [B, H, W, C] (uint8 in 0..255 or float) → logits [B, C] or features [B, D]."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    D = cfg.d_model
    # Initialisers of the reference code (big_vision): Xavier-uniform matrices, a zero class
    # token and a zero head (the initial logits are 0, the loss is ln C), N(0, 0.02) positions.
    xavier = nnx.initializers.xavier_uniform()
    self.embed = nnx.Linear(cfg.patch_dim, D, kernel_init=nnx.initializers.lecun_normal(),
                            rngs=rngs)  # E of eq. (1)
    self.cls_token = (nnx.Param(jnp.zeros((1, 1, D), jnp.float32)) if cfg.pool == "cls"
                      else None)
    if cfg.positions == "learned":
      self.pos_embed = nnx.Param(
          nnx.initializers.normal(0.02)(rngs.params(), (1, cfg.num_tokens, D), jnp.float32))
    else:
      self.pos_embed = None
    make_norm = functools.partial(norms.LayerNorm, D, epsilon=cfg.norm_eps, rngs=rngs)
    fn = _attention_fn(cfg.attention_impl)
    layers = []
    for _ in range(cfg.num_layers):
      attn = attention.MultiHeadAttention(D, cfg.num_heads, use_bias=True, attention_fn=fn,
                                          kernel_init=xavier, rngs=rngs)
      mlp = ffn.GeluMLP(D, cfg.ffn_dim, use_bias=True, kernel_init=xavier, rngs=rngs)
      layers.append(block.Block(attn, mlp, make_norm(), make_norm(), placement="pre",
                                dropout_rate=cfg.dropout, rngs=rngs))
    self.layers = nnx.List(layers)
    self.final_norm = make_norm()  # LN of eq. (4)
    self.head = (nnx.Linear(D, cfg.num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)
                 if cfg.num_classes is not None else None)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def _check(self, images_BHWC: Array) -> None:
    want = (*self.cfg.image_size, self.cfg.channels)
    if images_BHWC.ndim != 4 or tuple(images_BHWC.shape[1:]) != want:
      raise ValueError(f"ViT built for images [B, H, W, C] with (H, W, C) = {want}, got shape "
                       f"{tuple(images_BHWC.shape)}")

  def tokens(self, images_BHWC: Array) -> Array:
    """Every token after the final LayerNorm, [B, T, D] (the class token first when pool="cls")."""
    cfg = self.cfg
    self._check(images_BHWC)
    x = images_BHWC
    x = x.astype(jnp.float32) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x
    B = x.shape[0]
    x_BTD = self.embed(patchify(x, cfg.patch))  # x_p^i E, eq. (1)
    if cfg.positions == "sincos2d":  # fixed positions for the patches; the class token has none
      x_BTD = x_BTD + jnp.asarray(sincos_2d(*cfg.grid, cfg.d_model))[None]
    if self.cls_token is not None:  # [x_class; x_p^1 E; …], eq. (1)
      cls_B1D = jnp.broadcast_to(self.cls_token[...], (B, 1, cfg.d_model))
      if (sharding := _batch_sharding(x_BTD, 3)) is not None:  # laid out like the patches
        cls_B1D = jax.sharding.reshard(cls_B1D, sharding)
      x_BTD = jnp.concatenate([cls_B1D, x_BTD], axis=1)
    if self.pos_embed is not None:  # + E_pos ∈ R^{(T+1)×D}, eq. (1)
      x_BTD = x_BTD + self.pos_embed[...]
    x_BTD = self.dropout(x_BTD)
    for layer in self.layers:  # eqs. (2)–(3); every patch sees every patch
      x_BTD, _, _ = layer(x_BTD, is_causal=False)
    return self.final_norm(x_BTD)

  def features(self, images_BHWC: Array) -> Array:
    """Pooled image representation [B, D]: y = LN(z_L^0) (eq. (4)) or the mean of the patch
    tokens after the final LN."""
    x_BTD = self.tokens(images_BHWC)
    return x_BTD[:, 0] if self.cfg.pool == "cls" else jnp.mean(x_BTD, axis=1)

  def __call__(self, images_BHWC: Array) -> Array:
    y_BD = self.features(images_BHWC)
    if self.head is None:
      return y_BD
    return self.head(y_BD).astype(jnp.float32)  # fp32 logits for the softmax cross-entropy
