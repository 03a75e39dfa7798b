"""The optimizer knobs of `experiments/optim.py` (`b1`, `b2`, `decay_mask`, `min_lr_ratio`),
for both `optimizer_impl`s, checked against optax built directly and against hand formulas:
the matrices mask leaves 1-D parameters undecayed, the cosine floor is reached at the end, β₁
and β₂ set their moments, defaults change nothing, and bad values give a ConfigError."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from genfm.experiments import optim
from genfm.experiments.errors import ConfigError
from genfm.foundations import optimizers as genfm_optimizers

IMPLS = ("optax", "genfm")


def _config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict({
      "optimizer": "adamw", "learning_rate": 1e-2, "weight_decay": 0.1, "schedule": "constant",
      "warmup_steps": 0, "num_train_steps": 50, "grad_clip_norm": 0.0})
  c.update(overrides)
  return c


def _params():
  """A pytree with a matrix, an embedding table, a bias and a gain (1-D)."""
  k = jax.random.split(jax.random.key(0), 4)
  return {"kernel": jax.random.normal(k[0], (5, 3)), "embed": jax.random.normal(k[1], (7, 5)),
          "bias": jax.random.normal(k[2], (3,)), "scale": 1 + jax.random.normal(k[3], (5,))}


def _grads(step: int, params):
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), len(params))
  # Sorted names: `apply_updates` returns dicts in sorted-key order, the first call does not.
  return {name: jax.random.normal(key, params[name].shape)
          for key, name in zip(keys, sorted(params))}


def _run(tx, params, steps: int = 5):
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(_grads(t, params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


# -- decay_mask --------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_matrices_mask_decays_matrices_only(impl):
  """Zero gradients make the Adam direction exactly 0, so one step is pure weight decay:
  ndim ≥ 2 leaves shrink by (1 − ηλ), 1-D leaves do not move at all."""
  cfg = _config(optimizer_impl=impl, decay_mask="matrices")
  tx, params = optim.make_optimizer(cfg), _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for name in ("kernel", "embed"):
    np.testing.assert_allclose(new[name], params[name] * (1 - 1e-2 * 0.1), rtol=1e-6)
  for name in ("bias", "scale"):
    np.testing.assert_array_equal(new[name], params[name])
  # "all" (the default) decays the 1-D leaves too.
  updates_all, _ = optim.make_optimizer(_config(optimizer_impl=impl)).update(
      zeros, tx.init(params), params)
  np.testing.assert_allclose(params["bias"] + updates_all["bias"], params["bias"] * (1 - 1e-3),
                             rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_adamw_equals_optax_adamw_with_the_same_mask(impl):
  """5 steps of random gradients, β₂ = 0.99, matrices mask: equal to `optax.adamw(mask=...)`."""
  cfg = _config(optimizer_impl=impl, decay_mask="matrices", b2=0.99)
  ref = optax.adamw(1e-2, b2=0.99, weight_decay=0.1,
                    mask=lambda p: {k: v.ndim >= 2 for k, v in p.items()})
  ours, _ = _run(optim.make_optimizer(cfg), _params())
  theirs, _ = _run(ref, _params())
  chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)
  # And it differs from decaying everything (the mask has an effect on the trajectory).
  everything, _ = _run(optax.adamw(1e-2, b2=0.99, weight_decay=0.1), _params())
  assert not np.allclose(ours["bias"], everything["bias"], rtol=1e-7, atol=0)


def test_genfm_adamw_mask_accepts_a_pytree_and_nnx_state():
  """`foundations.optimizers.adamw(mask=...)`: a bool pytree equals the callable; on an NNX
  `State` (what the launcher trains) the bias of an `nnx.Linear` is not decayed."""
  params = _params()
  as_tree = {k: v.ndim >= 2 for k, v in params.items()}
  a, _ = _run(genfm_optimizers.adamw(1e-2, weight_decay=0.1, mask=as_tree), params)
  b, _ = _run(genfm_optimizers.adamw(1e-2, weight_decay=0.1, mask=optim.matrices_mask), params)
  chex.assert_trees_all_equal(a, b)

  _, state_params, _ = nnx.split(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Param, ...)
  state_params = jax.tree.map(lambda p: p + 1.0, state_params)   # a non-zero bias to decay
  zeros = jax.tree.map(jnp.zeros_like, state_params)
  for impl in IMPLS:
    tx = optim.make_optimizer(_config(optimizer_impl=impl, decay_mask="matrices"))
    updates, _ = jax.jit(tx.update)(zeros, tx.init(state_params), state_params)
    np.testing.assert_array_equal(updates["bias"][...], 0.0)
    np.testing.assert_allclose(updates["kernel"][...], -1e-3 * state_params["kernel"][...],
                               rtol=1e-6)


# -- b1, b2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("optimizer", ("adam", "adamw"))
@pytest.mark.parametrize("knob,moment,value,default,power", [
    ("b1", "mu", 0.5, 0.9, 1),        # μ_t = β₁ μ_{t−1} + (1 − β₁) g_t
    ("b2", "nu", 0.99, 0.999, 2),     # ν_t = β₂ ν_{t−1} + (1 − β₂) g_t²
])
def test_betas_set_their_moment(impl, optimizer, knob, moment, value, default, power):
  """The moment recursion of Alg. 1 of 1412.6980, by hand over 3 steps, with the configured β;
  the default stays optax's; and the params equal optax's with that β."""
  params = _params()
  for b in (value, None):
    cfg = _config(optimizer=optimizer, optimizer_impl=impl)
    if b is not None:
      cfg[knob] = b
    expect = default if b is None else b
    ours, state = _run(optim.make_optimizer(cfg), params, steps=3)
    got = [s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, moment))
           if hasattr(s, moment)][0]
    hand = jax.tree.map(jnp.zeros_like, params)
    for t in range(3):
      hand = jax.tree.map(lambda m, g: expect * m + (1 - expect) * g ** power, hand,
                          _grads(t, params))
    chex.assert_trees_all_close(getattr(got, moment), hand, rtol=1e-6)
    ref = (optax.adam(1e-2, **{knob: expect}) if optimizer == "adam"
           else optax.adamw(1e-2, weight_decay=0.1, **{knob: expect}))
    chex.assert_trees_all_close(ours, _run(ref, params, steps=3)[0], rtol=1e-6, atol=1e-7)


# -- min_lr_ratio ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("schedule,warmup", [("cosine", 0), ("warmup_cosine", 10)])
def test_cosine_floor_is_reached_at_the_end(impl, schedule, warmup):
  """η(T) = min_lr_ratio · η_peak and stays there; mid-decay it follows nanoGPT's `get_lr`
  (η_min + ½(η − η_min)(1 + cos(π r)), eq. (5) of 1608.03983) and equals optax's schedule."""
  lr, steps, ratio = 1e-3, 100, 0.1
  cfg = _config(optimizer_impl=impl, schedule=schedule, warmup_steps=warmup, learning_rate=lr,
                num_train_steps=steps, min_lr_ratio=ratio)
  sched = optim.make_schedule(cfg)
  for t in (steps, steps + 1, 10 * steps):
    np.testing.assert_allclose(float(sched(jnp.asarray(t))), ratio * lr, rtol=1e-6)
  for t in (warmup, 37, 80):
    r = (t - warmup) / (steps - warmup)
    hand = ratio * lr + 0.5 * (lr - ratio * lr) * (1 + math.cos(math.pi * r))
    np.testing.assert_allclose(float(sched(jnp.asarray(t))), hand, rtol=1e-5)
  ref = (optax.cosine_decay_schedule(lr, steps, alpha=ratio) if schedule == "cosine" else
         optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=ratio * lr))
  ts = jnp.arange(0, steps + 5)
  np.testing.assert_allclose(jax.vmap(sched)(ts), jax.vmap(ref)(ts), rtol=1e-5, atol=1e-10)
  # The default floor is 0 (configs written before the knob are unchanged).
  del cfg.min_lr_ratio
  assert float(optim.make_schedule(cfg)(jnp.asarray(steps))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_floor_reaches_the_optimizer_step(impl):
  """The last steps of a run move parameters by η_min-sized Adam steps, not by 0: with a
  constant gradient (Adam direction → ±1) the final update of a bias is ≈ −η_min·sign(g)."""
  cfg = _config(optimizer_impl=impl, schedule="cosine", num_train_steps=20, min_lr_ratio=0.25,
                decay_mask="matrices")
  tx, params = optim.make_optimizer(cfg), {"bias": jnp.zeros(3)}
  state, g = tx.init(params), {"bias": jnp.array([1.0, -2.0, 3.0])}
  for _ in range(21):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(updates["bias"], -0.25 * 1e-2 * jnp.sign(g["bias"]), rtol=1e-5)


# -- defaults and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_defaults_are_plain_adamw(impl):
  """No knob set: exactly `optax.adamw(η, weight_decay=λ)` (β₂ 0.999, decay everything)."""
  ours, _ = _run(optim.make_optimizer(_config(optimizer_impl=impl)), _params())
  theirs, _ = _run(optax.adamw(1e-2, weight_decay=0.1), _params())
  chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key,value,match", [
    ("decay_mask", "bias_only", "decay_mask.*valid choices: all, matrices"),
    ("b1", 1.0, r"b1.*\[0, 1\)"),
    ("b2", 1.0, r"b2.*\[0, 1\)"),
    ("b2", -0.1, r"b2.*\[0, 1\)"),
    ("min_lr_ratio", 1.5, r"min_lr_ratio.*\[0, 1\]"),
    ("min_lr_ratio", -0.1, r"min_lr_ratio.*\[0, 1\]"),
])
@pytest.mark.parametrize("optimizer", ("adamw", "sgd"))
def test_bad_knob_values_are_config_errors(key, value, match, optimizer):
  """Checked for every optimizer, even one that ignores the knob, so a typo never hides."""
  cfg = _config(optimizer=optimizer, schedule="cosine", **{key: value})
  with pytest.raises(ConfigError, match=match):
    optim.make_optimizer(cfg)
