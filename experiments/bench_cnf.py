"""CNF solver cost (`genfm-bench cnf_nfe`): function evaluations (NFE) and milliseconds per point
of FFJORD's density pass, its adjoint backward pass, and sampling, for a fresh field and a
briefly trained one (dynamics get stiffer as the flow learns structure, so NFE grows).

The field is the `toy2d_ffjord` one (`ConcatMLPField`, 3 tanh layers of 64, T = 1) on 1,000
moons test points, exact trace (D = 2), Dormand–Prince rtol = atol = 1e-5 (the eval tolerance).
"trained" is `TRAIN_STEPS` Adam steps of maximum likelihood (Hutchinson, rtol 1e-4), enough to
leave N(0, I). Rows `cnf_nfe`, one per field:
  forward_nfe        f evaluations of the density solve [z, Δlog p] from t = 0 to T
  backward_nfe       of the adjoint solve [z, a, a_θ] from T back to 0 (Alg. 1, 1806.07366)
  sample_nfe         of sampling, z from T to 0 (no trace)
  *_ms_per_point     wall time of log p, of log p + its adjoint gradient, and of sampling
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments import bench, data
from genfm.foundations import cnf, neural_ode

POINTS, TOL, TRAIN_STEPS, BATCH = 1000, 1e-5, 60, 256


def _train(model: nnx.Module, steps: int) -> float:
  """`steps` Adam steps of −mean log p on moons train points; returns the last loss."""
  field, params = neural_ode.module_field(model)
  x_N2 = jnp.asarray(data.load("moons", "train").arrays["x"])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, i):
    x_B2 = jax.lax.dynamic_slice_in_dim(x_N2, i * BATCH, BATCH)
    loss, g = jax.value_and_grad(lambda p: -jnp.mean(cnf.log_prob(
        field, p, x_B2, estimator="rademacher", key=jax.random.key(i), rtol=1e-4,
        atol=1e-4)[0]))(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  opt = tx.init(params)
  for i in range(steps):
    params, opt, loss = step(params, opt, i)
  nnx.update(model, params)
  return float(loss)


def _measure(model: nnx.Module, x_B2: jax.Array) -> dict:
  field, params = neural_ode.module_field(model)
  aug = cnf.augmented_field(field)
  state0 = (x_B2, jnp.zeros(x_B2.shape[:1]))

  def nll(p):
    return -jnp.mean(cnf.log_prob(field, p, x_B2, rtol=TOL, atol=TOL)[0])

  @jax.jit
  def counts(p):
    (z_B2, delta_B), fwd = neural_ode.odeint_adjoint(aug, state0, 0.0, 1.0, p, rtol=TOL, atol=TOL)
    a1 = (z_B2 / x_B2.shape[0], jnp.full_like(delta_B, 1.0 / x_B2.shape[0]))   # ∂NLL/∂[z, Δ](T)
    back = neural_ode.adjoint_backward(aug, (z_B2, delta_B), a1, 0.0, 1.0, p, rtol=TOL,
                                       atol=TOL)[3]
    smp = cnf.sample(field, p, jax.random.normal(jax.random.key(0), x_B2.shape), rtol=TOL,
                     atol=TOL)[1]
    return fwd["nfev"], back["nfev"], smp["nfev"]

  sample = jax.jit(lambda p, z: cnf.sample(field, p, z, rtol=TOL, atol=TOL)[0])
  z_B2 = jax.random.normal(jax.random.key(0), x_B2.shape)
  fwd, back, smp = (int(v) for v in counts(params))
  per_point = 1e3 / x_B2.shape[0]
  return {"forward_nfe": fwd, "backward_nfe": back, "sample_nfe": smp,
          "logp_ms_per_point": per_point * bench.time_fn(jax.jit(nll), params, iters=3),
          "logp_grad_ms_per_point": per_point * bench.time_fn(jax.jit(jax.grad(nll)), params,
                                                               iters=3),
          "sample_ms_per_point": per_point * bench.time_fn(sample, params, z_B2, iters=3)}


def cnf_nfe(emit) -> None:
  x_B2 = jnp.asarray(data.load("moons", "test").arrays["x"][:POINTS])
  model = neural_ode.ConcatMLPField(2, 64, 3, rngs=nnx.Rngs(0))
  emit({"name": "cnf_nfe", "field": "fresh", "points": POINTS, "rtol": TOL,
        **_measure(model, x_B2)})
  t = time.perf_counter()
  loss = _train(model, TRAIN_STEPS)
  emit({"name": "cnf_nfe", "field": f"trained_{TRAIN_STEPS}_steps", "points": POINTS,
        "rtol": TOL, "train_loss": loss, "train_seconds": time.perf_counter() - t,
        **_measure(model, x_B2)})
