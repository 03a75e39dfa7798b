"""Recurrent cells (Elman, GRU of 1406.1078, LSTM with a forget gate): the masked scan against a
Python loop, the gates' keep-state limits, flax's own cells with the same weights, ragged masks
and reversed padded rows, and parameter counts against the hand formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import rnn

I, D = 3, 5
KINDS = ("rnn", "gru", "lstm")


def _x(B=2, T=6, seed=1):
  return jax.random.normal(jax.random.key(seed), (B, T, I))


def _random_carry(cell, B, seed=7):
  """A non-zero carry, so 'keeps h' cannot pass by keeping zeros."""
  zero = cell.initialize_carry(B)
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(zero)))
  leaves = [jax.random.normal(k, z.shape) for k, z in zip(keys, jax.tree.leaves(zero))]
  return jax.tree.unflatten(jax.tree.structure(zero), leaves)


def _close(a, b, **kw):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **kw), a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_scan_equals_a_python_loop_over_the_cell(kind):
  cell = rnn.make_cell(kind, I, D, rngs=nnx.Rngs(0))
  x = _x()
  carry = _random_carry(cell, 2)
  final, y = jax.jit(lambda x, c: rnn.scan(cell, x, c))(x, carry)
  c, ys = carry, []
  for t in range(x.shape[1]):
    c, y_t = cell(c, x[:, t])
    ys.append(y_t)
  assert y.shape == (2, 6, D)
  np.testing.assert_allclose(y[:, 0], ys[0], atol=1e-5)      # first step
  np.testing.assert_allclose(y[:, -1], ys[-1], atol=1e-5)    # last step
  np.testing.assert_allclose(y, jnp.stack(ys, 1), atol=1e-5)
  _close(final, c, atol=1e-5)


def test_gru_with_z_one_keeps_h():
  """h' = z ⊙ h + (1 − z) ⊙ h̃ (eq. (7) of 1406.1078): z ≡ 1 copies h; z ≡ 0 replaces it."""
  cell = rnn.GRUCell(I, D, rngs=nnx.Rngs(0))
  h = _random_carry(cell, 4)
  x = jax.random.normal(jax.random.key(2), (4, I))
  b = cell.x_proj.bias[...]
  cell.x_proj.bias[...] = b.at[D:2 * D].set(50.0)             # z = σ(≈50) = 1
  np.testing.assert_allclose(cell(h, x)[0], h, atol=1e-6)
  cell.x_proj.bias[...] = b.at[D:2 * D].set(-50.0)            # z = 0: h' = h̃ ∈ (−1, 1)
  new_h = cell(h, x)[0]
  assert float(jnp.max(jnp.abs(new_h - h))) > 0.1 and float(jnp.max(jnp.abs(new_h))) < 1


def test_lstm_with_f_one_and_i_zero_keeps_c():
  """c' = f ⊙ c + i ⊙ g: f = 1, i = 0 (forced through the biases) copy c exactly."""
  cell = rnn.LSTMCell(I, D, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(cell.x_proj.bias[D:2 * D], 1.0)    # b_f init (Jozefowicz 2015)
  np.testing.assert_allclose(cell.x_proj.bias[:D], 0.0)
  c, h = _random_carry(cell, 4)
  x = jax.random.normal(jax.random.key(2), (4, I))
  b = jnp.zeros(4 * D).at[D:2 * D].set(50.0).at[:D].set(-50.0)  # i ≈ 0, f ≈ 1
  cell.x_proj.bias[...] = b
  (new_c, new_h), y = cell((c, h), x)
  np.testing.assert_allclose(new_c, c, atol=1e-6)
  np.testing.assert_allclose(y, new_h)
  cell.x_proj.bias[...] = b.at[D:2 * D].set(-50.0)               # f = 0: c is forgotten
  np.testing.assert_allclose(cell((c, h), x)[0][0], 0.0, atol=1e-6)


def _copy(dst: nnx.Linear, kernel, bias=None):
  dst.kernel[...] = kernel
  if bias is not None:
    dst.bias[...] = bias


def test_cells_match_flax_cells_with_the_same_weights():
  """Weights mapped explicitly. Convention differences: flax's SimpleCell and GRUCell put the
  bias on the input projection like ours; OptimizedLSTMCell puts it on the recurrent one (the
  sum is the same); flax's GRU is the reset-after variant (r ⊙ (U h)), so it equals ours with
  `reset_after=True` and differs from the paper's eq. (8) form. z keeps h in both."""
  x, rngs = _x(B=3, T=1)[:, 0], nnx.Rngs(3)
  # Elman.
  ours, ref = rnn.RNNCell(I, D, rngs=rngs), nnx.SimpleCell(I, D, rngs=rngs)
  _copy(ref.dense_i, ours.x_proj.kernel[...], ours.x_proj.bias[...])
  _copy(ref.dense_h, ours.h_proj.kernel[...])
  h = _random_carry(ours, 3)
  _close(ours(h, x), ref(h, x), atol=1e-6)
  # GRU.
  ours = rnn.GRUCell(I, D, reset_after=True, rngs=rngs)
  ours.x_proj.bias[...] = jax.random.normal(jax.random.key(4), (3 * D,))
  ref = nnx.GRUCell(I, D, rngs=rngs)
  _copy(ref.dense_i, ours.x_proj.kernel[...], ours.x_proj.bias[...])
  _copy(ref.dense_h, ours.h_proj.kernel[...])
  h = _random_carry(ours, 3)
  _close(ours(h, x), ref(h, x), atol=1e-6)
  paper = rnn.GRUCell(I, D, rngs=rngs)
  nnx.update(paper, nnx.state(ours))
  assert float(jnp.max(jnp.abs(paper(h, x)[0] - ref(h, x)[0]))) > 1e-3
  # LSTM, gates i, f, g, o along 4D in both.
  ours, ref = rnn.LSTMCell(I, D, rngs=rngs), nnx.OptimizedLSTMCell(I, D, rngs=rngs)
  _copy(ref.dense_i, ours.x_proj.kernel[...])
  _copy(ref.dense_h, ours.h_proj.kernel[...], ours.x_proj.bias[...])
  carry = _random_carry(ours, 3)
  _close(ours(carry, x), ref(carry, x), atol=1e-6)


@pytest.mark.parametrize("kind", ("gru", "lstm"))
def test_ragged_mask_final_carry_equals_the_unpadded_row(kind):
  cell = rnn.make_cell(kind, I, D, rngs=nnx.Rngs(0))
  lengths = [6, 2, 4]
  x = _x(B=3)
  mask = jnp.arange(6)[None, :] < jnp.array(lengths)[:, None]
  final, y = rnn.scan(cell, x, mask_BT=mask)
  for b, L in enumerate(lengths):
    row_final, row_y = rnn.scan(cell, x[b:b + 1, :L])
    _close(jax.tree.map(lambda a: a[b:b + 1], final), row_final, atol=1e-5)
    np.testing.assert_allclose(y[b, :L], row_y[0], atol=1e-5)
    np.testing.assert_array_equal(y[b, L:], 0.0)


@pytest.mark.parametrize("kind", ("lstm",))
def test_reverse_with_padding_equals_reversing_each_rows_valid_part(kind):
  cell = rnn.make_cell(kind, I, D, rngs=nnx.Rngs(0))
  lengths = [3, 6]
  x = _x(B=2)
  mask = jnp.arange(6)[None, :] < jnp.array(lengths)[:, None]
  final, y = rnn.scan(cell, x, mask_BT=mask, reverse=True)
  for b, L in enumerate(lengths):
    row_final, row_y = rnn.scan(cell, x[b:b + 1, :L][:, ::-1])
    _close(jax.tree.map(lambda a: a[b:b + 1], final), row_final, atol=1e-5)
    np.testing.assert_allclose(y[b, :L], row_y[0, ::-1], atol=1e-5)   # y in input order
    np.testing.assert_array_equal(y[b, L:], 0.0)


def test_bidirectional_concatenates_forward_then_backward():
  fwd, bwd = rnn.LSTMCell(I, D, rngs=nnx.Rngs(0)), rnn.GRUCell(I, 2, rngs=nnx.Rngs(1))
  bi = rnn.Bidirectional(fwd, bwd)
  x, mask = _x(B=2), jnp.array([[1] * 6, [1] * 3 + [0] * 3])
  (cf, cb), y = bi(x, mask_BT=mask)
  assert y.shape == (2, 6, D + 2)
  _close((cf, y[..., :D]), rnn.scan(fwd, x, mask_BT=mask))
  _close((cb, y[..., D:]), rnn.scan(bwd, x, mask_BT=mask, reverse=True))


def test_stacked_rnn_composes_layers_and_drops_only_in_training():
  stack = rnn.StackedRNN("lstm", I, D, 2, dropout_rate=0.5, rngs=nnx.Rngs(0))
  x = _x()
  stack.eval()
  finals, y = stack(x)
  c0, h = rnn.scan(stack.cells[0], x)
  c1, y_ref = rnn.scan(stack.cells[1], h)
  _close((finals, y), ([c0, c1], y_ref), atol=1e-6)
  stack.train()
  assert float(jnp.max(jnp.abs(stack(x)[1] - y))) > 1e-3


def test_parameter_counts_match_the_hand_formulas():
  count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
  shapes = lambda f: jax.eval_shape(f)      # shapes only: no orthogonal-init QR is compiled
  for kind, gates in (("rnn", 1), ("gru", 3), ("lstm", 4)):
    cell = shapes(lambda: rnn.make_cell(kind, 7, 11, rngs=nnx.Rngs(0)))
    assert count(cell) == gates * (7 * 11 + 11 * 11 + 11) == rnn.num_params(kind, 7, 11), kind
    stack = shapes(lambda: rnn.StackedRNN(kind, 7, 11, 3, rngs=nnx.Rngs(0)))
    assert count(stack) == rnn.num_params(kind, 7, 11) + 2 * rnn.num_params(kind, 11, 11)
    bi = shapes(lambda: rnn.Bidirectional(rnn.make_cell(kind, 7, 11, rngs=nnx.Rngs(0)),
                                          rnn.make_cell(kind, 7, 4, rngs=nnx.Rngs(1))))
    assert count(bi) == rnn.num_params(kind, 7, 11) + rnn.num_params(kind, 7, 4)
  assert rnn.num_params("lstm", 7, 11) == 4 * (7 * 11 + 11 * 11 + 11) == 836


def test_bad_inputs_raise_one_clear_line():
  cell = rnn.LSTMCell(I, D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
    rnn.scan(cell, jnp.zeros((2, 4, 9)))
  with pytest.raises(ValueError, match="mask_BT"):
    rnn.scan(cell, jnp.zeros((2, 4, I)), mask_BT=jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="unknown RNN cell"):
    rnn.make_cell("transformer", I, D, rngs=nnx.Rngs(0))
