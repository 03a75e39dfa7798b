"""Exact minibatch OT coupling (diffusion/ot_coupling.py, 2302.00482): a permutation, never
worse than the identity pairing, equal to brute force for small B, equal to sorting in 1-D."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import ot_coupling


def cost(noise, data, perm):
  n = np.asarray(noise, np.float64).reshape(len(noise), -1)
  d = np.asarray(data, np.float64).reshape(len(data), -1)
  return float(np.sum((n - d[np.asarray(perm)]) ** 2))


def draw(seed, shape):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, shape), 2.0 + jax.random.normal(k2, shape) * 0.5


def test_permutation_no_worse_than_identity_jitted_any_rank():
  """[B, H, W, C] inputs, under jit: perm is int32, a permutation, with cost ≤ identity's."""
  noise, data = draw(0, (64, 3, 3, 2))
  perm = jax.jit(ot_coupling.ot_permutation)(noise, data)
  assert perm.dtype == jnp.int32
  np.testing.assert_array_equal(np.sort(np.asarray(perm)), np.arange(64))
  assert cost(noise, data, perm) < cost(noise, data, np.arange(64)) - 1.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_brute_force_small_batch(seed):
  """B = 6: the minimal cost over all 720 permutations."""
  noise, data = draw(seed, (6, 2))
  perm = ot_coupling.ot_permutation(noise, data)
  brute = min(cost(noise, data, p) for p in itertools.permutations(range(6)))
  np.testing.assert_allclose(cost(noise, data, perm), brute, rtol=1e-6)


def test_one_d_equals_sorting():
  """In 1-D the squared-cost OT plan is monotone: the k-th smallest noise goes to the k-th
  smallest data point."""
  noise, data = draw(4, (50, 1))
  perm = np.asarray(ot_coupling.ot_permutation(noise, data))
  n, d = np.asarray(noise)[:, 0], np.asarray(data)[:, 0]
  expect = np.empty(50, int)
  expect[np.argsort(n)] = np.argsort(d)
  np.testing.assert_array_equal(perm, expect)


def test_couple_reorders_noise_onto_data():
  """couple("ot") returns noise' with (noise'[i], data[i]) the OT pairs; "independent" is the
  identity; both keep the multiset of noise points."""
  noise, data = draw(5, (16, 2))
  perm = np.asarray(ot_coupling.ot_permutation(noise, data))
  paired = np.asarray(jax.jit(lambda a, b: ot_coupling.couple("ot", a, b))(noise, data))
  np.testing.assert_allclose(paired[perm], noise)       # noise i sits at data perm[i]
  np.testing.assert_allclose(cost(paired, data, np.arange(16)), cost(noise, data, perm), rtol=1e-6)
  np.testing.assert_array_equal(ot_coupling.couple("independent", noise, data), noise)


def test_vmap_over_independent_batches():
  noise, data = draw(6, (3, 8, 2))
  perms = jax.vmap(ot_coupling.ot_permutation)(noise, data)
  for i in range(3):
    np.testing.assert_array_equal(perms[i], ot_coupling.ot_permutation(noise[i], data[i]))


def test_bad_input_one_line():
  noise, data = draw(7, (4, 2))
  with pytest.raises(ValueError, match=r"^Unknown coupling 'sinkhorn'; valid choices: "
                                       r"independent, ot\.$"):
    ot_coupling.couple("sinkhorn", noise, data)
  with pytest.raises(ValueError, match=r"one \[B, \.\.\.\] shape"):
    ot_coupling.ot_permutation(noise, data[:3])
