"""Personalising a text-to-image model to a new concept from a few images.

- Textual inversion, Gal et al. 2022, arXiv:2208.01618: a placeholder word S* gets a new
  embedding v*, learned with the denoiser AND the text encoder frozen (eq. (2):
  v* = argmin_v E ‖ε − ε_θ(z_t, t, c_θ(y))‖², y a prompt containing S*); v* is initialised
  from the embedding of a single coarse descriptor word (sec. 4.1). `PersonalizedText` is the
  frozen text tower with v* substituted wherever the tokens equal S*'s id (through
  `gpt.GPT.hidden_states(input_embeds_BTD=...)`); only `concept` is a trainable parameter, so
  the tower's own table row of S* stays untouched.
- DreamBooth, Ruiz et al. 2022, arXiv:2208.12242: prompts "a [V] [class noun]" with a rare
  token [V], the denoiser fine-tuned, plus the class-specific prior-preservation loss of
  eq. (2) on images x_pr the frozen base model generated for "a [class noun]":
  `prior_preservation_loss`.
- LoRA (2106.09685) on the denoiser's attention projections: `transformers/lora.py`.

The concept used by the experiments (`experiments/tasks/personalize.py`) is a measurable visual
signature: a bright square `stamp`ed in the top-left corner of a few images of one class. Real
Fashion-MNIST / digits images have dark corners (0 of the 60 000 Fashion training images and 1
of the 10 000 test images has a 5×5 corner mean above 1/2; no digits image a 2×2 one), so "the
concept appears in a sample" is the
number `concept_present` computes: the mean of the square in [0, 1] brightness above 1/2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.transformers import gpt

Array = jax.Array


def substitute_embedding(embeds_BSD: Array, tokens_BS: Array, placeholder_id: int,
                         v_D: Array) -> Array:
  """embeds with v* at every position whose token is the placeholder S* (2208.01618 sec. 3)."""
  hit_BS1 = (tokens_BS == placeholder_id)[..., None]
  return jnp.where(hit_BS1, v_D.astype(embeds_BSD.dtype), embeds_BSD)


class PersonalizedText(nnx.Module):
  """A frozen GPT text tower whose placeholder token S* reads the learned `concept` vector v*.

  Quacks like the tower for the text-to-image task (`hidden_states`, `embed`, `cfg`); train it
  with the filter `nnx.PathContains("concept")` so v* is its only trainable parameter.
  """

  def __init__(self, tower: gpt.GPT, placeholder_id: int, init_id: int):
    V = tower.cfg.vocab_size
    for name, i in (("placeholder", placeholder_id), ("initializer", init_id)):
      if not 0 <= i < V:
        raise ValueError(f"{name} token id {i} is outside the text tower's vocabulary 0..{V - 1}")
    self.tower = tower
    self.placeholder_id = int(placeholder_id)
    # v* starts as the descriptor word's embedding (sec. 4.1 of 2208.01618); a copy, so the
    # table row is not shared with the new parameter.
    self.concept = nnx.Param(jnp.array(tower.embed.embedding[...][init_id], copy=True))

  @property
  def cfg(self) -> gpt.GPTConfig:
    return self.tower.cfg

  @property
  def embed(self) -> nnx.Embed:
    return self.tower.embed

  def input_embeds(self, tokens_BS: Array) -> Array:
    return substitute_embedding(self.tower.embed(tokens_BS), tokens_BS, self.placeholder_id,
                                self.concept[...])

  def hidden_states(self, tokens_BS: Array, **kwargs) -> Array:
    return self.tower.hidden_states(tokens_BS, input_embeds_BTD=self.input_embeds(tokens_BS),
                                    **kwargs)


def prior_preservation_loss(instance_loss_B: Array, prior_loss_B: Array,
                            prior_weight: float) -> Array:
  """Eq. (2) of 2208.12242 with the per-example diffusion losses given:
  E[w_t ‖x̂_θ(α_t x + σ_t ε, c) − x‖²] + λ E[w_t' ‖x̂_θ(α_t' x_pr + σ_t' ε', c_pr) − x_pr‖²],
  i.e. mean(instance) + λ·mean(prior). λ = 0 is the plain instance loss (no class images)."""
  if prior_weight < 0:
    raise ValueError(f"the prior-preservation weight λ must be ≥ 0, got {prior_weight}")
  inst = jnp.mean(instance_loss_B.astype(jnp.float32))
  if prior_weight == 0:
    return inst
  return inst + prior_weight * jnp.mean(prior_loss_B.astype(jnp.float32))


# --- the concept: a stamped corner square, and its detector -----------------------------------


def stamp(images_BHWC: np.ndarray, size: int, value: int = 255) -> np.ndarray:
  """uint8 images with a `size`×`size` square of `value` in the top-left corner (a copy)."""
  images_BHWC = np.asarray(images_BHWC)
  if images_BHWC.ndim != 4 or images_BHWC.dtype != np.uint8:
    raise ValueError(f"stamp takes uint8 images [B, H, W, C], got {images_BHWC.dtype}"
                     f"{list(images_BHWC.shape)}")
  _check_size(size, images_BHWC.shape[1:3])
  out = images_BHWC.copy()
  out[:, :size, :size, :] = value
  return out


def corner_brightness(x_BHWC, size: int, offset: int = 0, *, right: bool = False) -> np.ndarray:
  """float [B]: mean brightness in [0, 1] of the stamp's square, for images x in [−1, 1]
  padded by `offset` pixels (the square sits at rows/cols offset .. offset + size − 1; with
  `right`, its mirror image in the top-right corner)."""
  x_BHWC = np.asarray(x_BHWC, np.float32)
  if x_BHWC.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C] in [−1, 1], got shape {list(x_BHWC.shape)}")
  _check_size(size, (x_BHWC.shape[1] - offset, x_BHWC.shape[2] - offset))
  if right:
    x_BHWC = x_BHWC[:, :, ::-1]
  patch = x_BHWC[:, offset:offset + size, offset:offset + size, :]
  return (np.clip(patch, -1.0, 1.0).mean(axis=(1, 2, 3)) + 1.0) / 2.0


def concept_present(x_BHWC, size: int, offset: int = 0, threshold: float = 0.5) -> np.ndarray:
  """bool [B]: does each image show the concept — its top-left square brighter than
  `threshold` while the mirrored top-right square is not (a saturated or all-white sample lights
  both corners: that is a failure of the model, not the stamp)?"""
  return ((corner_brightness(x_BHWC, size, offset) > threshold)
          & (corner_brightness(x_BHWC, size, offset, right=True) <= threshold))


def concept_rate(x_BHWC, size: int, offset: int = 0, threshold: float = 0.5) -> float:
  """The fraction of images that show the concept."""
  return float(np.mean(concept_present(x_BHWC, size, offset, threshold)))


def _check_size(size, hw) -> None:
  if not isinstance(size, (int, np.integer)) or not 1 <= size <= min(hw):
    raise ValueError(f"the stamp size must be an integer in 1..{min(hw)} (the image is "
                     f"{hw[0]}×{hw[1]}), got {size!r}")
