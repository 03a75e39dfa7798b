"""Consistency models (Song et al. 2023, arXiv:2303.01469) and consistency trajectory models
(CTM, Kim et al. 2023, arXiv:2310.02279).

Convention: EDM's (`edm.py`): x_σ = data + σ · noise, data at σ → 0, σ ∈ [ε, T] with ε = 0.002,
T = 80. A consistency function f(x_σ, σ) maps every point of a PF-ODE trajectory to its origin.

  boundary_scalings   c_skip(σ) = σ_d²/((σ − ε)² + σ_d²), c_out(σ) = σ_d (σ − ε)/√(σ² + σ_d²)
                      (App. C of 2303.01469): c_skip(ε) = 1 and c_out(ε) = 0 in floating point,
                      so f(x, ε) = x exactly whatever the network outputs (eq. 5).
  from_denoiser       f_θ from an EDM denoiser D_θ: F = (D − c_skip^EDM x)/c_out^EDM is the raw
                      network of EDM's eq. (7), and f = c_skip x + c_out F. Away from ε the two
                      scalings agree, so a student initialised from a diffusion teacher starts
                      as that teacher's denoiser (the paper initialises CD from EDM the same way).
  boundaries          the N Karras noise levels ε = t_1 < … < t_N = T (ρ = 7), eq. (5) of
                      2206.00364 written with a traced index (N may change during CT)
  cd_per_example      consistency distillation, Algorithm 2 / eq. (7): x_{t_{n+1}} = x + t_{n+1} z,
                      x̂_{t_n} = one Heun (or Euler) step of the teacher's PF-ODE, loss
                      d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)), n ~ U{1, …, N − 1}
  ct_per_example      consistency training, Algorithm 3 / eq. (10): x̂_{t_n} = x + t_n z (same z)
  ct_schedule         N(k) and μ(k) of App. C: N(k) = ⌈√(k/K ((s₁ + 1)² − s₀²) + s₀²) − 1⌉ + 1
                      (from s₀ to s₁ + 1), μ(k) = exp(s₀ log μ₀ / N(k)) (from μ₀ up)
  ema_target          θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)
  multistep_sample    Algorithm 1: x ← f(T z, T); then x_τ = x + √(τ² − ε²) z, x ← f(x_τ, τ)
  ctm_jump            G(x, t, s) = (s/t) x + (1 − s/t) g(x, t, s) — eq. (5) of 2310.02279;
                      G(x, t, t) = x exactly, G(x, t, s) with g = D is the PF-ODE's Euler step
  ctm_per_example     CTM's soft consistency loss: G_θ(x_t, t, s) against G_θ⁻(x̂_u, u, s), x̂_u
                      the teacher's ODE from t to u, both carried to σ = 0 by G_θ⁻(·, s, 0)

Distances d (`DISTANCES`): "l2" (mean squared error over the non-batch dims, the paper's ℓ2²)
and "pseudo_huber" √(‖a − b‖² + c²) − c with c = 0.00054 √dim (Sec. 3.3 of arXiv:2310.14189).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from genfm.diffusion import edm

EPS = 0.002
SIGMA_MAX = 80.0
DISTANCES = ("l2", "pseudo_huber")
ConsistencyFn = Callable[[jax.Array, jax.Array], jax.Array]   # f(x [B, ...], σ [B]) → [B, ...]
_bcast = edm._bcast  # pylint: disable=protected-access


def boundary_scalings(sigma, sigma_data: float = edm.SIGMA_DATA, eps: float = EPS):
  """(c_skip, c_out) of App. C, 2303.01469: equal to 1 and 0 at σ = ε exactly."""
  sigma = jnp.asarray(sigma, jnp.float32)
  c_skip = sigma_data ** 2 / ((sigma - eps) ** 2 + sigma_data ** 2)
  c_out = sigma_data * (sigma - eps) * jax.lax.rsqrt(sigma ** 2 + sigma_data ** 2)
  return c_skip, c_out


def consistency_fn(raw_fn: Callable[[jax.Array, jax.Array], jax.Array],
                   sigma_data: float = edm.SIGMA_DATA, eps: float = EPS) -> ConsistencyFn:
  """f(x, σ) = c_skip(σ) x + c_out(σ) F(x, σ) — eq. (5) of 2303.01469 (raw_fn = F)."""

  def f(x, sigma_B):
    c_skip, c_out = boundary_scalings(sigma_B, sigma_data, eps)
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * raw_fn(x, sigma_B)

  return f


def from_denoiser(denoiser: edm.Denoiser, sigma_data: float = edm.SIGMA_DATA,
                  eps: float = EPS) -> ConsistencyFn:
  """The consistency function whose raw network is EDM's F = (D − c_skip^EDM x)/c_out^EDM."""

  def raw_fn(x, sigma_B):
    c_skip, c_out, _, _ = edm.precondition(sigma_B, sigma_data)
    return (denoiser(x, sigma_B) - _bcast(c_skip, x) * x) / _bcast(c_out, x)

  return consistency_fn(raw_fn, sigma_data, eps)


def boundaries(i, num_scales, eps: float = EPS, sigma_max: float = SIGMA_MAX,
               rho: float = 7.0) -> jax.Array:
  """t_i for 0-based i ∈ [0, N − 1] (traceable in i and N): t_i = (ε^{1/ρ} + i/(N − 1)
  (T^{1/ρ} − ε^{1/ρ}))^ρ, increasing from ε to T — eq. (5) of 2206.00364, reversed."""
  i = jnp.asarray(i, jnp.float32)
  frac = i / (jnp.asarray(num_scales, jnp.float32) - 1.0)
  lo, hi = eps ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (lo + frac * (hi - lo)) ** rho


def ct_schedule(step, total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.9):
  """(N(k), μ(k)) of App. C of 2303.01469 at training step k (traceable): N grows from s₀
  to s₁ + 1 like √k, and μ(k) = exp(s₀ log μ₀ / N(k)) so the target's horizon grows with N."""
  k = jnp.asarray(step, jnp.float32)
  n = jnp.ceil(jnp.sqrt(k / total_steps * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1.0) + 1.0
  return n.astype(jnp.int32), jnp.exp(s0 * jnp.log(mu0) / n)


def distance(a: jax.Array, b: jax.Array, kind: str = "l2") -> jax.Array:
  """[B] distance between two [B, ...] batches (see DISTANCES)."""
  diff = (a - b).reshape(a.shape[0], -1)
  if kind == "l2":
    return jnp.mean(jnp.square(diff), axis=1)
  if kind == "pseudo_huber":
    c = 0.00054 * jnp.sqrt(jnp.float32(diff.shape[1]))      # Sec. 3.3 of 2310.14189
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=1) + c ** 2) - c
  raise ValueError(f"Unknown consistency distance {kind!r}; valid choices: "
                   f"{', '.join(DISTANCES)}.")


def cd_per_example(f_student: ConsistencyFn, f_target: ConsistencyFn,
                   teacher: edm.Denoiser, data: jax.Array, n_B: jax.Array, noise: jax.Array,
                   num_scales, *, solver: str = "heun", kind: str = "l2",
                   eps: float = EPS, sigma_max: float = SIGMA_MAX) -> jax.Array:
  """[B] consistency-distillation loss, eq. (7) of 2303.01469 with λ = 1.

  n_B: 0-based indices in [0, N − 2]; the pair is (t_n, t_{n+1}) of `boundaries`. The teacher
  step from t_{n+1} to t_n is one Heun step of its PF-ODE (`edm.ode_step`); the target network's
  output is a constant (stop_gradient)."""
  t_n = boundaries(n_B, num_scales, eps, sigma_max)
  t_next = boundaries(n_B + 1, num_scales, eps, sigma_max)
  x_next = data + _bcast(t_next, data) * noise
  x_hat = jax.lax.stop_gradient(edm.ode_step(teacher, x_next, t_next, t_n, solver))
  target = jax.lax.stop_gradient(f_target(x_hat, t_n))
  return distance(f_student(x_next, t_next), target, kind)


def ct_per_example(f_student: ConsistencyFn, f_target: ConsistencyFn, data: jax.Array,
                   n_B: jax.Array, noise: jax.Array, num_scales, *, kind: str = "l2",
                   eps: float = EPS, sigma_max: float = SIGMA_MAX) -> jax.Array:
  """[B] consistency-training loss, eq. (10) of 2303.01469: the teacher's ODE step replaced by
  the unbiased estimator x̂_{t_n} = x + t_n z with the same z (no pre-trained model)."""
  t_n = boundaries(n_B, num_scales, eps, sigma_max)
  t_next = boundaries(n_B + 1, num_scales, eps, sigma_max)
  target = jax.lax.stop_gradient(f_target(data + _bcast(t_n, data) * noise, t_n))
  return distance(f_student(data + _bcast(t_next, data) * noise, t_next), target, kind)


def ema_target(target, params, mu):
  """θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ), leaf by leaf (Algorithms 2 and 3 of 2303.01469)."""
  return jax.tree.map(lambda t, p: jax.lax.stop_gradient(mu * t + (1.0 - mu) * p), target,
                      params)


def multistep_sample(f: ConsistencyFn, key: jax.Array, shape, sigmas, eps: float = EPS
                     ) -> jax.Array:
  """Algorithm 1 of 2303.01469: `sigmas` = (T, τ_1, …) decreasing; one evaluation each."""
  sigmas = [float(s) for s in sigmas]
  if not sigmas:
    raise ValueError("multistep consistency sampling needs at least one σ (NFE ≥ 1).")
  if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] <= eps:
    raise ValueError(f"sampling σ's must decrease and stay above ε = {eps}, got {sigmas}.")
  keys = jax.random.split(key, len(sigmas))
  b = shape[0]
  x = f(sigmas[0] * jax.random.normal(keys[0], shape, jnp.float32),
        jnp.full((b,), sigmas[0], jnp.float32))
  for k, tau in zip(keys[1:], sigmas[1:]):
    x_tau = x + (tau ** 2 - eps ** 2) ** 0.5 * jax.random.normal(k, shape, jnp.float32)
    x = f(x_tau, jnp.full((b,), tau, jnp.float32))
  return x


# --- CTM (2310.02279) -------------------------------------------------------------------------

JumpFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]   # g(x, t [B], s [B])


def ctm_jump(g: JumpFn) -> JumpFn:
  """G(x, t, s) = (s/t) x + (1 − s/t) g(x, t, s) — eq. (5) of 2310.02279, for s ≤ t.

  s = t gives 1 · x + 0 · g = x exactly; s = 0 gives g, the denoiser. With g(x, t, s) = D(x, t)
  G is the Euler step of the PF-ODE from t to s (x + (s − t)(x − D)/t)."""

  def G(x, t_B, s_B):
    r = jnp.asarray(s_B, jnp.float32) / jnp.asarray(t_B, jnp.float32)
    return _bcast(r, x) * x + _bcast(1.0 - r, x) * g(x, t_B, s_B)

  return G


def ctm_per_example(G_student: JumpFn, G_target: JumpFn, teacher: edm.Denoiser,
                    data: jax.Array, noise: jax.Array, t_B, u_B, s_B, *,
                    solver_steps: int = 1, kind: str = "l2") -> jax.Array:
  """[B] CTM's soft consistency matching (eq. 8 of 2310.02279) for ε ≤ s ≤ u < t:
  x_t = x + t z; x̂_u = the teacher's Heun solution from t to u (`solver_steps` steps);
  d(G_sg(G_θ(x_t, t, s), s, 0), G_sg(G_θ⁻(x̂_u, u, s), s, 0)), G_sg with stop-gradient
  target weights carrying both ends to σ = 0 (the data-space comparison of the paper)."""
  x_t = data + _bcast(t_B, data) * noise
  x_u = x_t
  for i in range(solver_steps):
    a = t_B + (u_B - t_B) * i / solver_steps
    b = t_B + (u_B - t_B) * (i + 1) / solver_steps
    x_u = edm.ode_step(teacher, x_u, a, b, "heun")
  x_u = jax.lax.stop_gradient(x_u)
  zero = jnp.zeros_like(jnp.asarray(s_B, jnp.float32))
  target = jax.lax.stop_gradient(G_target(G_target(x_u, u_B, s_B), s_B, zero))
  pred = G_target(G_student(x_t, t_B, s_B), s_B, zero)
  return distance(pred, target, kind)
