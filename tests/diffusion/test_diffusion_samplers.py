"""Tests for genfm.diffusion.samplers with the exact denoiser of N(2, 0.5²) data.

With a Gaussian data distribution every deterministic sampler is an affine map x_T ↦ A x_T + c,
so running it on x_T ∈ {0, 1} gives its output std |A| (for x_T ~ N(0, 1)) exactly, with no
Monte-Carlo noise. The reference is the same recursion propagated in float64 NumPy below.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import analytic
from genfm.diffusion import gaussian
from genfm.diffusion import samplers
from genfm.diffusion import schedules

MU, SD, T = 2.0, 0.5, 1000
SCHED = schedules.make_schedule("linear", T)
MODEL = analytic.discrete_model(SCHED, MU, SD)
X01 = jnp.array([[0.0], [1.0]])


def _affine(x_out):
  return float(x_out[0, 0]), float(x_out[1, 0] - x_out[0, 0])   # (c, A)


def _reference_moments(seq, eta=None, ddpm_var=None):
  """Mean and std of the sampler output for x_T ~ N(0, 1), propagated in float64."""
  abar = np.cumprod(1 - schedules.linear_betas(T))
  betas = schedules.linear_betas(T)
  m, q = 0.0, 1.0
  seq = list(seq)
  for t, tp in zip(reversed(seq), reversed([-1] + seq[:-1])):
    a, ap = abar[t], (abar[tp] if tp >= 0 else 1.0)
    v = a * SD ** 2 + 1 - a
    ea, ec = np.sqrt(1 - a) / v, -np.sqrt(1 - a) * np.sqrt(a) * MU / v   # ε̂ = ea x + ec
    if ddpm_var is None:
      sig = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
      ke = -np.sqrt(ap * (1 - a) / a) + np.sqrt(1 - ap - sig ** 2)
      lin, off = np.sqrt(ap / a) + ke * ea, ke * ec
    else:  # eq. (11) of 2006.11239
      lin = (1 - betas[t] * ea / np.sqrt(1 - a)) / np.sqrt(1 - betas[t])
      off = -betas[t] * ec / np.sqrt(1 - a) / np.sqrt(1 - betas[t])
      sig2 = betas[t] if ddpm_var == "beta" else betas[t] * (1 - ap) / (1 - a)
      sig = np.sqrt(sig2) if t > 0 else 0.0
    m, q = lin * m + off, lin ** 2 * q + sig ** 2
  return m, np.sqrt(q)


def test_timesteps():
  seq = samplers.timesteps(T, 10, "uniform")
  np.testing.assert_array_equal(seq, [0, 111, 222, 333, 444, 555, 666, 777, 888, 999])
  quad = samplers.timesteps(T, 20, "quadratic")
  assert quad[0] == 0 and np.all(np.diff(quad) > 0) and quad[-1] == 800
  assert np.all(np.diff(np.diff(quad)) >= 0)           # gaps grow: dense near t = 0
  np.testing.assert_array_equal(samplers.timesteps(T, T), np.arange(T))
  # logsnr: λ_t = log(α_t/σ_t) of the chosen steps is close to evenly spaced.
  seq = samplers.timesteps(T, 10, "logsnr", SCHED)
  assert seq[0] == 0 and seq[-1] == T - 1 and np.all(np.diff(seq) > 0)
  lab = np.asarray(SCHED.log_alphas_cumprod, np.float64)[seq]
  gaps = np.diff(0.5 * lab - 0.5 * np.log(-np.expm1(lab)))
  np.testing.assert_allclose(gaps[1:-1], np.mean(gaps), rtol=0.1)
  with pytest.raises(ValueError, match="needs the schedule"):
    samplers.timesteps(T, 10, "logsnr")


def test_ddim_eta1_step_is_ddpm_posterior():
  """η = 1 with consecutive steps gives σ² = β̃_t and mean μ̃_t(x_t, x̂_0): eqs. (12), (16)
  of 2010.02502 against eq. (7) of 2006.11239, every t, to 1e-6."""
  t = jnp.arange(1, T)
  x = jax.random.normal(jax.random.PRNGKey(0), (T - 1, 4))
  x0_hat = jax.random.uniform(jax.random.PRNGKey(1), (T - 1, 4), minval=-1, maxval=1)
  lab = SCHED.log_alphas_cumprod[t][:, None]
  lab_prev = SCHED.log_alphas_cumprod[t - 1][:, None]
  mean, std = samplers.ddim_step_mean_std(x, x0_hat, lab, lab_prev, 1.0, "x0")
  post_mean, post_var = gaussian.q_posterior(SCHED, x0_hat, x, t)
  np.testing.assert_allclose(mean, post_mean, atol=1e-6)
  np.testing.assert_allclose(jnp.square(std[:, 0]), post_var[:, 0], atol=1e-6, rtol=1e-4)


def test_ddim_eta0_std_pins():
  """Under-dispersion of deterministic DDIM at few steps (ANCHORS.md): 0.36/0.43/0.47/0.49/0.50."""
  pins = {10: 0.3616, 20: 0.4305, 50: 0.4719, 100: 0.4858, 1000: 0.4985}
  for steps, pin in pins.items():
    c, a = _affine(samplers.ddim_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1),
                                        num_steps=steps, x_T=X01))
    ref_mean, ref_std = _reference_moments(samplers.timesteps(T, steps), eta=0.0)
    np.testing.assert_allclose(a, ref_std, atol=2e-4, err_msg=str(steps))
    np.testing.assert_allclose(c, ref_mean, atol=2e-4, err_msg=str(steps))
    np.testing.assert_allclose(a, pin, atol=1e-3, err_msg=str(steps))


def test_ddim_prediction_types_agree():
  outs = [samplers.ddim_sample(analytic.discrete_model(SCHED, MU, SD, p), SCHED,
                               jax.random.PRNGKey(0), (2, 1), num_steps=20, x_T=X01,
                               prediction_type=p) for p in gaussian.PREDICTION_TYPES]
  np.testing.assert_allclose(outs[1], outs[0], atol=1e-4)
  np.testing.assert_allclose(outs[2], outs[0], atol=1e-4)


@pytest.mark.parametrize("variance,std", [("beta", 0.50075), ("beta_tilde", 0.49611)])
def test_ddpm_ancestral_moments(variance, std):
  """Ancestral sampling recovers N(2, 0.5²): std 0.500 with σ² = β (0.50075 exactly)."""
  ref_mean, ref_std = _reference_moments(range(T), ddpm_var=variance)
  np.testing.assert_allclose(ref_std, std, atol=1e-5)
  n = 20000
  x = samplers.ddpm_sample(MODEL, SCHED, jax.random.PRNGKey(3), (n, 1), variance=variance)
  # 4 standard errors: se(mean) = σ/√n, se(std) = σ/√(2n).
  np.testing.assert_allclose(jnp.mean(x), ref_mean, atol=4 * std / np.sqrt(n))
  np.testing.assert_allclose(jnp.std(x), ref_std, atol=4 * std / np.sqrt(2 * n))


def test_ddim_eta1_all_steps_equals_ddpm_beta_tilde_trajectory():
  """Same key ⇒ same noises: DDIM η=1 over all T steps is DDPM with σ² = β̃, sample by sample."""
  key = jax.random.PRNGKey(4)
  ddpm = samplers.ddpm_sample(MODEL, SCHED, key, (64, 1), variance="beta_tilde")
  ddim = samplers.ddim_sample(MODEL, SCHED, key, (64, 1), num_steps=T, eta=1.0)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)


def test_dpm_solver_pp():
  """Order 1 is DDIM η=0 (Sec. 4 of 2211.01095); order 2 converges as h² to the exact
  Gaussian flow map A = σ_data / √Var(x_T), while DDIM converges as h."""
  for steps in (10, 50):
    d1 = samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), num_steps=steps, order=1, x_T=X01,
                                       spacing="uniform")
    ddim = samplers.ddim_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1), num_steps=steps,
                                x_T=X01)
    np.testing.assert_allclose(d1, ddim, atol=1e-5)
  ab_T = float(np.cumprod(1 - schedules.linear_betas(T))[-1])
  a_exact = SD / np.sqrt(ab_T * SD ** 2 + 1 - ab_T)
  err = {}
  for order in (1, 2):
    for steps in (50, 100):
      out = samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), num_steps=steps, order=order,
                                          x_T=X01, spacing="uniform")
      err[order, steps] = abs(_affine(out)[1] - a_exact)
  assert 1.6 < err[1, 50] / err[1, 100] < 2.4      # first order
  assert 3.2 < err[2, 50] / err[2, 100] < 4.8      # second order
  assert err[2, 100] < 0.01 and err[2, 100] < err[1, 100]
  # λ-uniform steps (the default) fix the 2M overshoot of time-uniform steps at 10 steps.
  uni = samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), num_steps=10, x_T=X01,
                                      spacing="uniform")
  lam = samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), num_steps=10, x_T=X01)
  assert abs(_affine(uni)[1] - a_exact) > 0.15
  assert abs(_affine(lam)[1] - a_exact) < 0.025


def test_shapes_under_eval_shape():
  model = lambda x, t: 0.1 * x
  for name, kw in [("ddpm", {}), ("ddim", {"num_steps": 5}), ("dpm_solver_pp", {"num_steps": 5})]:
    out = jax.eval_shape(lambda k: samplers.sample(name, model, SCHED, k, (2, 8, 8, 3), **kw),
                         jax.random.PRNGKey(0))
    chex.assert_shape(out, (2, 8, 8, 3))


def test_bad_input():
  with pytest.raises(ValueError, match="Unknown sampler 'euler'.*ddpm, ddim, dpm_solver_pp"):
    samplers.sample("euler", MODEL, SCHED, jax.random.PRNGKey(0), (2, 1))
  with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, T=1000\]"):
    samplers.ddim_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1), num_steps=1001)
  with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, T=1000\]"):
    samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), num_steps=2000)
  with pytest.raises(ValueError, match="Unknown step spacing 'log'"):
    samplers.timesteps(T, 10, "log")
  with pytest.raises(ValueError, match="Unknown prediction type 'score'"):
    samplers.ddpm_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1), prediction_type="score")
  with pytest.raises(ValueError, match="Unknown variance 'fixed_large'"):
    samplers.ddpm_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1), variance="fixed_large")
  with pytest.raises(ValueError, match=r"x_T has shape \(3, 1\), expected \(2, 1\)"):
    samplers.ddim_sample(MODEL, SCHED, jax.random.PRNGKey(0), (2, 1), x_T=jnp.zeros((3, 1)))
  with pytest.raises(ValueError, match="order must be 1 or 2"):
    samplers.dpm_solver_pp_sample(MODEL, SCHED, (2, 1), order=3)


def test_clip_x0_ddim_eta1_equals_clipped_ddpm_beta_tilde_and_stays_in_bounds():
  """With x̂_0 clipped to [−c, c] (c = 2.2, within one σ of the data mean 2, so it binds often), DDIM η = 1 over
  all T steps is still DDPM's posterior step on the clipped x̂_0, sample by sample; DDIM η = 0
  and DPM-Solver++ end on a clipped x̂_0, inside [−c, c]; a bound nothing reaches changes
  nothing (to rounding)."""
  key, c = jax.random.PRNGKey(5), 2.2
  c32 = float(np.float32(c))                  # the bound as the float32 clip applies it
  ddpm = samplers.ddpm_sample(MODEL, SCHED, key, (64, 1), variance="beta_tilde", clip_x0=c)
  ddim = samplers.ddim_sample(MODEL, SCHED, key, (64, 1), num_steps=T, eta=1.0, clip_x0=c)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
  free = samplers.ddpm_sample(MODEL, SCHED, key, (64, 1), variance="beta_tilde")
  assert float(jnp.max(free)) > c + 0.1 and float(jnp.max(ddpm)) <= c32   # the bound was active
  for out in (samplers.ddim_sample(MODEL, SCHED, key, (256, 1), num_steps=20, clip_x0=c),
              samplers.dpm_solver_pp_sample(MODEL, SCHED, (256, 1), num_steps=20, key=key,
                                            clip_x0=c)):
    assert float(jnp.max(out)) <= c32 and float(jnp.max(out)) > c - 1e-3
  for fn, kw in ((samplers.ddim_sample, {"num_steps": 20}),
                 (samplers.ddpm_sample, {}),
                 (samplers.dpm_solver_pp_sample, {"num_steps": 20})):
    args = (MODEL, SCHED, key, (64, 1)) if fn is not samplers.dpm_solver_pp_sample else (
        MODEL, SCHED, (64, 1))
    extra = {"key": key} if fn is samplers.dpm_solver_pp_sample else {}
    # Not bit for bit in DDIM: its ε̂ is recomputed from x̂_0 (rounding only).
    chex.assert_trees_all_close(fn(*args, **kw, **extra, clip_x0=1e6), fn(*args, **kw, **extra),
                                atol=1e-5)
