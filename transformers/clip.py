"""CLIP: contrastive image–text pre-training, Radford et al. 2021, arXiv:2103.00020; and the
SigLIP pairwise sigmoid loss, Zhai et al. 2023, arXiv:2303.15343.

Two towers map a batch of B (image, caption) pairs into one E-dim space: the image tower is a
`vit.ViT` (pooled features), the text tower our causal `gpt.GPT`, read at the caption's EOS token
(the "[EOS] token … treated as the feature representation of the text", sec. 2.4 of 2103.00020);
each is projected linearly (no bias) and L2-normalised (Fig. 3). The B×B matrix of scaled cosine
similarities is trained

- "clip":   symmetric InfoNCE, (CE over rows + CE over columns) / 2 with the pairs on the
            diagonal (Fig. 3), scale = exp(t) learned, t initialised to ln(1/0.07) and the scale
            clipped at 100 "to prevent scaling the logits by more than 100" (sec. 2.5);
- "siglip": every entry an independent binary classification, positive on the diagonal,
            −(1/B) Σ_ij log σ(z_ij (t'·x_i·y_j + b)), z = 2I − 1, with learned t' = exp(t)
            (init 10) and bias b (init −10) (Alg. 1 and sec. 3.2 of 2303.15343).

Zero-shot classification (sec. 3.1.4 of 2103.00020): each class's prompts (several templates)
are encoded, normalised, averaged and renormalised (the "prompt ensembling" of sec. 3.1.4); an
image's class is the one of highest cosine similarity.

All similarity matrices are fp32: the B×B logits go through exp/log-sigmoid at scale up to 100.
"""

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp

from genfm.transformers import gpt, vit

Array = jax.Array
LOSSES = ("clip", "siglip")


def l2_normalize(x_BE: Array, eps: float = 1e-12) -> Array:
  """x / ‖x‖ over the last axis, in fp32 (eps guards an all-zero row)."""
  x_BE = x_BE.astype(jnp.float32)
  return x_BE * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x_BE), -1, keepdims=True), eps))


def clip_loss(img_BE: Array, txt_BE: Array, scale: Array) -> Array:
  """Symmetric InfoNCE of Fig. 3 of 2103.00020 on (already normalised) embeddings.

  logits_ij = scale · ⟨img_i, txt_j⟩; loss = (CE_rows(logits, i) + CE_cols(logits, j)) / 2.
  """
  logits_BB = scale * jnp.einsum("iE,jE->ij", img_BE.astype(jnp.float32),
                                 txt_BE.astype(jnp.float32))
  logp_i2t_BB = jax.nn.log_softmax(logits_BB, axis=1)  # image i against every caption
  logp_t2i_BB = jax.nn.log_softmax(logits_BB, axis=0)  # caption j against every image
  return -(jnp.mean(jnp.diagonal(logp_i2t_BB)) + jnp.mean(jnp.diagonal(logp_t2i_BB))) / 2


def siglip_loss(img_BE: Array, txt_BE: Array, scale: Array, bias: Array) -> Array:
  """Alg. 1 of 2303.15343: −(1/B) Σ_ij log σ(z_ij · (t'·⟨img_i, txt_j⟩ + b)), z = 2I − 1."""
  B = img_BE.shape[0]
  logits_BB = scale * jnp.einsum("iE,jE->ij", img_BE.astype(jnp.float32),
                                 txt_BE.astype(jnp.float32)) + bias
  z_BB = 2.0 * jnp.eye(B, dtype=jnp.float32) - 1.0  # +1 on the diagonal, −1 elsewhere
  return -jnp.sum(jax.nn.log_sigmoid(z_BB * logits_BB)) / B


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Two small towers for 28×28 images and 16-token captions by default."""

  vision: vit.ViTConfig = vit.ViTConfig()
  text: gpt.GPTConfig = gpt.GPTConfig(vocab_size=64, context_len=16, num_layers=2, d_model=64,
                                      num_heads=4)
  embed_dim: int = 64  # E
  loss: str = "clip"
  init_temperature: float = 0.07  # τ; the learned parameter is t = ln(1/τ) (sec. 2.5)
  max_logit_scale: float = 100.0  # exp(t) is clipped here (sec. 2.5)
  siglip_init_t: float = 10.0  # t' = exp(t) at init for siglip (sec. 3.2 of 2303.15343)
  siglip_init_b: float = -10.0
  pad_id: int = 0
  eos_id: int = 2

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"unknown loss {self.loss!r}; valid choices: {', '.join(LOSSES)}")
    if self.vision.num_classes is not None:
      raise ValueError("the CLIP image tower has no classification head: set "
                       f"vision.num_classes=None (got {self.vision.num_classes})")
    if self.embed_dim < 1 or self.init_temperature <= 0 or self.max_logit_scale <= 0:
      raise ValueError("need embed_dim >= 1, init_temperature > 0 and max_logit_scale > 0")


def param_count(cfg: CLIPConfig) -> int:
  """Both towers, the two projections (no bias), the temperature (and the SigLIP bias)."""
  E = cfg.embed_dim
  return (vit.param_count(cfg.vision) + gpt.param_count(cfg.text)
          + (cfg.vision.d_model + cfg.text.d_model) * E + 1 + (cfg.loss == "siglip"))


class CLIP(nnx.Module):
  """`encode_image`, `encode_text` → normalised [B, E]; `loss(images, text)` → (scalar, metrics)."""

  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    E = cfg.embed_dim
    self.image_tower = vit.ViT(cfg.vision, rngs=rngs)
    self.text_tower = gpt.GPT(cfg.text, rngs=rngs)
    self.image_proj = nnx.Linear(cfg.vision.d_model, E, use_bias=False, rngs=rngs)  # W_i, Fig. 3
    self.text_proj = nnx.Linear(cfg.text.d_model, E, use_bias=False, rngs=rngs)  # W_t
    t0 = (math.log(1.0 / cfg.init_temperature) if cfg.loss == "clip"
          else math.log(cfg.siglip_init_t))  # ln(1/0.07) = 2.659; ln 10 = 2.303
    self.logit_scale = nnx.Param(jnp.asarray(t0, jnp.float32))
    self.logit_bias = (nnx.Param(jnp.asarray(cfg.siglip_init_b, jnp.float32))
                       if cfg.loss == "siglip" else None)

  def encode_image(self, images_BHWC: Array) -> Array:
    return l2_normalize(self.image_proj(self.image_tower.features(images_BHWC)))

  def eos_index(self, text_BT: Array) -> Array:
    """[B] position read by the text tower: the first EOS, or the last non-PAD token of a row
    without one (a truncated caption). For `BOS caption EOS PAD…` rows the two coincide."""
    T = text_BT.shape[1]
    t_BT = jnp.broadcast_to(jnp.arange(T), text_BT.shape)
    first_eos_B = jnp.min(jnp.where(text_BT == self.cfg.eos_id, t_BT, T), axis=1)
    last_real_B = jnp.max(jnp.where(text_BT != self.cfg.pad_id, t_BT, 0), axis=1)
    return jnp.where(first_eos_B < T, first_eos_B, last_real_B)

  def encode_text(self, text_BT: Array) -> Array:
    h_BTD = self.text_tower.hidden_states(text_BT)  # causal: EOS has seen the whole caption
    h_BD = jnp.take_along_axis(h_BTD, self.eos_index(text_BT)[:, None, None], axis=1)[:, 0]
    return l2_normalize(self.text_proj(h_BD))

  def scale(self) -> Array:
    """exp(t) clipped at max_logit_scale; past the clip the gradient to t is zero (sec. 2.5)."""
    return jnp.minimum(jnp.exp(self.logit_scale[...]), self.cfg.max_logit_scale)

  def loss(self, images_BHWC: Array, text_BT: Array) -> tuple[Array, dict]:
    img_BE, txt_BE = self.encode_image(images_BHWC), self.encode_text(text_BT)
    scale = self.scale()
    metrics = {"temperature": 1.0 / scale, "logit_scale": scale}
    if self.cfg.loss == "clip":
      loss = clip_loss(img_BE, txt_BE, scale)
    else:
      loss = siglip_loss(img_BE, txt_BE, scale, self.logit_bias[...])
      metrics["logit_bias"] = self.logit_bias[...]
    # In-batch retrieval: is the paired caption (image) the nearest of the B?
    sim_BB = img_BE @ txt_BE.T
    diag_B = jnp.arange(img_BE.shape[0])
    metrics["i2t_accuracy"] = jnp.mean(jnp.argmax(sim_BB, axis=1) == diag_B)
    metrics["t2i_accuracy"] = jnp.mean(jnp.argmax(sim_BB, axis=0) == diag_B)
    return loss, metrics


def zero_shot_classifier(model: CLIP, prompts_CMT: Array) -> Array:
  """[C, M, T] prompts (M templates per class) → class embeddings [C, E]: the mean over templates
  of the normalised text embeddings, renormalised (sec. 3.1.4 of 2103.00020)."""
  C, M, T = prompts_CMT.shape
  txt_CME = model.encode_text(prompts_CMT.reshape(C * M, T)).reshape(C, M, -1)
  return l2_normalize(jnp.mean(txt_CME, axis=1))


def zero_shot_logits(img_BE: Array, cls_CE: Array) -> Array:
  """Cosine similarities [B, C]; both sides renormalised, so any positive rescaling of an
  image's or a class's embedding leaves them unchanged."""
  return l2_normalize(img_BE) @ l2_normalize(cls_CE).T
