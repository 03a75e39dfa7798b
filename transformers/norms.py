"""Normalization layers: LayerNorm (Ba et al. 2016, arXiv:1607.06450) and RMSNorm (Zhang &
Sennrich 2019, arXiv:1910.07467).

Both normalize over the last (feature) axis in fp32 and cast back: the mean of squares of a
bf16 activation loses most of its precision when summed in bf16.

Both have a closed-form backward (`jax.custom_vjp`), as fused norm kernels do (Apex, Triton's
layer-norm tutorial): with x̂ = (x − μ)/σ and ĝ = g ∘ ∂L/∂y,

    ∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ ∘ x̂)) / σ        (LayerNorm; RMSNorm drops mean(ĝ))

one expression per norm instead of autodiff's chain through μ and σ². The maths is the same;
what changes is the program XLA sees. On XLA:CPU autodiff's chain let the fusion pass copy
every layer's norm backward into each consumer of the residual-stream gradient, so a 12-layer
GPT-2 recomputed it O(L²) times (26 % of its fwd+bwd time; `genfm-bench gpt_vs_nanogpt`, issue
#15). Forward-mode (`jax.jvp`) is not defined through a `custom_vjp`: differentiate these norms
in reverse mode (`jax.grad`, `jax.vjp`).
"""

import functools

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
    bias = None if self.bias is None else self.bias[...]
    y = layer_norm(x_BTD.astype(jnp.float32), self.scale[...], bias, self.epsilon)
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
    y = rms_norm(x_BTD.astype(jnp.float32), self.scale[...], self.epsilon)
    return y.astype(x_BTD.dtype)


def _normalize(x: Array, epsilon: float, center: bool) -> tuple[Array, Array]:
  """(x̂, 1/σ) over the last axis; σ = √(var + ε) (centered) or √(mean(x²) + ε) (RMS)."""
  if center:
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)
  return x * rstd, rstd


def _norm_backward(x_hat: Array, rstd: Array, scale: Array, dy: Array, center: bool):
  """(∂L/∂x, ∂L/∂g, ∂L/∂b) of y = x̂ · g + b, with x̂ from `_normalize`."""
  g_hat = dy * scale
  inner = g_hat - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True)
  if center:
    inner = inner - jnp.mean(g_hat, axis=-1, keepdims=True)
  rows = tuple(range(dy.ndim - 1))
  return inner * rstd, jnp.sum(dy * x_hat, axis=rows), jnp.sum(dy, axis=rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array | None, epsilon: float) -> Array:
  """fp32 LayerNorm over the last axis, eq. (4) of 1607.06450, with the closed-form backward."""
  y = _normalize(x, epsilon, center=True)[0] * scale
  return y if bias is None else y + bias


def _layer_norm_fwd(x, scale, bias, epsilon):
  x_hat, rstd = _normalize(x, epsilon, center=True)
  y = x_hat * scale
  return (y if bias is None else y + bias), (x_hat, rstd, scale, bias)


def _layer_norm_bwd(epsilon, res, dy):
  del epsilon
  x_hat, rstd, scale, bias = res  # bias: only whether there is one (None or not)
  dx, dscale, dbias = _norm_backward(x_hat, rstd, scale, dy, center=True)
  return dx, dscale, None if bias is None else dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: Array, scale: Array, epsilon: float) -> Array:
  """fp32 RMSNorm over the last axis, eq. (4) of 1910.07467, with the closed-form backward."""
  return _normalize(x, epsilon, center=False)[0] * scale


def _rms_norm_fwd(x, scale, epsilon):
  x_hat, rstd = _normalize(x, epsilon, center=False)
  return x_hat * scale, (x_hat, rstd, scale)


def _rms_norm_bwd(epsilon, res, dy):
  del epsilon
  x_hat, rstd, scale = res
  dx, dscale, _ = _norm_backward(x_hat, rstd, scale, dy, center=False)
  return dx, dscale


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def make_norm(kind: str, num_features: int, *, epsilon: float = 1e-5, use_bias: bool = True,
              rngs: nnx.Rngs) -> nnx.Module:
  """`kind` in NORMS; `use_bias` applies to LayerNorm only."""
  if kind == "layernorm":
    return LayerNorm(num_features, epsilon=epsilon, use_bias=use_bias, rngs=rngs)
  if kind == "rmsnorm":
    return RMSNorm(num_features, epsilon=epsilon, rngs=rngs)
  raise ValueError(f"unknown norm {kind!r}; valid choices: {NORMS}")
