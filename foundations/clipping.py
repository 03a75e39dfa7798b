"""Gradient clipping by value and by global norm, as `optax.GradientTransformation`s.

By value: g ← clip(g, −δ, δ) elementwise (changes the direction of g).
By global norm (Pascanu, Mikolov & Bengio 1211.5063, Algorithm 1): with ‖g‖ the l2 norm of all
leaves together, g ← g · c/‖g‖ when ‖g‖ ≥ c, so the direction is kept and only the length capped.
Both are stateless and go first in `optax.chain(clip, optimizer)`; each equals optax's
`clip` / `clip_by_global_norm`.
"""

import jax
import jax.numpy as jnp
import optax


def global_norm(tree) -> jax.Array:
  """‖g‖ = √(Σ_leaves Σ_i g_i²), the norm of all parameters as one flat vector."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_value(max_delta: float) -> optax.GradientTransformation:
  if max_delta <= 0:
    raise ValueError(f"max_delta must be > 0, got {max_delta}")

  def update(grads, state, params=None):
    del params
    return jax.tree.map(lambda g: jnp.clip(g, -max_delta, max_delta), grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  if max_norm <= 0:
    raise ValueError(f"max_norm must be > 0, got {max_norm}")

  def update(grads, state, params=None):
    del params
    norm = global_norm(grads)
    # Algorithm 1 of 1211.5063: if ‖g‖ ≥ c then g ← c g/‖g‖. Written (g/‖g‖)·c like optax, so the
    # division is never by 0 on the branch that is kept (‖g‖ < c includes ‖g‖ = 0).
    clipped = jax.tree.map(lambda g: jnp.where(norm < max_norm, g, (g / norm) * max_norm), grads)
    return clipped, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
