"""A LLaVA-style vision–language model: image tokens → projector → prefix of a GPT.

LLaVA (Liu et al. 2023, arXiv:2304.08485, §4.1): the vision encoder's patch features Z_v go
through a trainable projection into the language model's word-embedding space,
H_v = W · Z_v (eq. (1)); LLaVA-1.5 (arXiv:2310.03744) replaces W by a two-layer MLP with
GELU. The projected tokens H_v precede the text as per-example embeddings
(`gpt.GPT(prefix_embeds_BPD=...)`), and the image together with the question is attended fully
(the prefix-LM mask of PaliGemma, 2407.07726: `bidirectional_len_B` = M + prompt length)
while the answer is causal. The loss is on the answer tokens only (eq. (3) of 2304.08485: the
likelihood of X_a given X_v and X_instruct), `loss_mask` = 1 exactly at answer targets.

Training (§4.2): stage 1 (feature alignment) trains the projector only, with the vision encoder
and the LM frozen; stage 2 (fine-tuning) trains projector + LM. The freezing itself is the
training loop's business (`experiments/tasks/vlm.py`); this module is the forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.transformers import gpt

Array = jax.Array
PROJECTORS = ("linear", "mlp")


class Projector(nnx.Module):
  """Vision width C → LM width D: `linear` (H_v = W·Z_v, eq. (1) of 2304.08485) or `mlp`
  (Linear–GELU–Linear, LLaVA-1.5 2310.03744). Both with biases, as the references."""

  def __init__(self, kind: str, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    if kind not in PROJECTORS:
      raise ValueError(f"unknown projector {kind!r}; valid choices: {', '.join(PROJECTORS)}")
    self.kind, self.in_dim, self.out_dim = kind, in_dim, out_dim
    self.fc1 = nnx.Linear(in_dim, out_dim, rngs=rngs)
    self.fc2 = nnx.Linear(out_dim, out_dim, rngs=rngs) if kind == "mlp" else None

  def __call__(self, z_BMC: Array) -> Array:
    """Image features [B, M, C] (C = the vision tower's width) → prefix embeddings [B, M, D]."""
    if z_BMC.ndim != 3 or z_BMC.shape[-1] != self.in_dim:
      raise ValueError(f"image features {list(z_BMC.shape)} do not fit the projector: it expects "
                       f"[B, M, {self.in_dim}] (the vision tower's width), got width "
                       f"{z_BMC.shape[-1] if z_BMC.ndim else None}")
    h_BMD = self.fc1(z_BMC)                    # W · Z_v, eq. (1) of 2304.08485
    if self.fc2 is not None:                   # two-layer GELU MLP, 2310.03744
      h_BMD = self.fc2(jax.nn.gelu(h_BMD, approximate=False))
    return h_BMD


def projector_param_count(kind: str, in_dim: int, out_dim: int) -> int:
  """By hand: C·D + D (linear), + D·D + D (mlp)."""
  n = in_dim * out_dim + out_dim
  return n + (out_dim * out_dim + out_dim if kind == "mlp" else 0)


def answer_loss(logits_BTV: Array, targets_BT: Array, loss_mask_BT: Array) -> Array:
  """Mean cross-entropy over the answer targets only (eq. (3) of 2304.08485): image and prompt
  positions have no target in the sum, so they get exactly zero gradient from it."""
  return gpt.lm_loss(logits_BTV, targets_BT, loss_mask_BT)


class LLaVA(nnx.Module):
  """Projector + GPT. `__call__(z_BMC, tokens_BT, prompt_len_B)` → logits [B, T, V] for the
  tokens; the M image tokens and the first `prompt_len_B` tokens form the bidirectional prefix."""

  def __init__(self, lm: gpt.GPT, projector: Projector):
    if projector.out_dim != lm.cfg.d_model:
      raise ValueError(f"the projector outputs width {projector.out_dim} but the LM's d_model is "
                       f"{lm.cfg.d_model}")
    self.projector, self.lm = projector, lm

  def __call__(self, z_BMC: Array, tokens_BT: Array, prompt_len_B: Array | None = None) -> Array:
    h_BMD = self.projector(z_BMC)
    M = h_BMD.shape[1]
    # prompt_len None: the image alone is the bidirectional prefix (pure captioning).
    n_B = M + (jnp.zeros(tokens_BT.shape[0], jnp.int32) if prompt_len_B is None
               else jnp.asarray(prompt_len_B, jnp.int32))
    return self.lm(tokens_BT, prefix_embeds_BPD=h_BMD, bidirectional_len_B=n_B)
