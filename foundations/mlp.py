"""Multi-layer perceptron classifier (Rumelhart, Hinton & Williams 1986; dropout 1207.0580).

    h_0 = flatten(x);  h_l = φ(W_l h_{l-1} + b_l);  logits = W_{L+1} h_L + b_{L+1}

Inputs are images `[B, H, W, C]` (uint8 or float) or flat features `[B, P]`; uint8 pixels are
scaled to [0, 1] here so every data pipeline can stay uint8 on the host.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh, "silu": jax.nn.silu}


def to_float(x: jax.Array) -> jax.Array:
  """uint8 pixels → float32 in [0, 1]; float inputs pass through unchanged."""
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


class MLP(nnx.Module):
  """`in_features → hidden[0] → … → hidden[-1] → num_classes`, with optional BatchNorm/dropout."""

  def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (512, 256),
               *, activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
               rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
    widths = [in_features, *hidden]
    self.in_features = in_features
    self.act = ACTIVATIONS[activation]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.norms = nnx.List([nnx.BatchNorm(w, momentum=0.9, rngs=rngs) for w in hidden]
                          if batch_norm else [])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h_BP = to_float(x).reshape(x.shape[0], -1)
    if h_BP.shape[1] != self.in_features:
      raise ValueError(f"MLP expects {self.in_features} input features per example, got input "
                       f"of shape {x.shape} ({h_BP.shape[1]} features)")
    for i, layer in enumerate(self.layers):
      h_BP = layer(h_BP)                                      # W_l h + b_l
      if self.norms:
        h_BP = self.norms[i](h_BP)                            # BatchNorm before φ (1502.03167)
      h_BP = self.dropout(self.act(h_BP))
    return self.head(h_BP)                                    # [B, C] logits
