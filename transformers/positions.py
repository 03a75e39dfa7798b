"""Position information for transformers: four schemes, each beside its paper.

- sinusoidal: Vaswani et al. 2017, arXiv:1706.03762, sec. 3.5.
- learned: absolute embeddings added to the token embeddings (GPT-2 `wpe`).
- RoPE: Su et al. 2021, arXiv:2104.09864 (rotary position embedding, eqs. 14–16 and 34).
- ALiBi: Press et al. 2021, arXiv:2108.12409 (linear biases on the attention logits, sec. 3).
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array


def sinusoidal(positions_BT: Array, d_model: int, *, max_wavelength: float = 10_000.0) -> Array:
  """[B, T, D] table: PE(pos, 2i) = sin(pos / 10000^{2i/D}), PE(pos, 2i+1) = cos(...).

  Sec. 3.5 of 1706.03762; even and odd channels interleaved as in the paper.
  """
  if d_model % 2:
    raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
  two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)  # [D/2]
  angle_BTd = positions_BT[..., None].astype(jnp.float32) / max_wavelength ** (two_i / d_model)
  pe_BTd2 = jnp.stack([jnp.sin(angle_BTd), jnp.cos(angle_BTd)], axis=-1)
  return pe_BTd2.reshape(*positions_BT.shape, d_model)


class LearnedPositions(nnx.Module):
  """Absolute learned position embeddings, a [max_len, D] table (GPT-2 `wpe`)."""

  def __init__(self, max_len: int, d_model: int, *,
               embedding_init: nnx.Initializer = nnx.initializers.normal(0.02),
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.max_len = max_len
    self.embed = nnx.Embed(max_len, d_model, embedding_init=embedding_init, dtype=dtype,
                           rngs=rngs)

  def __call__(self, positions_BT: Array) -> Array:
    # Under jit a position >= max_len cannot be detected (Embed would clip it silently); callers
    # check the sequence length against max_len before tracing (see gpt.GPT.__call__).
    return self.embed(positions_BT)  # [B, T, D]


def rope_frequencies(head_dim: int, *, base: float = 10_000.0) -> Array:
  """θ_i = base^{-2(i-1)/d}, i = 1..d/2 (eq. 15 of 2104.09864). Returns [H/2]."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
  return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x_BTNH: Array, positions_BT: Array, *, base: float = 10_000.0) -> Array:
  """Rotate each pair of channels of q or k by angle m·θ_i, m = the token's position.

  Eq. (34) of 2104.09864 pairs channels (2i, 2i+1); we pair (i, i + H/2) ("rotate half", as in
  GPT-NeoX, LLaMA and gemma). The two differ by a fixed permutation of the head dimension,
  which the q/k projections absorb, so the model class is the same. Computed in fp32: the angle
  m·θ for m in the thousands needs more than bf16's 8 mantissa bits.
  """
  H = x_BTNH.shape[-1]
  theta_h = rope_frequencies(H, base=base)  # [H/2]
  angle_BTh = positions_BT[..., None].astype(jnp.float32) * theta_h  # m θ_i
  cos_BT1h = jnp.cos(angle_BTh)[:, :, None, :]
  sin_BT1h = jnp.sin(angle_BTh)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  # [x1; x2] ↦ [x1 cos − x2 sin; x2 cos + x1 sin], the 2-D rotation of eq. (34) per pair.
  out = jnp.concatenate([x1 * cos_BT1h - x2 * sin_BT1h, x2 * cos_BT1h + x1 * sin_BT1h], axis=-1)
  return out.astype(x_BTNH.dtype)


def alibi_slopes(num_heads: int) -> Array:
  """Head-specific slopes m_n (sec. 3 of 2108.12409). Returns [N].

  For N a power of two: the geometric sequence starting at 2^{-8/N} with ratio 2^{-8/N}
  (N = 8: 1/2, 1/4, ..., 1/256). Otherwise the paper's recipe: the slopes of the closest
  smaller power of two P, then every other slope of the 2P sequence, until N are taken.
  """
  if num_heads < 1:
    raise ValueError(f"num_heads must be >= 1, got {num_heads}")

  def geometric(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  p = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = geometric(p)
  if p < num_heads:
    slopes += geometric(2 * p)[0::2][: num_heads - p]
  return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(slopes_N: Array, q_positions_BT: Array, k_positions_BS: Array) -> Array:
  """Bias −m_n · |i − j| added to the logit of query i and key j; returns [B, N, T, S].

  Sec. 3 of 2108.12409: softmax(q_i Kᵀ + m · [−(i−1), ..., −2, −1, 0]). With a causal mask only
  j ≤ i is seen, where |i − j| = i − j, the paper's bias; |·| extends it to bidirectional use.
  """
  dist_BTS = jnp.abs(q_positions_BT[:, :, None] - k_positions_BS[:, None, :]).astype(jnp.float32)
  return -slopes_N[None, :, None, None] * dist_BTS[:, None, :, :]
