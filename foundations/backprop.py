"""Backpropagation by hand for a d-layer MLP, in the matrix form of the chain rule.

Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", Nature 323
(1986); matrix notation as in Goodfellow, Bengio & Courville, Deep Learning §6.5 (Algorithm 6.4).

Examples are columns: o_0 = xᵀ is [D_0, B]. Layer l = 1..L computes
  z_l = W_l o_{l−1} + b_l,   o_l = φ(z_l)   (the last layer is linear: logits z_L),
and the loss is the mean softmax cross-entropy. Going backwards, with ∇ meaning ∂loss/∂·:
  ∇z_L = (softmax(z_L) − y) / B                       (softmax + cross-entropy, Bridle 1990)
  ∇z_l = Dφ(z_l) ∇o_l = φ'(z_l) ⊙ ∇o_l              (Dφ is diagonal for elementwise φ)
  ∇W_l = ∇z_l o_{l−1}ᵀ,   ∇b_l = ∇z_l 1             (sum over the batch columns)
  ∇o_{l−1} = W_lᵀ ∇z_l.
`numpy_loss_and_grads` does this in plain NumPy; `vjp_loss_and_grads` does the same walk in JAX
with one `jax.vjp` per layer, which is what `jax.grad` automates.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genfm.foundations import errors

# Each layer is (W [D_out, D_in], b [D_out]).
Params = list[tuple[np.ndarray, np.ndarray]]

_NUMPY_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype)),
    "sigmoid": (lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
                lambda z: 0.25 * (1.0 - np.tanh(0.5 * z) ** 2)),  # σ(1−σ) = (1 − tanh²(z/2))/4
}
_JAX_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


def init_mlp(sizes: list[int], seed: int = 0, dtype=np.float64) -> Params:
  """LeCun-normal weights (std 1/√D_in), small random biases (so ∇b is tested off zero)."""
  if len(sizes) < 2:
    raise ValueError(f"sizes needs at least [D_in, D_out], got {sizes}")
  rng = np.random.default_rng(seed)
  return [(rng.normal(0, 1 / np.sqrt(d_in), (d_out, d_in)).astype(dtype),
           rng.normal(0, 0.1, (d_out,)).astype(dtype))
          for d_in, d_out in zip(sizes[:-1], sizes[1:])]


def _check(params, x_BD, y_BC, activation):
  if activation not in _NUMPY_ACTIVATIONS:
    raise errors.unknown_choice("activation", activation, _NUMPY_ACTIVATIONS)
  d_in, d_out = params[0][0].shape[1], params[-1][0].shape[0]
  if x_BD.ndim != 2 or x_BD.shape[1] != d_in:
    raise ValueError(f"x must have shape [B, {d_in}], got {x_BD.shape}")
  if y_BC.shape != (x_BD.shape[0], d_out):
    raise ValueError(f"y must be one-hot of shape [B, C] = {(x_BD.shape[0], d_out)}, "
                     f"got {y_BC.shape}")


def numpy_loss_and_grads(params: Params, x_BD: np.ndarray, y_BC: np.ndarray,
                         activation: str = "tanh") -> tuple[float, Params]:
  """Mean softmax cross-entropy and its gradient for every (W_l, b_l), by the matrix chain rule."""
  _check(params, x_BD, y_BC, activation)
  phi, dphi = _NUMPY_ACTIVATIONS[activation]
  batch = x_BD.shape[0]
  # Forward: keep every o_{l−1} and z_l for the backward pass.
  outs, pre = [x_BD.T], []  # o_0 = xᵀ: [D_0, B]
  for layer, (w, b) in enumerate(params):
    z = w @ outs[-1] + b[:, None]  # z_l = W_l o_{l−1} + b_l: [D_l, B]
    pre.append(z)
    if layer < len(params) - 1:
      outs.append(phi(z))
  logits_CB = pre[-1]
  shifted = logits_CB - logits_CB.max(axis=0, keepdims=True)  # stable log-softmax
  logp_CB = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
  loss = -np.sum(y_BC.T * logp_CB) / batch
  # Backward.
  grad_z = (np.exp(logp_CB) - y_BC.T) / batch  # ∇z_L = (softmax − y)/B: [C, B]
  grads: Params = []
  for layer in range(len(params) - 1, -1, -1):
    w, _ = params[layer]
    grads.append((grad_z @ outs[layer].T, grad_z.sum(axis=1)))  # ∇W = ∇z o_prevᵀ, ∇b = ∇z 1
    if layer > 0:
      grad_o = w.T @ grad_z  # ∇o_prev = Wᵀ ∇z: [D_{l−1}, B]
      grad_z = dphi(pre[layer - 1]) * grad_o  # ∇z = Dφ ∇o
  return float(loss), grads[::-1]


def jax_loss(params, x_BD: jax.Array, y_BC: jax.Array, activation: str = "tanh") -> jax.Array:
  """The same network and loss in row layout (x W ᵀ + b), for `jax.grad`."""
  phi = _JAX_ACTIVATIONS[activation]
  h = x_BD
  for layer, (w, b) in enumerate(params):
    h = h @ w.T + b
    if layer < len(params) - 1:
      h = phi(h)
  return -jnp.mean(jnp.sum(y_BC * jax.nn.log_softmax(h, axis=-1), axis=-1))


def vjp_loss_and_grads(params, x_BD: jax.Array, y_BC: jax.Array, activation: str = "tanh"):
  """Backprop as a chain of per-layer vector-Jacobian products (reverse-mode AD by hand)."""
  _check(params, x_BD, y_BC, activation)
  phi = _JAX_ACTIVATIONS[activation]
  h, pullbacks = x_BD, []
  for layer, (w, b) in enumerate(params):
    h, lin_vjp = jax.vjp(lambda w, b, o: o @ w.T + b, w, b, h)
    act_vjp = None
    if layer < len(params) - 1:
      h, act_vjp = jax.vjp(phi, h)
    pullbacks.append((lin_vjp, act_vjp))
  loss, loss_vjp = jax.vjp(
      lambda logits: -jnp.mean(jnp.sum(y_BC * jax.nn.log_softmax(logits, axis=-1), axis=-1)), h)
  (g,) = loss_vjp(jnp.ones_like(loss))  # seed ∂loss/∂loss = 1
  grads = []
  for lin_vjp, act_vjp in reversed(pullbacks):
    if act_vjp is not None:
      (g,) = act_vjp(g)  # through φ
    gw, gb, g = lin_vjp(g)  # through z = o Wᵀ + b
    grads.append((gw, gb))
  return loss, grads[::-1]
