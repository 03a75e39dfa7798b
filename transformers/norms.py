"""Normalization layers: LayerNorm (Ba et al. 2016, arXiv:1607.06450) and RMSNorm (Zhang &
Sennrich 2019, arXiv:1910.07467).

Both normalize over the last (feature) axis in fp32 and cast back: the mean of squares of a
bf16 activation loses most of its precision when summed in bf16.
"""

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array
NORMS = ("layernorm", "rmsnorm")


class LayerNorm(nnx.Module):
  """y = (x − μ) / √(σ² + ε) · g + b over the last axis (eq. 4 of 1607.06450)."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, use_bias: bool = True,
               rngs: nnx.Rngs):
    del rngs  # deterministic init; the argument keeps the house signature
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if use_bias else None

  def __call__(self, x_BTD: Array) -> Array:
    x = x_BTD.astype(jnp.float32)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    y = (x - mu) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(x_BTD.dtype)


class RMSNorm(nnx.Module):
  """ā_i = a_i / RMS(a) · g_i, RMS(a) = √(1/n Σ a_i² + ε) (eq. 4 of 1910.07467).

  No re-centering and no bias: the paper's claim is that re-scaling invariance alone suffices.
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
    del rngs
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x_BTD: Array) -> Array:
    x = x_BTD.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(ms + self.epsilon) * self.scale[...]).astype(x_BTD.dtype)


def make_norm(kind: str, num_features: int, *, epsilon: float = 1e-5, use_bias: bool = True,
              rngs: nnx.Rngs) -> nnx.Module:
  """`kind` in NORMS; `use_bias` applies to LayerNorm only."""
  if kind == "layernorm":
    return LayerNorm(num_features, epsilon=epsilon, use_bias=use_bias, rngs=rngs)
  if kind == "rmsnorm":
    return RMSNorm(num_features, epsilon=epsilon, rngs=rngs)
  raise ValueError(f"unknown norm {kind!r}; valid choices: {NORMS}")
