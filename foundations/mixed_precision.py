"""Mixed-precision training: low-precision compute, fp32 master weights, dynamic loss scaling.

Micikevicius et al. 1710.03740:
  §3.1  keep an fp32 master copy of the weights; each step casts a bf16/fp16 copy for the forward
        and backward pass, and applies the update to the fp32 master (small updates η·g would
        round away against a 16-bit weight: bf16 has 8 mantissa bits, so w + Δw == w once
        |Δw| < |w|·2⁻⁹).
  §3.2  loss scaling: multiply the loss by S before backprop so small gradients do not flush to
        zero in fp16 (smallest subnormal 6e-8), then divide the fp32 gradients by S. Dynamic
        scaling: if any gradient is Inf/NaN, skip the step and halve S; after N finite steps in a
        row, double S.
  §3.3  accumulate reductions (here the softmax cross-entropy) in fp32.
bf16 keeps fp32's 8-bit exponent, so it rarely needs scaling; fp16 (5-bit exponent) does. The same
code runs both: `compute_dtype` picks the format.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class LossScaleState(NamedTuple):
  scale: jax.Array  # [] float32, S
  good_steps: jax.Array  # [] int32, finite steps since the last change of S


def init_loss_scale(initial_scale: float = 2.0**15) -> LossScaleState:
  if initial_scale < 1:
    raise ValueError(f"initial_scale must be >= 1, got {initial_scale}")
  return LossScaleState(jnp.asarray(initial_scale, jnp.float32), jnp.zeros([], jnp.int32))


def all_finite(tree) -> jax.Array:
  """True iff no leaf holds an Inf or NaN (the overflow test of §3.2)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def update_loss_scale(state: LossScaleState, finite: jax.Array, growth_interval: int = 2000,
                      factor: float = 2.0, min_scale: float = 1.0) -> LossScaleState:
  """Halve S on overflow (and restart the count); double it after `growth_interval` good steps."""
  good = state.good_steps + 1
  grow = good >= growth_interval
  scale = jnp.where(finite, jnp.where(grow, state.scale * factor, state.scale),
                    jnp.maximum(state.scale / factor, min_scale))
  good = jnp.where(finite & ~grow, good, 0)
  return LossScaleState(scale.astype(jnp.float32), good.astype(jnp.int32))


def cast_floats(tree, dtype):
  """Casts floating leaves to `dtype` (the low-precision working copy of the master weights)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def scaled_grad(loss_fn: Callable[[Any], jax.Array], master_params, loss_scale: LossScaleState,
                compute_dtype=jnp.bfloat16):
  """(loss, fp32 gradients w.r.t. the master weights, all-finite flag) of `loss_fn(params)`.

  `loss_fn` receives the `compute_dtype` copy of the params and must return an fp32 scalar.
  """

  def scaled_loss(params32):
    loss = loss_fn(cast_floats(params32, compute_dtype))  # forward + backward in compute_dtype
    return loss * loss_scale.scale, loss  # × S before backprop (§3.2)

  grads, loss = jax.grad(scaled_loss, has_aux=True)(master_params)
  grads = jax.tree.map(lambda g: g.astype(jnp.float32) / loss_scale.scale, grads)  # ÷ S in fp32
  return loss, grads, all_finite(grads)


def softmax_cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
  # fp32 log-softmax (§3.3): the log-sum-exp of bf16 logits loses the small terms.
  logits = logits_BC.astype(jnp.float32)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels_B[:, None], axis=1))


def make_train_step(model: nnx.Module, tx: optax.GradientTransformation, compute_dtype,
                    growth_interval: int = 2000):
  """Returns (jitted step, initial carry, jitted predict) for a classifier
  `model(x [B, ...]) -> logits [B, C]`; `predict(params, x)` gives class ids [B].

  carry = (master params fp32, optimizer state, LossScaleState); a step with a non-finite
  gradient leaves params and optimizer state unchanged and halves the scale.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(carry, x_B, y_B):
    params, opt_state, ls = carry

    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(x_B.astype(compute_dtype))
      return softmax_cross_entropy(logits, y_B)

    loss, grads, finite = scaled_grad(loss_fn, params, ls, compute_dtype)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)  # the update lands on the fp32 master (§3.1)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    carry = (keep(new_params, params), keep(new_opt_state, opt_state),
             update_loss_scale(ls, finite, growth_interval))
    return carry, loss

  def predict(params, x_B):
    logits = nnx.merge(graphdef, cast_floats(params, compute_dtype), rest)(
        x_B.astype(compute_dtype))
    return jnp.argmax(logits.astype(jnp.float32), axis=-1)

  return step, (params, tx.init(params), init_loss_scale()), jax.jit(predict)


class TinyMLP(nnx.Module):
  """Two-layer ReLU classifier used by the mixed-precision demo ([B, D] -> [B, C])."""

  def __init__(self, d_in: int, d_hidden: int, num_classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(d_in, d_hidden, rngs=rngs)
    self.out = nnx.Linear(d_hidden, num_classes, rngs=rngs)

  def __call__(self, x_BD: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x_BD)))


def train_digits(compute_dtype, num_steps: int = 300, batch_size: int = 128, seed: int = 0,
                 learning_rate: float = 3e-3) -> dict:
  """Trains TinyMLP on sklearn digits (1797 8×8 images, embedded: no download); returns metrics."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  data = load_digits()
  x_tr, x_te, y_tr, y_te = train_test_split(data.data / 16.0, data.target, test_size=0.25,
                                            random_state=0, stratify=data.target)
  x_tr, x_te = jnp.asarray(x_tr, jnp.float32), jnp.asarray(x_te, jnp.float32)
  y_tr, y_te = jnp.asarray(y_tr, jnp.int32), jnp.asarray(y_te, jnp.int32)
  model = TinyMLP(64, 128, 10, rngs=nnx.Rngs(seed))
  step, carry, predict = make_train_step(model, optax.adam(learning_rate), compute_dtype)
  rng = np.random.default_rng(seed)  # batch indices on the host: no per-step dispatch
  losses = []
  for _ in range(num_steps):
    idx = rng.choice(x_tr.shape[0], batch_size, replace=False)
    carry, loss = step(carry, x_tr[idx], y_tr[idx])
    losses.append(loss)
  params, _, ls = carry
  acc = float(jnp.mean(predict(params, x_te) == y_te))
  return {"test_accuracy": acc, "final_loss": float(losses[-1]), "loss_scale": float(ls.scale),
          "param_dtype": str(jax.tree.leaves(params)[0].dtype)}
