"""A transformer layer with pre-norm or post-norm residual placement.

Post-norm is the original Transformer (Vaswani et al. 2017, arXiv:1706.03762, sec. 3.1:
LayerNorm(x + Sublayer(x))); pre-norm (x + Sublayer(Norm(x))) is GPT-2's placement and trains
stably without warm-up (Xiong et al. 2020, arXiv:2002.04745).
"""

from typing import Any

from flax import nnx
import jax

Array = jax.Array
PLACEMENTS = ("pre", "post")


class Block(nnx.Module):
  """Attention then FFN, each with a residual connection and a norm placed per `placement`.

  `ffn` returns either y or (y, aux) with aux a dict of auxiliary losses (MoE); the block always
  returns (x, aux, new_cache).
  """

  def __init__(self, attn: nnx.Module, ffn: nnx.Module, norm_attn: nnx.Module,
               norm_ffn: nnx.Module, *, placement: str = "pre", dropout_rate: float = 0.0,
               rngs: nnx.Rngs):
    if placement not in PLACEMENTS:
      raise ValueError(f"unknown norm placement {placement!r}; valid choices: {PLACEMENTS}")
    self.placement = placement
    self.attn, self.ffn = attn, ffn
    self.norm_attn, self.norm_ffn = norm_attn, norm_ffn
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _attn(self, x_BTD: Array, cache: Any, attn_kwargs: dict) -> tuple[Array, Any]:
    if cache is None:
      return self.attn(x_BTD, **attn_kwargs), None
    return self.attn(x_BTD, cache=cache, **attn_kwargs)

  def _ffn(self, x_BTD: Array) -> tuple[Array, dict]:
    out = self.ffn(x_BTD)
    return out if isinstance(out, tuple) else (out, {})

  def __call__(self, x_BTD: Array, *, cache: Any = None, **attn_kwargs):
    if self.placement == "pre":
      a_BTD, new_cache = self._attn(self.norm_attn(x_BTD), cache, attn_kwargs)
      x_BTD = x_BTD + self.dropout(a_BTD)  # x + Attn(Norm(x))
      f_BTD, aux = self._ffn(self.norm_ffn(x_BTD))
      x_BTD = x_BTD + self.dropout(f_BTD)  # x + FFN(Norm(x))
    else:
      a_BTD, new_cache = self._attn(x_BTD, cache, attn_kwargs)
      x_BTD = self.norm_attn(x_BTD + self.dropout(a_BTD))  # LayerNorm(x + Sublayer(x)), sec. 3.1
      f_BTD, aux = self._ffn(x_BTD)
      x_BTD = self.norm_ffn(x_BTD + self.dropout(f_BTD))
    return x_BTD, aux, new_cache
