"""BatchNorm and LayerNorm from scratch as Flax NNX modules (equal to nnx.BatchNorm / LayerNorm).

BatchNorm (Ioffe & Szegedy 1502.03167, Algorithm 1): per feature, over the batch (and spatial)
axes, μ_B = mean(x), σ²_B = mean((x − μ_B)²), x̂ = (x − μ_B)/√(σ²_B + ε), y = γx̂ + β. Running
averages r ← m r + (1 − m) stat_B feed evaluation (Algorithm 2 uses the population statistics).
Like flax, the running variance stores the biased σ²_B (PyTorch stores the unbiased one) and m is
the weight on the old value (flax momentum 0.99 = PyTorch momentum 0.01).
LayerNorm (Ba, Kiros & Hinton 1607.06450, eq. (4)): the same normalisation over the features of
each example; identical in training and evaluation, independent of the batch.
Statistics are computed in fp32 even for bf16 inputs: a mean of many bf16 values loses digits.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
  """Normalises the last axis over all other axes; [..., C] -> [..., C]."""

  def __init__(self, num_features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
               rngs: nnx.Rngs):
    del rngs  # deterministic init; kept for the house signature
    self.num_features, self.momentum, self.epsilon = num_features, momentum, epsilon
    self.scale = nnx.Param(jnp.ones(num_features))  # γ
    self.bias = nnx.Param(jnp.zeros(num_features))  # β
    self.mean = nnx.BatchStat(jnp.zeros(num_features))  # running μ
    self.var = nnx.BatchStat(jnp.ones(num_features))  # running σ²

  def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
    if x.shape[-1] != self.num_features:
      raise ValueError(f"BatchNorm expects [..., {self.num_features}] inputs, got {x.shape}")
    axes = tuple(range(x.ndim - 1))  # every axis except the features
    xf = x.astype(jnp.float32)
    if use_running_average:
      mu, var = self.mean[...], self.var[...]
    else:
      mu = jnp.mean(xf, axis=axes)  # μ_B
      var = jnp.mean(jnp.square(xf - mu), axis=axes)  # σ²_B, biased (÷ batch size)
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mu)
      self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
    x_hat = (xf - mu) * jax.lax.rsqrt(var + self.epsilon)  # Algorithm 1 of 1502.03167
    return (x_hat * self.scale[...] + self.bias[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
  """Normalises each example over its last axis; [..., D] -> [..., D]."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, rngs: nnx.Rngs):
    del rngs
    self.num_features, self.epsilon = num_features, epsilon
    self.scale = nnx.Param(jnp.ones(num_features))
    self.bias = nnx.Param(jnp.zeros(num_features))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.num_features:
      raise ValueError(f"LayerNorm expects [..., {self.num_features}] inputs, got {x.shape}")
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)  # eq. (4) of 1607.06450: μ over the H features
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    x_hat = (xf - mu) * jax.lax.rsqrt(var + self.epsilon)
    return (x_hat * self.scale[...] + self.bias[...]).astype(x.dtype)
