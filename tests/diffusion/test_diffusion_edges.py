"""Sobel magnitude against hand values on a ramp and a step, edge maps, and the edge F1's
identities and tolerance behaviour."""

import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import edges


def _image(rows):
  return jnp.asarray(np.asarray(rows, np.float32)[None, :, :, None])


def test_sobel_on_a_ramp_and_a_step_matches_hand_values():
  # ramp x[i, j] = j: interior G_x = (1 + 2 + 1) · (x[j+1] − x[j−1]) = 4 · 2 = 8, G_y = 0; at
  # the left / right border the replicated column halves the difference: 4.
  ramp = _image(np.tile(np.arange(6, dtype=np.float32), (5, 1)))
  np.testing.assert_allclose(edges.sobel(ramp)[0, :, :, 0],
                             np.tile([4.0, 8, 8, 8, 8, 4], (5, 1)), atol=1e-6)
  # vertical step 0 | 1 between columns 2 and 3: magnitude 4 on both sides of it, 0 elsewhere
  step = _image(np.tile([0.0, 0, 0, 1, 1, 1], (4, 1)))
  np.testing.assert_allclose(edges.sobel(step)[0, :, :, 0],
                             np.tile([0.0, 0, 4, 4, 0, 0], (4, 1)), atol=1e-6)
  # the same step turned horizontal: G_y carries it, same magnitudes
  np.testing.assert_allclose(edges.sobel(jnp.swapaxes(step, 1, 2))[0, :, :, 0],
                             np.tile([0.0, 0, 4, 4, 0, 0], (4, 1)).T, atol=1e-6)
  # diagonal gradient x = i + j: G_x = G_y = 8 inside, |G| = 8√2; a constant image gives 0
  diag = _image(np.add.outer(np.arange(5.0), np.arange(5.0)))
  assert float(edges.sobel(diag)[0, 2, 2, 0]) == pytest.approx(8 * np.sqrt(2), rel=1e-6)
  assert float(jnp.abs(edges.sobel(jnp.full((2, 5, 5, 3), 0.7))).max()) == 0.0


def test_sobel_uses_the_channel_mean_and_rows_are_independent():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 7, 3)), jnp.float32)
  np.testing.assert_allclose(edges.sobel(x), edges.sobel(x.mean(-1, keepdims=True)), atol=1e-5)
  np.testing.assert_allclose(edges.sobel(x[1:2]), edges.sobel(x)[1:2], atol=1e-6)


def test_edge_map_thresholds_the_magnitude():
  step = _image(np.tile([-1.0, -1, -1, 1, 1, 1], (4, 1)))   # a −1 → 1 step: magnitude 8
  m = edges.edge_map(step, 3.0)
  assert m.shape == (1, 4, 6, 1) and m.dtype == jnp.float32
  np.testing.assert_array_equal(m[0, :, :, 0], np.tile([0.0, 0, 1, 1, 0, 0], (4, 1)))
  assert float(edges.edge_map(step, 8.0).sum()) == 0.0          # strictly above the threshold
  with pytest.raises(ValueError, match="threshold"):
    edges.edge_map(step, -1.0)


def _line(col, h=8, w=8):
  m = np.zeros((1, h, w, 1), np.float32)
  m[0, :, col] = 1
  return m


def test_edge_f1_identity_tolerance_and_empty_maps():
  rng = np.random.default_rng(1)
  maps = (rng.random((4, 8, 8, 1)) < 0.2).astype(np.float32)
  np.testing.assert_array_equal(edges.edge_f1(maps, maps, tolerance=0), np.ones(4))
  # a line moved by one column: no exact hit, but within 1 px every pixel matches both ways
  a, b = _line(3), _line(4)
  assert float(edges.edge_f1(a, b, tolerance=0)[0]) == 0.0
  assert float(edges.edge_f1(a, b, tolerance=1)[0]) == 1.0
  assert float(edges.edge_f1(a, _line(5), tolerance=1)[0]) == 0.0    # two columns: out of reach
  # a prediction with the target line and a second one: P = 1/2, R = 1 ⇒ F1 = 2/3
  assert float(edges.edge_f1(a + _line(6), a, tolerance=0)[0]) == pytest.approx(2 / 3)
  # rows are scored separately; empty vs empty agrees, empty vs non-empty scores 0
  empty = np.zeros_like(a)
  f1 = edges.edge_f1(np.concatenate([a, empty, empty]), np.concatenate([b, empty, a]), 1)
  np.testing.assert_allclose(f1, [1.0, 1.0, 0.0])


def test_edge_f1_bad_input_one_line():
  a = _line(3)
  with pytest.raises(ValueError, match="only 0 and 1"):
    edges.edge_f1(a * 0.5, a)
  with pytest.raises(ValueError, match="differ in shape"):
    edges.edge_f1(a, _line(3, w=9))
  with pytest.raises(ValueError, match="tolerance"):
    edges.edge_f1(a, a, tolerance=-1)
  with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
    edges.edge_f1(a[..., 0], a[..., 0])
