"""Clipping by value and by global norm equals optax's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genfm.foundations import clipping


def _grads(scale):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": scale * jax.random.normal(k1, (4, 3)), "b": scale * jax.random.normal(k2, (3,))}


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_matches_optax(scale):
  g = _grads(scale)
  for ours, ref in [(clipping.clip_by_value(0.5), optax.clip(0.5)),
                    (clipping.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0))]:
    out, _ = ours.update(g, ours.init(g))
    expected, _ = ref.update(g, ref.init(g))
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(clipping.global_norm(g), optax.tree.norm(g), rtol=1e-6)


def test_global_norm_clip_keeps_direction():
  g = _grads(100.0)
  out, _ = clipping.clip_by_global_norm(2.0).update(g, optax.EmptyState())
  np.testing.assert_allclose(clipping.global_norm(out), 2.0, rtol=1e-6)
  cos = (jnp.vdot(out["w"], g["w"]) + jnp.vdot(out["b"], g["b"])) / (
      clipping.global_norm(out) * clipping.global_norm(g))
  np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
  small = _grads(1e-3)
  out, _ = clipping.clip_by_global_norm(2.0).update(small, optax.EmptyState())
  chex.assert_trees_all_equal(out, small)  # below the threshold: untouched
  zero = jax.tree.map(jnp.zeros_like, small)
  out, _ = clipping.clip_by_global_norm(2.0).update(zero, optax.EmptyState())
  assert np.all(np.isfinite(out["w"]))  # no 0/0


def test_value_clip_bounds():
  out, _ = clipping.clip_by_value(0.1).update(_grads(10.0), optax.EmptyState())
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(out)) <= np.float32(0.1)


def test_bad_thresholds():
  with pytest.raises(ValueError, match="max_norm must be > 0"):
    clipping.clip_by_global_norm(0.0)
  with pytest.raises(ValueError, match="max_delta must be > 0"):
    clipping.clip_by_value(-1.0)
