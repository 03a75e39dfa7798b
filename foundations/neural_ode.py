"""Neural ODEs: an ODE solve whose gradient comes from the adjoint method, and an ODE block.

Chen et al. 2018, "Neural Ordinary Differential Equations", arXiv:1806.07366. The hidden state
follows dy/dt = f(y, t, θ); y(t1) = y(t0) + ∫_{t0}^{t1} f dt is computed by the adaptive
Dormand–Prince RK5(4) of `genfm.diffusion.ode` (f(y, t) convention, y any pytree).

Gradients (§2, Algorithm 1). With the adjoint a(t) = ∂L/∂y(t),
    da/dt   = −a(t)ᵀ ∂f/∂y                                                        eq. (4)
    dL/dθ   = −∫_{t1}^{t0} a(t)ᵀ ∂f/∂θ dt                                         eq. (5)
so the augmented state [y, a, a_θ] is integrated *backward* from t1 to t0, starting at
[y(t1), ∂L/∂y(t1), 0] and recomputing y(t) on the way (y is not stored), with the vector–
Jacobian products aᵀ∂f/∂y and aᵀ∂f/∂θ from one `jax.vjp` of f per evaluation. The time
gradients are closed-form: ∂L/∂t1 = a(t1)ᵀ f(y(t1), t1) and ∂L/∂t0 = −a(t0)ᵀ f(y(t0), t0).
The forward pass keeps only (y(t1), θ, t0, t1) for the backward pass, so memory is O(1) in the
number of solver steps (reverse-mode through the solver's `lax.while_loop` is not even
possible in JAX; `jax.custom_vjp` is what makes `jax.grad` work here). The price: the backward
solve re-integrates y backward, so its gradient matches backprop only to the solver tolerance.

`ODEBlock` is the continuous-depth residual block of §3: h ↦ h(1) with dh/dt = f(h, t), f a
time-conditioned MLP (`ConcatMLPField`), parameters trained through `odeint_adjoint`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.diffusion import ode

Field = Callable[[Any, jax.Array, Any], Any]      # f(y, t, params) → dy/dt, pytree like y


def _check_tolerances(rtol: float, atol: float) -> None:
  for name, tol in (("rtol", rtol), ("atol", atol)):
    if not isinstance(tol, (int, float, np.floating)) or not tol > 0:
      raise ValueError(f"ODE tolerance {name}={tol!r} must be a positive number (e.g. 1e-5).")


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _dot(a, b) -> jax.Array:
  """Σ a·b over all leaves of two pytrees of the same structure."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def adjoint_backward(f: Field, y1: Any, a1: Any, t0, t1, params: Any, *, rtol: float = 1e-5,
                     atol: float = 1e-5, max_steps: int = 10_000):
  """Algorithm 1 of 1806.07366: integrates [y, a, a_θ] from t1 back to t0.

  Returns (y(t0) reconstructed, a(t0) = ∂L/∂y0, a_θ(t0) = ∂L/∂θ, stats of the backward solve).
  `a1` is ∂L/∂y(t1), a pytree like y1.
  """
  def aug(state, t):
    y, a, _ = state
    f_y, vjp = jax.vjp(lambda y_, p_: f(y_, t, p_), y, params)
    a_f_y, a_f_p = vjp(a)                       # aᵀ ∂f/∂y, aᵀ ∂f/∂θ (one reverse pass)
    neg = lambda tree: jax.tree.map(jnp.negative, tree)
    return f_y, neg(a_f_y), neg(a_f_p)          # eqs. (4) and (5): da/dt = −aᵀ∂f/∂y, ...

  zeros_p = jax.tree.map(jnp.zeros_like, params)
  (y0, a0, a_p), stats = ode.dopri5(aug, (y1, a1, zeros_p), t1, t0, rtol=rtol, atol=atol,
                                     max_steps=max_steps)
  return y0, a0, a_p, stats


def odeint_adjoint(f: Field, y0: Any, t0, t1, params: Any = (), *, rtol: float = 1e-5,
                   atol: float = 1e-5, max_steps: int = 10_000) -> tuple[Any, dict]:
  """y(t1) of dy/dt = f(y, t, params), y(t0) = y0, by Dormand–Prince; returns (y(t1), stats).

  Differentiable in y0, params, t0 and t1 by the adjoint method (module docstring). Values f
  closes over are hoisted by `jax.closure_convert` and differentiated like params; pass
  differentiated values through `params` to keep that explicit. stats (not differentiable):
  nfev, nsteps, nreject, failed of the forward solve (the backward solve's are returned by
  `adjoint_backward`, which `jax.grad` calls).
  """
  _check_tolerances(rtol, atol)
  dtype = jnp.result_type(*[x for x in jax.tree.leaves(y0)])
  t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
  f_closed, consts = jax.closure_convert(lambda y, t, p: f(y, t, p), y0, t0, params)
  # Only float leaves carry gradients; integer constants ride along with zero (float0) ones.
  is_diff = [_is_float(c) for c in consts]
  diff = [c for c, d in zip(consts, is_diff) if d]
  nondiff = [c for c, d in zip(consts, is_diff) if not d]

  def rebuild(diff_, nondiff_):
    it_d, it_n = iter(diff_), iter(nondiff_)
    return [next(it_d) if d else next(it_n) for d in is_diff]

  def field(y, t, args):
    p, diff_, nondiff_ = args
    return f_closed(y, t, p, *rebuild(diff_, nondiff_))

  @jax.custom_vjp
  def solve(y0_, t0_, t1_, p_, diff_, nondiff_):
    return ode.dopri5(lambda y, t: field(y, t, (p_, diff_, nondiff_)), y0_, t0_, t1_,
                      rtol=rtol, atol=atol, max_steps=max_steps)

  def fwd(y0_, t0_, t1_, p_, diff_, nondiff_):
    y1, stats = solve(y0_, t0_, t1_, p_, diff_, nondiff_)
    return (y1, stats), (y1, t0_, t1_, p_, diff_, nondiff_)   # O(1) residuals: no trajectory

  def bwd(res, cts):
    y1, t0_, t1_, p_, diff_, nondiff_ = res
    a1, _ = cts                                        # stats are integers: no cotangent
    args = (p_, diff_, nondiff_)
    f_args = lambda y, t, a: field(y, t, (a[0], a[1], nondiff_))
    y0_rec, a0, (a_p, a_diff), _ = adjoint_backward(f_args, y1, a1, t0_, t1_, args[:2],
                                                    rtol=rtol, atol=atol, max_steps=max_steps)
    dt1 = _dot(a1, field(y1, t1_, args))              # ∂L/∂t1 = a(t1)ᵀ f(y(t1), t1)
    dt0 = -_dot(a0, field(y0_rec, t0_, args))         # ∂L/∂t0 = −a(t0)ᵀ f(y(t0), t0)
    ct_nondiff = [np.zeros(np.shape(c), jax.dtypes.float0) for c in nondiff_]
    return a0, dt0.astype(t0_.dtype), dt1.astype(t1_.dtype), a_p, a_diff, ct_nondiff

  solve.defvjp(fwd, bwd)
  return solve(y0, t0, t1, params, diff, nondiff)


def module_field(model: nnx.Module) -> tuple[Field, Any]:
  """(f(y, t, params) = model(y, t) with `params` merged in, the model's state): lets
  `odeint_adjoint` differentiate an NNX module's parameters as an explicit pytree."""
  graphdef, state = nnx.split(model)
  return (lambda y, t, params: nnx.merge(graphdef, params)(y, t)), state


class ConcatMLPField(nnx.Module):
  """f(h [B, D], t) → [B, D]: an MLP whose every layer sees [h, t] (FFJORD's "concat" layer,
  1810.01367 App. B). tanh hidden units: smooth, so the adaptive solver takes few steps and
  ∂f/∂h exists everywhere (the trace estimators need it)."""

  def __init__(self, dim: int, hidden: int = 64, depth: int = 3, *, rngs: nnx.Rngs):
    widths = (dim,) + (hidden,) * depth + (dim,)
    self.layers = nnx.List([nnx.Linear(a + 1, b, rngs=rngs)       # +1: the time input
                            for a, b in zip(widths[:-1], widths[1:])])

  def __call__(self, h_BD: jax.Array, t: jax.Array) -> jax.Array:
    # zeros_like keeps h's layout: on an Explicit mesh a replicated t column would not concat.
    t_B1 = jnp.zeros_like(h_BD[:, :1]) + jnp.asarray(t, h_BD.dtype)
    for i, layer in enumerate(self.layers):
      h_BD = layer(jnp.concatenate([h_BD, t_B1], axis=-1))
      if i < len(self.layers) - 1:
        h_BD = jnp.tanh(h_BD)
    return h_BD


class ODEBlock(nnx.Module):
  """Continuous-depth residual block (§3 of 1806.07366): h(t1) = h(t0) + ∫ f(h, t) dt."""

  def __init__(self, dim: int, hidden: int = 64, depth: int = 2, *, t1: float = 1.0,
               rtol: float = 1e-5, atol: float = 1e-5, rngs: nnx.Rngs):
    _check_tolerances(rtol, atol)
    self.field = ConcatMLPField(dim, hidden, depth, rngs=rngs)
    self.t1, self.rtol, self.atol = t1, rtol, atol

  def __call__(self, h_BD: jax.Array, return_stats: bool = False):
    f, params = module_field(self.field)
    h1_BD, stats = odeint_adjoint(f, h_BD, 0.0, self.t1, params, rtol=self.rtol, atol=self.atol)
    return (h1_BD, stats) if return_stats else h1_BD
