"""Why skip connections train: per-layer gradient norms of a deep plain net vs a residual net.

Plain:     h_{l+1} = φ(h_l W_l)
Residual:  h_{l+1} = h_l + φ(h_l W_l)      (eq. (1) of He et al. 1512.03385, identity shortcut)
Backprop through L plain layers multiplies L Jacobians diag(φ') W_lᵀ; with sigmoid (φ' ≤ 1/4) and
LeCun-scaled weights each factor shrinks the gradient, so ∂loss/∂W_1 vanishes geometrically
(Hochreiter 1991; Bengio, Simard & Frasconi 1994). With shortcuts each Jacobian is I + diag(φ')W_lᵀ,
so ∂loss/∂h_l = ∂loss/∂h_L (I + …): the identity term carries the gradient to every layer
unattenuated (He et al. 1603.05027, eq. (5)).
The two nets share their weights: only the shortcut differs.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.foundations import errors

_ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}


class DeepNet(nnx.Module):
  """`depth` square bias-free layers of width D, plain or residual; [B, D] -> [B, D]."""

  def __init__(self, width: int, depth: int, *, residual: bool, activation: str = "sigmoid",
               rngs: nnx.Rngs):
    if activation not in _ACTIVATIONS:
      raise errors.unknown_choice("activation", activation, _ACTIVATIONS)
    self.width, self.depth, self.residual, self.activation = width, depth, residual, activation
    # LeCun normal, std 1/√D: every layer's weights stacked as one [L, D, D] parameter.
    self.kernel_LDD = nnx.Param(
        jax.random.normal(rngs.params(), (depth, width, width)) / jnp.sqrt(width))

  def __call__(self, h_BD: jax.Array) -> jax.Array:
    if h_BD.ndim != 2 or h_BD.shape[1] != self.width:
      raise ValueError(f"DeepNet expects [B, {self.width}] inputs, got {h_BD.shape}")
    phi = _ACTIVATIONS[self.activation]

    def layer(h_BD, w_DD):
      f_BD = phi(h_BD @ w_DD)
      return (h_BD + f_BD if self.residual else f_BD), None  # eq. (1) of 1512.03385

    h_BD, _ = jax.lax.scan(layer, h_BD, self.kernel_LDD[...])
    return h_BD


@nnx.jit
def layer_grad_norms(model: DeepNet, x_BD: jax.Array, y_BD: jax.Array) -> jax.Array:
  """‖∂loss/∂W_l‖_F for l = 1..L, loss = ½ mean_b ‖net(x_b) − y_b‖²: [L]."""

  def loss_fn(m):
    return 0.5 * jnp.mean(jnp.sum((m(x_BD) - y_BD) ** 2, axis=-1))

  grads = nnx.grad(loss_fn)(model)
  g_LDD = grads.kernel_LDD[...]
  return jnp.sqrt(jnp.sum(g_LDD.astype(jnp.float32) ** 2, axis=(1, 2)))


def compare(width: int = 64, depth: int = 20, batch: int = 64, activation: str = "sigmoid",
            seed: int = 0) -> dict[str, jax.Array]:
  """Per-layer gradient norms [L] of the plain and residual nets with identical weights."""
  kx, ky = jax.random.split(jax.random.key(seed))
  x_BD = jax.random.normal(kx, (batch, width))
  y_BD = jax.random.normal(ky, (batch, width))
  out = {}
  for name, residual in (("plain", False), ("residual", True)):
    model = DeepNet(width, depth, residual=residual, activation=activation,
                    rngs=nnx.Rngs(seed))  # same seed: same weights
    out[name] = layer_grad_norms(model, x_BD, y_BD)
  return out
