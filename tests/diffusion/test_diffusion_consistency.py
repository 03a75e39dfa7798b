"""Tests for genfm.diffusion.consistency (2303.01469, 2310.02279).

Gaussian rows N(μ_b, s_b²) give every exact object in closed form (σ convention of edm.py):
  D(x, σ) = (s² x + σ² μ)/(s² + σ²),   PF-ODE flow from σ to σ': μ + (x − μ)√(s² + σ'²)/√(s² + σ²),
so the exact consistency function is f*(x, σ) = flow(x, σ → ε) and CTM's exact jump
G*(x, t, s) = flow(x, t → s).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import consistency as cm
from genfm.diffusion import edm

MU_B = jnp.array([2.0, -1.0, 0.5, 0.0])
SD_B = jnp.array([0.5, 0.2, 1.0, 0.05])


def _col(v_B):
  return jnp.asarray(v_B, jnp.float32)[:, None]


def gauss_denoiser(x, sigma_B):
  s2, v = _col(SD_B) ** 2, _col(sigma_B) ** 2
  return (s2 * x + v * _col(MU_B)) / (s2 + v)


def flow(x, t_B, s_B):
  s2 = _col(SD_B) ** 2
  return _col(MU_B) + (x - _col(MU_B)) * jnp.sqrt(s2 + _col(s_B) ** 2) / jnp.sqrt(
      s2 + _col(t_B) ** 2)


def exact_f(x, sigma_B):
  return flow(x, sigma_B, jnp.full_like(jnp.asarray(sigma_B, jnp.float32), cm.EPS))


def test_boundary_condition_is_exact():
  c_skip, c_out = cm.boundary_scalings(jnp.float32(cm.EPS))
  assert float(c_skip) == 1.0 and float(c_out) == 0.0
  x = 5.0 * jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
  eps_B = jnp.full((4,), cm.EPS, jnp.float32)
  f = cm.consistency_fn(lambda x, s: 1e3 * jnp.cos(x) + 7.0)      # any network output
  np.testing.assert_array_equal(f(x, eps_B), x)
  # through an EDM denoiser (the student's parameterisation in the task), still bit-exact
  g = cm.from_denoiser(lambda x, s: -3.0 * x + 1.0)
  np.testing.assert_array_equal(g(x, eps_B), x)
  # away from ε the boundary scalings approach EDM's: f ≈ D at large σ
  x2 = jax.random.normal(jax.random.key(1), (4, 5))
  for sigma in (1.0, 10.0, 80.0):
    s_B = jnp.full((4,), sigma)
    np.testing.assert_allclose(cm.from_denoiser(gauss_denoiser)(x2, s_B),
                               gauss_denoiser(x2, s_B), atol=5e-3 * sigma)


def test_boundaries_are_the_reversed_karras_grid():
  n = 18
  got = cm.boundaries(jnp.arange(n), n)
  np.testing.assert_allclose(got, edm.karras_sigmas(n, cm.EPS, cm.SIGMA_MAX)[:-1][::-1],
                             rtol=2e-6)
  np.testing.assert_allclose([got[0], got[-1]], [cm.EPS, cm.SIGMA_MAX], rtol=1e-6)


def test_ct_schedule_endpoints():
  K = 1000
  n, mu = jax.vmap(lambda k: cm.ct_schedule(k, K))(jnp.arange(K + 1))
  # N(0) = ⌈s₀ − 1⌉ + 1 = s₀ = 2, N(K) = s₁ + 1 = 151; μ(0) = exp(s₀ log μ₀ / s₀) = μ₀
  assert int(n[0]) == 2 and int(n[-1]) == 151 and bool(jnp.all(jnp.diff(n) >= 0))
  np.testing.assert_allclose(mu[0], 0.9, rtol=1e-6)
  np.testing.assert_allclose(mu[-1], 0.9 ** (2 / 151), rtol=1e-6)
  # N(k) by hand at k = K/4: ⌈√(¼ (151² − 4) + 4) − 1⌉ + 1 = 76
  assert int(n[K // 4]) == int(np.ceil(np.sqrt(0.25 * (151 ** 2 - 4) + 4) - 1) + 1) == 76


def test_cd_loss_vanishes_for_the_exact_consistency_function():
  key = jax.random.key(2)
  data = _col(MU_B) + _col(SD_B) * jax.random.normal(key, (4, 64))
  noise = jax.random.normal(jax.random.key(3), (4, 64))
  n_B = jnp.array([0, 5, 12, 16])                       # pairs across the whole grid (N = 18)
  exact = cm.cd_per_example(exact_f, exact_f, gauss_denoiser, data, n_B, noise, 18)
  wrong = cm.cd_per_example(gauss_denoiser, gauss_denoiser, gauss_denoiser, data, n_B, noise, 18)
  # exact f: only Heun's local error remains (measured 2.7e-5 at most, the s = 0.2 row)
  assert float(exact.max()) < 1e-4 and float(wrong.max()) > 100 * float(exact.max())
  # Euler teacher: larger (first-order) error than Heun, still small for the exact f
  eul = cm.cd_per_example(exact_f, exact_f, gauss_denoiser, data, n_B, noise, 18,
                          solver="euler")
  assert float(eul.max()) > float(exact.max())


def test_ct_equals_cd_with_the_one_sample_teacher():
  """CT's x̂_{t_n} = x + t_n z is CD's Euler step with the estimator D̂(x_{t_{n+1}}) = x
  (eq. 10 of 2303.01469 replaces the score by its one-sample estimate)."""
  data = jax.random.normal(jax.random.key(4), (4, 8))
  noise = jax.random.normal(jax.random.key(5), (4, 8))
  f = cm.from_denoiser(lambda x, s: jnp.tanh(x) * _col(s) / (1 + _col(s)))
  f_target = cm.from_denoiser(lambda x, s: 0.5 * jnp.tanh(x))
  n_B = jnp.array([0, 3, 7, 9])
  ct = cm.ct_per_example(f, f_target, data, n_B, noise, 11)
  cd = cm.cd_per_example(f, f_target, lambda x, s: data, data, n_B, noise, 11, solver="euler")
  np.testing.assert_allclose(ct, cd, rtol=1e-4, atol=1e-6)
  assert float(ct.min()) > 0.0


def test_distances_and_ema():
  a = jax.random.normal(jax.random.key(6), (3, 4, 4, 1))
  b = a + 0.1
  np.testing.assert_allclose(cm.distance(a, b), 0.01, rtol=1e-4)
  np.testing.assert_array_equal(cm.distance(a, a, "pseudo_huber"), 0.0)
  c = 0.00054 * 4.0
  np.testing.assert_allclose(cm.distance(a, b, "pseudo_huber"),
                             np.sqrt(16 * 0.01 + c ** 2) - c, rtol=1e-4)
  with pytest.raises(ValueError, match="pseudo_huber"):
    cm.distance(a, b, "lpips")
  t, p = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
  np.testing.assert_array_equal(cm.ema_target(t, p, 0.0)["w"], 0.0)   # μ = 0: θ⁻ = θ
  np.testing.assert_array_equal(cm.ema_target(t, p, 1.0)["w"], 1.0)
  np.testing.assert_allclose(cm.ema_target(t, p, 0.95)["w"], 0.95)


def test_multistep_sampling_with_exact_f_gives_the_data_distribution():
  b = 4
  f = lambda x, s: exact_f(x, s)
  for sigmas in ((80.0,), (80.0, 0.8), (80.0, 2.0, 0.3)):
    out = cm.multistep_sample(f, jax.random.key(7), (b, 20000), sigmas)
    np.testing.assert_allclose(out.mean(1), MU_B, atol=0.03)
    np.testing.assert_allclose(out.std(1), np.sqrt(SD_B ** 2 + cm.EPS ** 2), rtol=0.03)
  with pytest.raises(ValueError, match="decrease"):
    cm.multistep_sample(f, jax.random.key(0), (b, 3), (0.8, 80.0))
  with pytest.raises(ValueError, match="NFE ≥ 1"):
    cm.multistep_sample(f, jax.random.key(0), (b, 3), ())


def test_ctm_jump_identity_denoiser_and_euler():
  x = 3.0 * jax.random.normal(jax.random.key(8), (4, 5))
  t = jnp.array([80.0, 3.0, 0.5, 0.002])
  G = cm.ctm_jump(lambda x, t, s: 1e3 * jnp.sin(x) + _col(s))     # any network
  np.testing.assert_array_equal(G(x, t, t), x)                     # G(x, t, t) = x exactly
  Gd = cm.ctm_jump(lambda x, t, s: gauss_denoiser(x, t))
  np.testing.assert_allclose(Gd(x, t, jnp.zeros(4)), gauss_denoiser(x, t), rtol=1e-6)
  s = 0.3 * t
  np.testing.assert_allclose(Gd(x, t, s), edm.ode_step(gauss_denoiser, x, t, s, "euler"),
                             rtol=1e-5, atol=1e-5)


def test_ctm_loss_vanishes_for_the_exact_jump():
  def g_exact(x, t, s):                  # g of G* = flow, from eq. (5) solved for g (s < t)
    r = _col(s) / _col(t)
    return (flow(x, t, s) - r * x) / (1.0 - r)

  G = cm.ctm_jump(g_exact)
  data = _col(MU_B) + _col(SD_B) * jax.random.normal(jax.random.key(9), (4, 32))
  noise = jax.random.normal(jax.random.key(10), (4, 32))
  t, u, s = jnp.array([80.0, 10.0, 2.0, 1.0]), jnp.array([40.0, 5.0, 1.0, 0.5]), jnp.array(
      [1.0, 0.1, 0.5, 0.01])
  exact = cm.ctm_per_example(G, G, gauss_denoiser, data, noise, t, u, s, solver_steps=4)
  Gd = cm.ctm_jump(lambda x, t, s: gauss_denoiser(x, t))     # one Euler jump: not consistent
  wrong = cm.ctm_per_example(Gd, G, gauss_denoiser, data, noise, t, u, s, solver_steps=4)
  assert float(exact.max()) < 1e-4 and float(wrong.min()) > 100 * float(exact.max())
