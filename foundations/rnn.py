"""Recurrent cells (Elman, GRU, LSTM), a masked scan over time, bidirectional and stacked RNNs.

Cells follow the flax NNX convention `cell(carry, x_BI) -> (new_carry, y_BD)`; I is the cell's
input width, D its hidden width. Every cell holds one input projection `x_proj` (I → kD, with
the bias) and one recurrent projection `h_proj` (D → kD, no bias; the two are summed, so one bias
suffices), gates stacked in that order along the output axis:
  RNNCell   Elman 1990:                 h' = tanh(W_x x + W_h h + b)               k = 1
  GRUCell   Cho et al., arXiv:1406.1078: gates r, z; candidate h̃                  k = 3
  LSTMCell  Hochreiter & Schmidhuber 1997, forget gate of Gers et al. 2000: i, f, g, o  k = 4
Initialisation: input kernels LeCun-normal, recurrent kernels orthogonal (Saxe et al.,
arXiv:1312.6120: singular values 1, so at init the linear part of the recurrence neither grows
nor shrinks a state), biases zero except the LSTM forget gate's, which is 1 (Jozefowicz et al.
2015, "An Empirical Exploration of Recurrent Network Architectures", Sec. 2.2: with b_f = 0
the forget gate starts at σ(0) = 1/2, so c is halved every step and gradients through c decay
like 2^−k; b_f = 1 keeps f ≈ 0.73 and lets long-range gradient through from the start).

Parameter counts (I inputs, D hidden): RNN ID + D² + D; GRU 3(ID + D² + D); LSTM 4(ID + D² + D).

`scan` runs a cell over [B, T, I] with one `jax.lax.scan`; with a right-padded mask the carry is
held at pads, so every row's final carry is its state after its OWN last token, in either
direction. The carry is kept in fp32: it accumulates over T steps, and bf16's 8 bits of mantissa
would drift the LSTM's c over a few hundred steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Carry = Any  # jax.Array [B, D] (RNN, GRU) or a tuple (c_BD, h_BD) (LSTM)


def _projections(in_features: int, hidden_features: int, k: int, rngs: nnx.Rngs):
  x_proj = nnx.Linear(in_features, k * hidden_features, use_bias=True,
                      kernel_init=nnx.initializers.lecun_normal(), rngs=rngs)
  h_proj = nnx.Linear(hidden_features, k * hidden_features, use_bias=False,
                      kernel_init=nnx.initializers.orthogonal(), rngs=rngs)
  return x_proj, h_proj


def _check_sizes(in_features: int, hidden_features: int):
  if in_features < 1 or hidden_features < 1:
    raise ValueError(f"RNN cell sizes must be positive, got in_features={in_features}, "
                     f"hidden_features={hidden_features}")


class RNNCell(nnx.Module):
  """Elman tanh cell: h' = tanh(W_x x + W_h h + b); the output is h'."""

  def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
    _check_sizes(in_features, hidden_features)
    self.in_features, self.hidden_features = in_features, hidden_features
    self.x_proj, self.h_proj = _projections(in_features, hidden_features, 1, rngs)

  def __call__(self, carry: jax.Array, x_BI: jax.Array) -> tuple[jax.Array, jax.Array]:
    h_BD = jnp.tanh(self.x_proj(x_BI) + self.h_proj(carry))
    return h_BD, h_BD

  def initialize_carry(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, self.hidden_features), jnp.float32)


class GRUCell(nnx.Module):
  """Gated recurrent unit, eqs. (5)–(8) of Cho et al., arXiv:1406.1078 (with biases):
      r  = σ(W_r x + U_r h + b_r)                 eq. (5)
      z  = σ(W_z x + U_z h + b_z)                 eq. (6)
      h̃  = tanh(W x + U (r ⊙ h) + b)             eq. (8)
      h' = z ⊙ h + (1 − z) ⊙ h̃                   eq. (7)
  Convention: z is the KEEP gate — z ≡ 1 copies h unchanged (the paper's, flax's and PyTorch's).

  `reset_after=True` is the cuDNN / flax `nnx.GRUCell` variant h̃ = tanh(W x + r ⊙ (U h) + b):
  the reset gate scales U h instead of h, so all three recurrent products come from one matmul
  [D, 3D]. Same parameters, different function unless r ≡ 1.
  """

  def __init__(self, in_features: int, hidden_features: int, *, reset_after: bool = False,
               rngs: nnx.Rngs):
    _check_sizes(in_features, hidden_features)
    self.in_features, self.hidden_features = in_features, hidden_features
    self.reset_after = reset_after
    self.x_proj, self.h_proj = _projections(in_features, hidden_features, 3, rngs)

  def __call__(self, carry: jax.Array, x_BI: jax.Array) -> tuple[jax.Array, jax.Array]:
    h_BD, D = carry, self.hidden_features
    xr, xz, xn = jnp.split(self.x_proj(x_BI), 3, axis=-1)
    U_D3D = self.h_proj.kernel[...]
    if self.reset_after:
      hr, hz, hn = jnp.split(h_BD @ U_D3D, 3, axis=-1)
      r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)       # eqs. (5), (6)
      cand_BD = jnp.tanh(xn + r * hn)                               # r ⊙ (U h): cuDNN variant
    else:
      hr, hz = jnp.split(h_BD @ U_D3D[:, :2 * D], 2, axis=-1)
      r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)       # eqs. (5), (6)
      cand_BD = jnp.tanh(xn + (r * h_BD) @ U_D3D[:, 2 * D:])        # eq. (8) of 1406.1078
    new_h = z * h_BD + (1.0 - z) * cand_BD                          # eq. (7) of 1406.1078
    return new_h, new_h

  def initialize_carry(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, self.hidden_features), jnp.float32)


class LSTMCell(nnx.Module):
  """LSTM of Hochreiter & Schmidhuber 1997 with the forget gate of Gers, Schmidhuber & Cummins
  2000 ("Learning to forget"), no peepholes; carry = (c, h), output h':
      i, f, o = σ(W_{i,f,o} x + U_{i,f,o} h + b_{i,f,o}),   g = tanh(W_g x + U_g h + b_g)
      c' = f ⊙ c + i ⊙ g,    h' = o ⊙ tanh(c')
  Gate order along the 4D axis is i, f, g, o (as flax's `OptimizedLSTMCell`). b_f starts at 1
  (Jozefowicz et al. 2015; see the module docstring for why).
  """

  def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0,
               rngs: nnx.Rngs):
    _check_sizes(in_features, hidden_features)
    self.in_features, self.hidden_features = in_features, hidden_features
    self.x_proj, self.h_proj = _projections(in_features, hidden_features, 4, rngs)
    D = hidden_features
    self.x_proj.bias[...] = self.x_proj.bias[...].at[D:2 * D].set(forget_bias)

  def __call__(self, carry: tuple[jax.Array, jax.Array], x_BI: jax.Array):
    c_BD, h_BD = carry
    i, f, g, o = jnp.split(self.x_proj(x_BI) + self.h_proj(h_BD), 4, axis=-1)
    i, f, o, g = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(g)
    new_c = f * c_BD + i * g        # the constant error carousel, gated by f (Gers et al. 2000)
    new_h = o * jnp.tanh(new_c)
    return (new_c, new_h), new_h

  def initialize_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
    z = jnp.zeros((batch_size, self.hidden_features), jnp.float32)
    return (z, z)


CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}


def make_cell(kind: str, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
  """A cell by name: 'rnn' (Elman tanh), 'gru' or 'lstm'."""
  if kind not in CELLS:
    raise ValueError(f"unknown RNN cell {kind!r}; valid: {', '.join(CELLS)}")
  return CELLS[kind](in_features, hidden_features, rngs=rngs)


def num_params(kind: str, in_features: int, hidden_features: int) -> int:
  """Hand formula: gates × (ID + D² + D); gates = 1 (RNN), 3 (GRU), 4 (LSTM)."""
  gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
  I, D = in_features, hidden_features
  return gates * (I * D + D * D + D)


def scan(cell, x_BTI: jax.Array, carry: Carry | None = None, *, mask_BT: jax.Array | None = None,
         reverse: bool = False) -> tuple[Carry, jax.Array]:
  """Runs `cell` over time with one `jax.lax.scan`; returns (final_carry, y_BTD).

  mask_BT: 1 at valid steps, 0 at pads (sequences right-padded). At a pad the carry is held and
  y is 0, so `final_carry` is each row's state after its own last valid token. `reverse=True`
  runs from t = T−1 down to 0 (y stays in input order); the right pads then come first and hold
  the initial carry, so each row's backward pass starts at its own last valid token.
  """
  if x_BTI.ndim != 3 or x_BTI.shape[-1] != cell.in_features:
    raise ValueError(f"scan expects x of shape [B, T, {cell.in_features}], got {x_BTI.shape}")
  B, T, _ = x_BTI.shape
  if mask_BT is not None and mask_BT.shape != (B, T):
    raise ValueError(f"mask_BT must have shape {(B, T)} like x's first two axes, "
                     f"got {mask_BT.shape}")
  if carry is None:
    carry = cell.initialize_carry(B)
  graphdef, state = nnx.split(cell)
  x_TBI = jnp.swapaxes(x_BTI, 0, 1)
  m_TB = (jnp.ones((T, B), bool) if mask_BT is None else jnp.swapaxes(mask_BT, 0, 1) > 0)

  def step(carry, xm):
    x_BI, m_B = xm
    new_carry, y_BD = nnx.merge(graphdef, state)(carry, x_BI)
    keep = lambda new, old: jnp.where(m_B[:, None], new, old)   # hold the carry at pads
    new_carry = jax.tree.map(keep, new_carry, carry)
    return new_carry, jnp.where(m_B[:, None], y_BD, 0.0)

  final, y_TBD = jax.lax.scan(step, carry, (x_TBI, m_TB), reverse=reverse)
  return final, jnp.swapaxes(y_TBD, 0, 1)


class Bidirectional(nnx.Module):
  """Two cells over the same sequence, one forward, one backward (Schuster & Paliwal 1997);
  y_t = [→h_t ; ←h_t], so y is [B, T, D_fwd + D_bwd]."""

  def __init__(self, forward_cell, backward_cell):
    if forward_cell.in_features != backward_cell.in_features:
      raise ValueError(f"forward and backward cells must read the same input width, got "
                       f"{forward_cell.in_features} and {backward_cell.in_features}")
    self.forward_cell, self.backward_cell = forward_cell, backward_cell
    self.in_features = forward_cell.in_features
    self.hidden_features = forward_cell.hidden_features + backward_cell.hidden_features

  def __call__(self, x_BTI: jax.Array, *, mask_BT: jax.Array | None = None):
    fwd, y_fwd = scan(self.forward_cell, x_BTI, mask_BT=mask_BT)
    bwd, y_bwd = scan(self.backward_cell, x_BTI, mask_BT=mask_BT, reverse=True)
    return (fwd, bwd), jnp.concatenate([y_fwd, y_bwd], axis=-1)


class StackedRNN(nnx.Module):
  """`num_layers` cells of one kind, layer ℓ+1 reading layer ℓ's outputs, with dropout between
  layers (not on the last output; Zaremba et al., arXiv:1409.2329, drop only non-recurrent
  connections). `__call__` returns (per-layer final carries, last layer's y_BTD)."""

  def __init__(self, kind: str, in_features: int, hidden_features: int, num_layers: int, *,
               dropout_rate: float = 0.0, rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"num_layers must be ≥ 1, got {num_layers}")
    widths = [in_features] + [hidden_features] * num_layers
    self.in_features, self.hidden_features = in_features, hidden_features
    self.cells = nnx.List([make_cell(kind, a, b, rngs=rngs)
                           for a, b in zip(widths[:-1], widths[1:])])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def initialize_carry(self, batch_size: int) -> list:
    return [cell.initialize_carry(batch_size) for cell in self.cells]

  def __call__(self, x_BTI: jax.Array, carries: Sequence[Carry] | None = None, *,
               mask_BT: jax.Array | None = None):
    if carries is None:
      carries = [None] * len(self.cells)
    if len(carries) != len(self.cells):
      raise ValueError(f"expected {len(self.cells)} carries (one per layer), got {len(carries)}")
    finals, h = [], x_BTI
    for layer, (cell, carry) in enumerate(zip(self.cells, carries)):
      if layer > 0:
        h = self.dropout(h)
      final, h = scan(cell, h, carry, mask_BT=mask_BT)
      finals.append(final)
    return finals, h
