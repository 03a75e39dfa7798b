"""Exact minibatch optimal-transport coupling for conditional flow matching (OT-CFM).

Tong et al. 2023, arXiv:2302.00482, Sec. 3.2 / Alg. 1 ("minibatch OT"): within a batch of B
noise and B data points, draw the pairs from the OT plan π* for the squared Euclidean cost
instead of the independent product. With uniform weights 1/B on both sides the OT linear
program has a permutation matrix among its optimal vertices (Birkhoff–von Neumann), so π* is
an assignment problem, solved exactly here by scipy's linear_sum_assignment (Jonker–Volgenant)
on the host through `jax.pure_callback`, which keeps the call jit-able. torchcfm samples pairs
from π* with replacement; we take the permutation itself (every point used once, the same plan).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

COUPLINGS = ("independent", "ot")


def check_coupling(coupling: str) -> None:
  if coupling not in COUPLINGS:
    raise ValueError(f"Unknown coupling {coupling!r}; valid choices: {', '.join(COUPLINGS)}.")


def cost_matrix(noise: jax.Array, data: jax.Array) -> jax.Array:
  """C[i, j] = ‖noise_i − data_j‖² over the flattened non-batch dims, [B, B] in fp32."""
  n = noise.reshape(noise.shape[0], -1).astype(jnp.float32)
  d = data.reshape(data.shape[0], -1).astype(jnp.float32)
  # Direct differences, not ‖a‖² + ‖b‖² − 2ab: the expansion cancels badly for close points.
  return jnp.sum(jnp.square(n[:, None, :] - d[None, :, :]), axis=-1)


def _assign(cost_BB: np.ndarray) -> np.ndarray:
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  rows, cols = linear_sum_assignment(np.asarray(cost_BB, np.float64))
  perm = np.empty(cost_BB.shape[0], np.int32)
  perm[rows] = cols
  return perm


def ot_permutation(noise: jax.Array, data: jax.Array) -> jax.Array:
  """perm_B (int32) minimising Σ_i ‖noise_i − data_{perm_i}‖² — the exact minibatch OT plan.

  noise, data: [B, ...] with the same shape; jit-able (host callback; no gradient flows).
  """
  if noise.shape != data.shape or noise.ndim < 1:
    raise ValueError(f"ot_permutation needs noise and data of one [B, ...] shape, got "
                     f"{noise.shape} and {data.shape}.")
  cost_BB = jax.lax.stop_gradient(cost_matrix(noise, data))
  out = jax.ShapeDtypeStruct((noise.shape[0],), jnp.int32)
  return jax.pure_callback(_assign, out, cost_BB, vmap_method="sequential")


def couple(coupling: str, noise: jax.Array, data: jax.Array) -> jax.Array:
  """The noise re-ordered so that (noise_out[i], data[i]) are the coupling's pairs: unchanged
  for "independent", noise[σ⁻¹] for the OT permutation σ (σ maps noise i to data σ_i)."""
  check_coupling(coupling)
  if coupling == "independent":
    return noise
  perm = ot_permutation(noise, data)
  inv = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
  return noise[inv]
