"""First-order optimizers written from their update rules as `optax.GradientTransformation`s.

Every optimizer here is a complete one (it includes the learning rate and the minus sign), so
`optax.apply_updates(params, updates)` performs θ ← θ + u. Conventions follow optax 0.2.x exactly,
so each matches its optax alias step for step; where optax differs from a paper or from PyTorch,
the comment at that line says so.

  SGD        θ ← θ − η g                                    (Robbins & Monro 1951)
  momentum   v ← g + μ v;  θ ← θ − η v                      (Polyak 1964; optax `trace`, v₀ = 0,
                                                             no dampening, = PyTorch)
  Nesterov   v ← g + μ v;  θ ← θ − η (g + μ v)              (Nesterov 1983, in the form of
                                                             Sutskever et al. ICML 2013, eq. (3–4))
  AdaGrad    G ← G + g²;   θ ← θ − η g / √(G + ε)           (Duchi et al. JMLR 2011; optax: G₀ = 0.1,
                                                             ε = 1e-7 inside the root)
  RMSprop    ν ← ρ ν + (1 − ρ) g²;  θ ← θ − η g / √(ν + ε)  (Tieleman & Hinton 2012, lecture 6.5;
                                                             optax: ν₀ = 0, ε inside the root,
                                                             PyTorch puts ε outside)
  Adam       m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
             m̂ = m / (1 − β₁ᵗ);  v̂ = v / (1 − β₂ᵗ);  θ ← θ − η m̂ / (√v̂ + ε)
                                                            (Kingma & Ba 1412.6980, Algorithm 1;
                                                             m₀ = v₀ = 0, ε outside the root)
  AdamW      θ ← θ − η (m̂ / (√v̂ + ε) + λ θ)                 (Loshchilov & Hutter 1711.05101,
                                                             Algorithm 2 line 12 with the schedule
                                                             multiplier folded into η, as optax
                                                             does: the decay is scaled by η)
`learning_rate` may be a float or a schedule `step -> η` (see `schedules.py`), evaluated at the
0-based step count like optax's `scale_by_learning_rate`.
"""

import inspect
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from genfm.foundations import errors

LearningRate = Union[float, Callable[[jax.Array], jax.Array]]


def _lr(learning_rate: LearningRate, count: jax.Array):
  return learning_rate(count) if callable(learning_rate) else learning_rate


def _inc(count: jax.Array) -> jax.Array:
  # Saturate instead of wrapping to negative at 2³¹ − 1 (optax's safe_increment).
  return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


class SgdState(NamedTuple):
  count: jax.Array  # [] int32: steps taken


class MomentumState(NamedTuple):
  count: jax.Array
  velocity: Any  # pytree like params


class AccumulatorState(NamedTuple):
  count: jax.Array
  accumulator: Any  # AdaGrad: Σ g²; RMSprop: EMA of g²


class AdamState(NamedTuple):
  count: jax.Array
  mu: Any  # first moment m
  nu: Any  # second moment v


def _zero_count():
  return jnp.zeros([], jnp.int32)


def sgd(learning_rate: LearningRate) -> optax.GradientTransformation:
  def init(params):
    del params
    return SgdState(_zero_count())

  def update(grads, state, params=None):
    del params
    lr = _lr(learning_rate, state.count)
    return jax.tree.map(lambda g: -lr * g, grads), SgdState(_inc(state.count))

  return optax.GradientTransformation(init, update)


def _heavy_ball(learning_rate: LearningRate, mu: float,
                use_nesterov: bool) -> optax.GradientTransformation:
  """Heavy-ball momentum; `use_nesterov` steps along g + μ v_new (a look-ahead)."""

  def init(params):
    return MomentumState(_zero_count(), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    lr = _lr(learning_rate, state.count)
    velocity = jax.tree.map(lambda g, v: g + mu * v, grads, state.velocity)  # v ← g + μv
    if use_nesterov:
      step = jax.tree.map(lambda g, v: g + mu * v, grads, velocity)  # g + μ v_new
    else:
      step = velocity
    updates = jax.tree.map(lambda s: -lr * s, step)
    return updates, MomentumState(_inc(state.count), velocity)

  return optax.GradientTransformation(init, update)


def momentum(learning_rate: LearningRate, momentum: float = 0.9) -> optax.GradientTransformation:
  return _heavy_ball(learning_rate, momentum, use_nesterov=False)


def nesterov(learning_rate: LearningRate, momentum: float = 0.9) -> optax.GradientTransformation:
  return _heavy_ball(learning_rate, momentum, use_nesterov=True)


def adagrad(learning_rate: LearningRate, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> optax.GradientTransformation:
  def init(params):
    return AccumulatorState(_zero_count(),
                            jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value),
                                         params))

  def update(grads, state, params=None):
    del params
    lr = _lr(learning_rate, state.count)
    acc = jax.tree.map(lambda g, a: g * g + a, grads, state.accumulator)  # G ← G + g²
    # optax zeroes the step where G = 0 (possible only with initial_accumulator_value = 0).
    updates = jax.tree.map(lambda g, a: -lr * (jnp.where(a > 0, jax.lax.rsqrt(a + eps), 0.0) * g),
                           grads, acc)
    return updates, AccumulatorState(_inc(state.count), acc)

  return optax.GradientTransformation(init, update)


def rmsprop(learning_rate: LearningRate, decay: float = 0.9,
            eps: float = 1e-8) -> optax.GradientTransformation:
  def init(params):
    return AccumulatorState(_zero_count(), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    lr = _lr(learning_rate, state.count)
    nu = jax.tree.map(lambda g, n: (1 - decay) * g * g + decay * n, grads, state.accumulator)
    updates = jax.tree.map(lambda g, n: -lr * (jax.lax.rsqrt(n + eps) * g), grads, nu)
    return updates, AccumulatorState(_inc(state.count), nu)

  return optax.GradientTransformation(init, update)


def _adam_direction(grads, state: AdamState, b1: float, b2: float, eps: float):
  mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, grads, state.mu)  # Alg. 1 of 1412.6980
  nu = jax.tree.map(lambda g, v: (1 - b2) * g * g + b2 * v, grads, state.nu)
  count = _inc(state.count)
  # Bias correction: m and v start at 0, so E[m_t] = (1 − β₁ᵗ) E[g]; dividing undoes the shrink.
  c1, c2 = 1 - b1**count, 1 - b2**count
  direction = jax.tree.map(
      lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps), mu, nu)
  return direction, AdamState(count, mu, nu)


def _adam_init(params):
  zeros = jax.tree.map(jnp.zeros_like, params)
  return AdamState(_zero_count(), zeros, jax.tree.map(jnp.zeros_like, params))


def adam(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> optax.GradientTransformation:
  def update(grads, state, params=None):
    del params
    lr = _lr(learning_rate, state.count)
    direction, state = _adam_direction(grads, state, b1, b2, eps)
    return jax.tree.map(lambda d: -lr * d, direction), state

  return optax.GradientTransformation(_adam_init, update)


def adamw(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4, mask: Any = None) -> optax.GradientTransformation:
  """Adam with decoupled weight decay: λθ is added to the Adam direction, not to the gradient,
  so it is not divided by √v̂ (the point of 1711.05101: L2 in Adam ≠ weight decay).

  `mask` (as optax's): None decays every parameter; else a pytree of Python bools shaped like
  params, or a function params → that pytree; False leaves take the plain Adam step.
  """

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("adamw needs params: call update(grads, state, params)")
    lr = _lr(learning_rate, state.count)
    direction, state = _adam_direction(grads, state, b1, b2, eps)
    if mask is None:
      updates = jax.tree.map(lambda d, p: -lr * (d + weight_decay * p), direction, params)
      return updates, state
    keep = mask(params) if callable(mask) else mask
    # The mask is static (Python bools), so undecayed leaves skip the λθ term entirely.
    updates = jax.tree.map(lambda d, p, k: -lr * (d + weight_decay * p) if k else -lr * d,
                           direction, params, keep)
    return updates, state

  return optax.GradientTransformation(_adam_init, update)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adagrad": adagrad,
    "rmsprop": rmsprop, "adam": adam, "adamw": adamw,
}


def get_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
  """`get_optimizer("adam", learning_rate=1e-3)`; unknown names or arguments list the valid ones."""
  if name not in OPTIMIZERS:
    raise errors.unknown_choice("optimizer", name, OPTIMIZERS)
  factory = OPTIMIZERS[name]
  valid = list(inspect.signature(factory).parameters)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise errors.ConfigError(f"optimizer {name!r} got unknown arguments {unknown}; "
                             f"valid arguments: {', '.join(valid)}")
  if "learning_rate" not in kwargs:
    raise errors.ConfigError(f"optimizer {name!r} needs learning_rate")
  return factory(**kwargs)
