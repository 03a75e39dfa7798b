"""Adjoint-method gradients (1806.07366, Alg. 1) against backprop through a fixed-step RK4 solve
and against jax.experimental.ode.odeint; the forward value is the Dormand–Prince solver's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.ode import odeint

from genfm.diffusion import ode
from genfm.foundations import neural_ode

TOL = 1e-6          # rtol = atol of the adaptive solves


def field(y_BD, t, p):
  """A nonlinear, time-dependent MLP field with explicit parameters."""
  h = jnp.tanh(y_BD @ p["W1"] + t * p["c"] + p["b"])
  return h @ p["W2"]


def make_problem(B=4, D=3, F=16):
  k = jax.random.split(jax.random.key(0), 6)
  p = {"W1": 0.6 * jax.random.normal(k[0], (D, F)), "W2": 0.6 * jax.random.normal(k[1], (F, D)),
       "b": 0.3 * jax.random.normal(k[2], (F,)), "c": jax.random.normal(k[3], (F,))}
  y0_BD = jax.random.normal(k[4], (B, D)) * jnp.arange(1, B + 1)[:, None]   # rows differ in scale
  w_BD = jax.random.normal(k[5], (B, D))                                     # a non-uniform ∂L/∂y1
  return p, y0_BD, w_BD


def rk4(f, y0, t0, t1, n):
  """Fixed-step classical RK4 (an independent reference; plain backprop goes through it)."""
  h = (t1 - t0) / n

  def step(y, i):
    t = t0 + i * h
    k1 = f(y, t)
    k2 = f(y + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(y + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(y + h * k3, t + h)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

  return jax.lax.scan(step, y0, jnp.arange(n))[0]


def test_forward_is_dopri5_and_backward_solve_reconstructs_y0():
  """The primal is `ode.dopri5` bitwise; Alg. 1's backward solve recovers y0 and counts its NFE."""
  p, y0_BD, w_BD = make_problem()

  @jax.jit
  def run(y0_BD):
    y1, stats = neural_ode.odeint_adjoint(field, y0_BD, 0.0, 1.3, p, rtol=TOL, atol=TOL)
    ref, ref_stats = ode.dopri5(lambda y, t: field(y, t, p), y0_BD, 0.0, 1.3, rtol=TOL, atol=TOL)
    back = neural_ode.adjoint_backward(field, y1, w_BD, 0.0, 1.3, p, rtol=TOL, atol=TOL)
    return y1, stats, ref, ref_stats, back

  y1_BD, stats, ref_BD, ref_stats, (y0_rec, a0_BD, a_p, back_stats) = run(y0_BD)
  np.testing.assert_array_equal(y1_BD, ref_BD)
  assert int(stats["nfev"]) == int(ref_stats["nfev"]) > 10 and not bool(stats["failed"])
  np.testing.assert_allclose(y0_rec, y0_BD, atol=1e-4)              # y re-integrated backward
  assert a0_BD.shape == y0_BD.shape and jax.tree.structure(a_p) == jax.tree.structure(p)
  assert int(back_stats["nfev"]) > 10 and not bool(back_stats["failed"])


def test_adjoint_gradients_match_fixed_step_backprop_and_jax_odeint():
  """∂L/∂(y0, θ, t0, t1) by the adjoint vs plain reverse mode through 400 RK4 steps and vs
  jax.experimental.ode.odeint (its own adjoint); θ["c"] is closed over by f, not passed."""
  p, y0_BD, w_BD = make_problem()
  explicit = {k: v for k, v in p.items() if k != "c"}

  def loss_adjoint(y0, q, c, t0, t1):
    f = lambda y, t, q_: field(y, t, {**q_, "c": c})     # c reaches f by closure
    return jnp.sum(w_BD * neural_ode.odeint_adjoint(f, y0, t0, t1, q, rtol=TOL, atol=TOL)[0])

  def loss_rk4(y0, q, c, t0, t1):
    return jnp.sum(w_BD * rk4(lambda y, t: field(y, t, {**q, "c": c}), y0, t0, t1, 400))

  def loss_jax(y0, q, c):
    return jnp.sum(w_BD * odeint(lambda y, t, q_, c_: field(y, t, {**q_, "c": c_}), y0,
                                 jnp.array([0.2, 1.3]), q, c, rtol=TOL, atol=TOL)[-1])

  args = (y0_BD, explicit, p["c"], 0.2, 1.3)
  g = jax.jit(jax.grad(loss_adjoint, argnums=(0, 1, 2, 3, 4)))(*args)
  g_rk4 = jax.jit(jax.grad(loss_rk4, argnums=(0, 1, 2, 3, 4)))(*args)
  g_jax = jax.grad(loss_jax, argnums=(0, 1, 2))(*args[:3])
  for ref in (g_rk4, g_jax):
    for a, b in zip(jax.tree.leaves(g[:3]), jax.tree.leaves(ref[:3])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(g[3], g_rk4[3], rtol=2e-4)   # ∂L/∂t0 = −a(t0)ᵀ f(y(t0), t0)
  np.testing.assert_allclose(g[4], g_rk4[4], rtol=2e-4)   # ∂L/∂t1 = a(t1)ᵀ f(y(t1), t1)
  assert float(jnp.abs(g[2]).max()) > 1e-2                 # the closed-over path carries signal


def test_ode_block_parameter_count_output_and_gradient():
  """Parameters by a hand formula ([h, t] enters every layer); the block's output is the ODE
  solution (vs RK4) and its nnx.grad matches a central difference along a random direction."""
  D, F = 3, 8
  shapes = jax.eval_shape(lambda: nnx.state(neural_ode.ODEBlock(D, F, 2, rngs=nnx.Rngs(0)),
                                            nnx.Param))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert n == (D + 1) * F + F + (F + 1) * F + F + (F + 1) * D + D
  block = neural_ode.ODEBlock(D, hidden=F, depth=2, rtol=TOL, atol=TOL, rngs=nnx.Rngs(0))
  h_BD = jax.random.normal(jax.random.key(1), (5, D))
  graphdef, params = nnx.split(block)

  def loss(p):
    out_BD, stats = nnx.merge(graphdef, p)(h_BD, return_stats=True)
    return jnp.sum(jnp.sin(out_BD)), (out_BD, stats["nfev"])

  loss_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, (out_BD, nfev)), g = loss_grad(params)
  ref_BD = jax.jit(lambda h: rk4(lambda y, t: block.field(y, t), h, 0.0, 1.0, 100))(h_BD)
  np.testing.assert_allclose(out_BD, ref_BD, atol=1e-5)
  assert int(nfev) > 0
  v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape), params)
  eps = 1e-2
  plus = loss_grad(jax.tree.map(lambda x, d: x + eps * d, params, v))[0][0]
  minus = loss_grad(jax.tree.map(lambda x, d: x - eps * d, params, v))[0][0]
  directional = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
  np.testing.assert_allclose((plus - minus) / (2 * eps), directional, rtol=2e-3)


@pytest.mark.parametrize("kw", [{"rtol": 0.0}, {"atol": -1e-5}])
def test_bad_tolerance_is_one_line(kw):
  p, y0_BD, _ = make_problem()
  with pytest.raises(ValueError, match=r"ODE tolerance .* must be a positive number"):
    neural_ode.odeint_adjoint(field, y0_BD, 0.0, 1.0, p, **kw)
