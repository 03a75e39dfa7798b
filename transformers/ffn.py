"""Position-wise feed-forward networks: the GELU MLP (1706.03762 sec. 3.3 with GELU, Hendrycks &
Gimpel arXiv:1606.08415, as in GPT-2) and SwiGLU (Shazeer 2020, arXiv:2002.05202)."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array
FFNS = ("gelu", "swiglu")


class GeluMLP(nnx.Module):
  """FFN(x) = GELU(x W1 + b1) W2 + b2, D → F → D (eq. 2 of 1706.03762 with GELU for ReLU).

  GELU uses the tanh approximation, as GPT-2 did (`jax.nn.gelu(approximate=True)`).
  """

  def __init__(self, d_model: int, d_ff: int, *, use_bias: bool = True,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               out_kernel_init: nnx.Initializer | None = None, dtype: jnp.dtype | None = None,
               rngs: nnx.Rngs):
    self.up = nnx.Linear(d_model, d_ff, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                         rngs=rngs)
    self.down = nnx.Linear(d_ff, d_model, use_bias=use_bias, dtype=dtype,
                           kernel_init=out_kernel_init or kernel_init, rngs=rngs)

  def __call__(self, x_BTD: Array) -> Array:
    h_BTF = jax.nn.gelu(self.up(x_BTD), approximate=True)
    return self.down(h_BTF)


class SwiGLU(nnx.Module):
  """FFN_SwiGLU(x, W, V, W2) = (Swish₁(xW) ⊗ xV) W2, eq. (6) of 2002.05202 (no biases).

  Three D×F matrices instead of two: at equal parameters use F = (2/3)·4D, as the paper does.
  """

  def __init__(self, d_model: int, d_ff: int, *,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               out_kernel_init: nnx.Initializer | None = None, dtype: jnp.dtype | None = None,
               rngs: nnx.Rngs):
    linear = functools.partial(nnx.Linear, use_bias=False, dtype=dtype, rngs=rngs)
    self.gate = linear(d_model, d_ff, kernel_init=kernel_init)
    self.up = linear(d_model, d_ff, kernel_init=kernel_init)
    self.down = linear(d_ff, d_model, kernel_init=out_kernel_init or kernel_init)

  def __call__(self, x_BTD: Array) -> Array:
    h_BTF = jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD)  # Swish₁ = SiLU: x·σ(x)
    return self.down(h_BTF)


def make_ffn(kind: str, d_model: int, d_ff: int, *, use_bias: bool = True,
             kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
             out_kernel_init: nnx.Initializer | None = None, dtype: jnp.dtype | None = None,
             rngs: nnx.Rngs) -> nnx.Module:
  """`kind` in FFNS; `use_bias` applies to the GELU MLP only (SwiGLU has none, per the paper).
  `dtype` is the compute dtype of the matmuls (None: promoted input/param dtype)."""
  if kind == "gelu":
    return GeluMLP(d_model, d_ff, use_bias=use_bias, kernel_init=kernel_init,
                   out_kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)
  if kind == "swiglu":
    return SwiGLU(d_model, d_ff, kernel_init=kernel_init, out_kernel_init=out_kernel_init,
                  dtype=dtype, rngs=rngs)
  raise ValueError(f"unknown ffn {kind!r}; valid choices: {FFNS}")
