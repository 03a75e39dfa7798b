"""Flow matching / rectified flow (diffusion/flow.py) against closed forms.

Gaussian → Gaussian (ANCHORS): noise ~ N(0, I), data ~ N(μ, σ²I), independent coupling, rf path:
  v(x, t) = μ + (tσ² − (1 − t)) / ((1 − t)² + t²σ²) · (x − tμ),
the marginal field E[u_t | x_t = x]; its flow map is the monotone map x ↦ μ + σx.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import flow

MU, SIG = 2.0, 0.5


def gaussian_field(x, t_B, mu=MU, sig=SIG):
  """The closed-form marginal velocity of N(0, 1) → N(μ, σ²) on the rf path (ANCHORS)."""
  t = t_B.reshape((-1,) + (1,) * (x.ndim - 1))
  return mu + (t * sig**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * sig**2) * (x - t * mu)


def test_time_convention_t0_noise_t1_data():
  """Pinned: t = 0 is noise, t = 1 is data (2210.02747 / 2209.03003); the fm path ends at
  data + σ_min·noise; velocities point from noise to data."""
  k1, k2 = jax.random.split(jax.random.key(0))
  noise, data = jax.random.normal(k1, (5, 3)), 3.0 + jax.random.normal(k2, (5, 3))
  zeros, ones = jnp.zeros(5), jnp.ones(5)
  for path in flow.PATHS:
    np.testing.assert_allclose(flow.interpolate(path, noise, data, zeros, 0.1), noise)
  np.testing.assert_allclose(flow.interpolate("rf", noise, data, ones), data)
  np.testing.assert_allclose(flow.interpolate("fm", noise, data, ones, 0.1), data + 0.1 * noise,
                             rtol=1e-6)
  np.testing.assert_allclose(flow.target_velocity("rf", noise, data, zeros), data - noise)
  np.testing.assert_allclose(flow.target_velocity("fm", noise, data, zeros, 0.1),
                             data - 0.9 * noise, rtol=1e-6)
  # rf ignores σ_min: it is fm with σ_min = 0.
  np.testing.assert_allclose(flow.interpolate("rf", noise, data, 0.3 * ones, 0.5),
                             flow.interpolate("fm", noise, data, 0.3 * ones, 0.0))


@pytest.mark.parametrize("path", flow.PATHS)
def test_target_velocity_is_time_derivative_per_row(path):
  """u_t = d/dt x_t (jvp in t), for [B, H, W, C] inputs and a different t in every row."""
  k1, k2 = jax.random.split(jax.random.key(1))
  noise, data = jax.random.normal(k1, (4, 3, 2, 1)), jax.random.normal(k2, (4, 3, 2, 1))
  t_B = jnp.array([0.0, 0.2, 0.7, 1.0])
  _, dxdt = jax.jvp(lambda t: flow.interpolate(path, noise, data, t, 0.05), (t_B,),
                    (jnp.ones(4),))
  np.testing.assert_allclose(flow.target_velocity(path, noise, data, t_B, 0.05), dxdt, atol=1e-6)


def test_cfm_loss_equals_hand_computation():
  """eq. (9) of 2210.02747 from NumPy, per example, ragged t; a row's loss depends only on it."""
  k1, k2 = jax.random.split(jax.random.key(2))
  noise, data = jax.random.normal(k1, (3, 4, 4, 2)), jax.random.normal(k2, (3, 4, 4, 2))
  t_B = jnp.array([0.1, 0.5, 0.95])
  vel = lambda x, t: jnp.sin(x) * t[:, None, None, None]
  loss_B = flow.cfm_per_example(vel, "fm", noise, data, t_B, 0.01)
  n, d, t = (np.asarray(a, np.float64) for a in (noise, data, t_B))
  tt = t[:, None, None, None]
  xt = tt * d + (1 - 0.99 * tt) * n
  hand = np.mean((np.sin(xt) * tt - (d - 0.99 * n)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(loss_B, hand, rtol=1e-5)
  loss2 = flow.cfm_per_example(vel, "fm", noise.at[0].set(7.0), data, t_B, 0.01)
  np.testing.assert_array_equal(loss2[1:], loss_B[1:])
  with pytest.raises(ValueError, match="expected x_t's shape"):
    flow.cfm_per_example(lambda x, t: x[:, :2], "rf", noise, data, t_B)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_learned_velocity_target_is_closed_form_field(t):
  """E[u_t | x_t] (Monte Carlo, 1M pairs; jointly Gaussian so the conditional mean is the linear
  regression of u on x) equals the closed-form field — the minimiser of the CFM loss (Thm. 2)."""
  k1, k2 = jax.random.split(jax.random.key(3))
  n = 1_000_000
  noise = jax.random.normal(k1, (n, 1))
  data = MU + SIG * jax.random.normal(k2, (n, 1))
  t_B = jnp.full((n,), t)
  x = np.asarray(flow.interpolate("rf", noise, data, t_B), np.float64)[:, 0]
  u = np.asarray(flow.target_velocity("rf", noise, data, t_B), np.float64)[:, 0]
  slope = np.cov(x, u)[0, 1] / np.var(x)
  grid = np.array([-1.0, 0.0, 1.0, 2.5])
  mc = u.mean() + slope * (grid - x.mean())
  exact = gaussian_field(jnp.asarray(grid)[:, None], jnp.full((4,), t))[:, 0]
  np.testing.assert_allclose(mc, exact, atol=0.01)
  # And the CFM loss is smaller at the exact field than at a shifted one.
  loss = lambda f: float(jnp.mean(flow.cfm_per_example(f, "rf", noise[:100_000],
                                                      data[:100_000], t_B[:100_000])))
  assert loss(gaussian_field) < loss(lambda x, tt: gaussian_field(x, tt) + 0.1) - 0.009


@pytest.mark.parametrize("method,steps,tol", [("rk45", 0, 1e-4), ("heun", 100, 1e-3),
                                              ("euler", 1000, 5e-3)])
def test_exact_field_maps_gaussian_by_monotone_map(method, steps, tol):
  """Integrating the exact field from t = 0 to 1 maps N(0, 1) to N(μ, σ²) by x ↦ μ + σx,
  point by point (the 1-D ODE flow is monotone, so it is the quantile map)."""
  noise = jnp.linspace(-3.0, 3.0, 13)[:, None]
  out = jax.jit(lambda z: flow.sample(gaussian_field, z, method, max(steps, 1)))(noise)
  np.testing.assert_allclose(out, MU + SIG * noise, atol=tol)


def straight_field(A, b):
  """The exact field of the deterministic coupling data = A·noise + b (A PD): every path is the
  straight line x_t = ((1 − t)I + tA) z + t b with velocity (A − I) z + b."""
  def v(x_B2, t_B):
    t = t_B[:, None, None]
    m = (1 - t) * jnp.eye(2) + t * A
    z = jnp.linalg.solve(m, (x_B2 - t[..., 0] * b)[..., None])[..., 0]
    return z @ (A - jnp.eye(2)).T + b
  return v


def test_one_euler_step_exact_on_straight_paths():
  """2209.03003: on straight paths one Euler step is exact (and straightness is 0); the
  independent Gaussian coupling's curved field is not (straightness > 0)."""
  A, b = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([1.0, -3.0])
  noise = jax.random.normal(jax.random.key(4), (50, 2))
  v = straight_field(A, b)
  @jax.jit
  def run(noise):
    z1 = noise[:, :1]
    return (flow.sample(v, noise, "euler", 1), flow.sample(v, noise, "heun", 1),
            flow.straightness(v, noise, 20), flow.sample(gaussian_field, z1, "euler", 1),
            flow.straightness(gaussian_field, z1, 100))
  euler, heun, s_straight, one_step, s_curved = run(noise)
  np.testing.assert_allclose(euler, noise @ A.T + b, atol=1e-5)
  np.testing.assert_allclose(heun, noise @ A.T + b, atol=1e-5)
  assert float(s_straight) < 1e-9
  assert float(jnp.max(jnp.abs(one_step - (MU + SIG * noise[:, :1])))) > 0.4
  assert float(s_curved) > 0.05


def test_straightness_equals_hand_riemann_sum():
  """S = mean_k E‖(Z₁ − Z₀) − v(Z_{t_k}, t_k)‖² along the Euler path, from a NumPy loop."""
  noise = jax.random.normal(jax.random.key(5), (6, 2))
  v = lambda x, t: jnp.sin(x) + t[:, None] * jnp.array([1.0, -2.0])
  got = flow.straightness(v, noise, 7)
  z = np.asarray(noise, np.float64)
  vs = []
  for k in range(7):
    vk = np.sin(z) + (k / 7) * np.array([1.0, -2.0])
    vs.append(vk)
    z = z + vk / 7
  chord = z - np.asarray(noise, np.float64)
  hand = np.mean([np.sum((chord - vk) ** 2, axis=1).mean() for vk in vs])
  np.testing.assert_allclose(got, hand, rtol=1e-5)


def test_nfe_counts_network_calls():
  """nfe(method, n) = the number of velocity_fn calls of one run (eager, Python loop)."""
  calls = []
  def v(x, t):
    calls.append(1)
    return -x
  noise = jnp.ones((2, 2))
  for method, n in [("euler", 3), ("heun", 2)]:
    calls.clear()
    with jax.disable_jit():
      flow.sample(v, noise, method, n)
    assert len(calls) == flow.nfe(method, n), (method, n)
  assert flow.nfe("euler", 3) == 3 and flow.nfe("heun", 3) == 6


def test_bad_input_one_line():
  noise = jnp.ones((2, 2))
  with pytest.raises(ValueError, match=r"^Unknown flow path 'ddpm'; valid choices: fm, rf\.$"):
    flow.interpolate("ddpm", noise, noise, jnp.zeros(2))
  with pytest.raises(ValueError, match=r"^Unknown flow path"):
    flow.check_path("vp")
  with pytest.raises(ValueError, match=r"^NFE < 1: num_steps must be ≥ 1, got 0\.$"):
    flow.sample(lambda x, t: x, noise, "euler", 0)
  with pytest.raises(ValueError, match=r"^NFE < 1"):
    flow.nfe("heun", -1)
  with pytest.raises(ValueError, match=r"^Unknown flow sampler 'dopri'"):
    flow.sample(lambda x, t: x, noise, "dopri", 5)
  with pytest.raises(ValueError, match="adaptive"):
    flow.nfe("rk45", 5)


@pytest.mark.parametrize("jit", [False, True])
def test_sample_shapes_any_rank(jit):
  """sample takes any [B, ...] and keeps it (t_B fed with the batch size), jitted or not."""
  run = lambda z: flow.sample(lambda x, t: jnp.ones_like(x) * t.reshape(-1, 1, 1, 1), z, "heun", 3)
  out = (jax.jit(run) if jit else run)(jnp.zeros((2, 4, 4, 1)))
  chex.assert_shape(out, (2, 4, 4, 1))
  np.testing.assert_allclose(out, 0.5, atol=1e-6)       # ∫₀¹ t dt, Heun exact for linear t
