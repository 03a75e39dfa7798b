"""Foundations benchmarks: `genfm-bench backprop_step optimizer_update` (registered in `bench.py`).

backprop_step: loss + every parameter gradient of the fashion_mlp network (784-512-256-10, ReLU,
  softmax cross-entropy, batch 128, fp32) three ways: backprop by hand in NumPy
  (`foundations/backprop.py`, the matrix chain rule of Rumelhart, Hinton & Williams 1986), the
  same walk as one `jax.vjp` per layer (jitted), and `jax.grad` (jitted). Each line has the time,
  the time relative to `jax.grad`, the achieved FLOP/s from a hand count (forward 2·B·W, backward
  4·B·W minus the unneeded input gradient, W = weights) and its fraction of `matmul_peak` measured
  in this run, and the largest gradient difference from `jax.grad` (the three must agree). Each
  time is the best of three alternating medians.
  NumPy is also timed in fp64 (the dtype its equality test to 1e-5 uses).
optimizer_update: one jitted `update` + `apply_updates` of each from-scratch optimizer
  (`foundations/optimizers.py`) vs its optax built-in on the same parameters and gradients, at the
  fashion_mlp size (535k parameters) and a 16.8M-parameter stack; `ratio_to_optax` > 1 means ours
  is slower; each time is the best of three alternating medians (a shared CPU drifts). These
  updates are memory-bound elementwise code, so bytes moved, not FLOPs, set the time.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genfm.experiments import bench
from genfm.foundations import backprop
from genfm.foundations import optimizers

SIZES = (784, 512, 256, 10)       # the fashion_mlp network
BATCH = 128


def _time_numpy(fn, *args, warmup: int = 2, iters: int = 10) -> float:
  for _ in range(warmup):
    fn(*args)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn(*args)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def backprop_flops(sizes, batch: int) -> int:
  """Matmul FLOPs of one loss + gradient: forward 2BW, ∇W 2BW, ∇o_prev 2B(W − first layer)."""
  weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  return 2 * batch * (3 * weights - sizes[0] * sizes[1])


def backprop_step(emit, sizes=SIZES, batch: int = BATCH, iters: int = 10) -> None:
  peak = bench.matmul_peak()
  emit(peak)
  rng = np.random.default_rng(0)
  x_BD = rng.normal(size=(batch, sizes[0]))
  y_BC = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
  params64 = backprop.init_mlp(list(sizes), seed=0, dtype=np.float64)
  to32 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float32), tree)
  params32, x32, y32 = to32(params64), to32(x_BD), to32(y_BC)
  jparams, jx, jy = jax.tree.map(jnp.asarray, (params32, x32, y32))

  grad_fn = jax.jit(jax.value_and_grad(lambda p, x, y: backprop.jax_loss(p, x, y, "relu")))
  vjp_fn = jax.jit(lambda p, x, y: backprop.vjp_loss_and_grads(p, x, y, "relu"))
  _, ref_grads = grad_fn(jparams, jx, jy)
  ref_grads = jax.tree.map(np.asarray, ref_grads)

  def max_diff(grads):
    return float(max(np.max(np.abs(np.asarray(a, np.float64) - b))
                     for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))))

  flops = backprop_flops(sizes, batch)
  timed = {  # (impl, dtype) -> (timer, its arguments, its gradients)
      ("jax_grad", "float32"): (bench.time_fn, (grad_fn, jparams, jx, jy), ref_grads),
      ("jax_vjp_per_layer", "float32"): (bench.time_fn, (vjp_fn, jparams, jx, jy),
                                         vjp_fn(jparams, jx, jy)[1]),
      ("numpy_by_hand", "float32"): (
          _time_numpy, (backprop.numpy_loss_and_grads, params32, x32, y32, "relu"),
          backprop.numpy_loss_and_grads(params32, x32, y32, "relu")[1]),
      ("numpy_by_hand", "float64"): (
          _time_numpy, (backprop.numpy_loss_and_grads, params64, x_BD, y_BC, "relu"),
          backprop.numpy_loss_and_grads(params64, x_BD, y_BC, "relu")[1]),
  }
  best = {k: np.inf for k in timed}
  for _ in range(3):  # alternate the implementations and keep each one's best median
    for k, (timer, args, _) in timed.items():
      best[k] = min(best[k], timer(*args, iters=iters))
  t_grad = best["jax_grad", "float32"]
  runs = [(impl, dtype, best[impl, dtype], grads) for (impl, dtype), (_, _, grads) in timed.items()]
  for impl, dtype, t, grads in runs:
    emit({"name": "backprop_step", "impl": impl, "dtype": dtype, "sizes": list(sizes),
          "batch_size": batch, "seconds": t, "ratio_to_jax_grad": t / t_grad,
          "flops_per_step": flops, "flops_per_sec": flops / t,
          "fraction_of_matmul_peak": flops / t / peak["flops_per_sec"],
          "max_abs_grad_diff_vs_jax_grad": max_diff(grads)})


def optax_reference(name: str, learning_rate: float) -> optax.GradientTransformation:
  """The optax built-in each of our optimizers is tested against (same hyper-parameters)."""
  return {"sgd": lambda: optax.sgd(learning_rate),
          "momentum": lambda: optax.sgd(learning_rate, momentum=0.9),
          "nesterov": lambda: optax.sgd(learning_rate, momentum=0.9, nesterov=True),
          "adagrad": lambda: optax.adagrad(learning_rate),
          "rmsprop": lambda: optax.rmsprop(learning_rate),
          "adam": lambda: optax.adam(learning_rate),
          "adamw": lambda: optax.adamw(learning_rate, weight_decay=1e-4)}[name]()


def _update_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  # Donated params and state update in place, as in a training loop; without donation every
  # call allocates fresh parameter and state buffers and the allocator's timing dominates.
  return jax.jit(step, donate_argnums=(0, 1))


def _time_updates(fn, params, state, grads, *, iters: int) -> float:
  """`bench.time_fn` of chained updates: each call's outputs feed the next (donated)."""
  carry = list(jax.tree.map(jnp.copy, (params, state)))   # the caller's arrays stay valid

  def update():
    carry[:] = fn(*carry, grads)
    return carry
  return bench.time_fn(update, warmup=2, iters=iters)


def _mlp_params(sizes, seed: int):
  keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) * a**-0.5, "b": jnp.zeros((b,))}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


PARAM_SHAPES = {"fashion_mlp_535k": SIZES, "stack_16.8M": (2048,) * 5}


def optimizer_update(emit, shapes=None, names=None, iters: int = 50) -> None:
  emit(bench.matmul_peak())
  for label, sizes in (shapes or PARAM_SHAPES).items():
    params, grads = _mlp_params(sizes, 0), _mlp_params(sizes, 1)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    for name in names or optimizers.OPTIMIZERS:
      ours = optimizers.get_optimizer(name, learning_rate=1e-3)
      ref = optax_reference(name, 1e-3)
      fns = {impl: (_update_fn(tx), tx.init(params)) for impl, tx in (("genfm", ours),
                                                                      ("optax", ref))}
      t = {"genfm": np.inf, "optax": np.inf}
      for _ in range(3):  # alternate the two and keep each one's best: a shared CPU drifts
        for impl, (fn, state) in fns.items():
          t[impl] = min(t[impl], _time_updates(fn, params, state, grads, iters=iters))
      emit({"name": "optimizer_update", "optimizer": name, "params": label,
            "num_params": int(n_params), "seconds_genfm": t["genfm"],
            "seconds_optax": t["optax"], "ratio_to_optax": t["genfm"] / t["optax"],
            "params_per_sec_genfm": n_params / t["genfm"]})
