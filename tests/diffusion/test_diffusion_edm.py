"""Tests for genfm.diffusion.edm (2206.00364): scalings, the Karras grid, the Heun sampler on
Gaussian data (exact ODE solution known), and the DDPM-network wrapper against DDIM.

Gaussian data N(μ, s²) in the σ convention has the exact denoiser D(x, σ) = (s² x + σ² μ)/(s² + σ²)
and the PF-ODE solution x(σ) = μ + (x_T − μ) √(s² + σ²)/√(s² + σ_T²) (each row its own μ, s).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import edm
from genfm.diffusion import samplers
from genfm.diffusion import schedules
from genfm.diffusion.unet import UNet, UNetConfig

SCHED = schedules.make_schedule("linear", 1000)
MU_B = jnp.array([2.0, -1.0, 0.5, 0.0])          # per-row data means and stds
SD_B = jnp.array([0.5, 0.2, 1.0, 0.05])


def gauss_denoiser(x, sigma_B):
  s2, v = SD_B[:, None] ** 2, jnp.asarray(sigma_B)[:, None] ** 2
  return (s2 * x + v * MU_B[:, None]) / (s2 + v)


def exact_solution(x_T, sigma_T):
  s2 = SD_B[:, None] ** 2
  return MU_B[:, None] + (x_T - MU_B[:, None]) * jnp.sqrt(s2) / jnp.sqrt(s2 + sigma_T ** 2)


def test_precondition_limits_and_values():
  c_skip, c_out, c_in, c_noise = edm.precondition(jnp.array([1e-8, 0.5, 80.0]))
  # σ → 0: D(x, σ) = x (c_skip = 1, c_out = 0), c_in → 1/σ_d, c_noise = ¼ ln σ
  assert float(c_skip[0]) == 1.0 and float(c_out[0]) < 1e-7
  np.testing.assert_allclose(c_in[0], 2.0, rtol=1e-6)
  np.testing.assert_allclose(c_noise, 0.25 * np.log([1e-8, 0.5, 80.0]), rtol=1e-6)
  # σ = σ_d: c_skip = ½, c_out = σ_d/√2, c_in = 1/(σ_d √2)
  np.testing.assert_allclose([c_skip[1], c_out[1], c_in[1]],
                             [0.5, 0.5 / np.sqrt(2), 1 / (0.5 * np.sqrt(2))], rtol=1e-6)
  # The unit-variance training target of F: c_skip² σ_d² + c_out² ... i.e. c_out² = σ²σ_d²/(σ²+σ_d²)
  # and c_skip + c_out²/σ_d² = 1 (Table 1's derivation, App. B.6).
  np.testing.assert_allclose(c_skip + c_out ** 2 / 0.25, 1.0, rtol=1e-6)
  # Any raw network: the preconditioned denoiser returns x at σ → 0.
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
  d = edm.preconditioned(lambda x, c: 100.0 * jnp.ones_like(x))(x, jnp.full((3,), 1e-9))
  np.testing.assert_allclose(d, x, atol=1e-6)


def test_karras_grid_endpoints_and_formula():
  s = np.asarray(edm.karras_sigmas(18), np.float64)
  assert s.shape == (19,) and s[0] == np.float32(80.0) and s[-2] == np.float32(0.002)
  assert s[-1] == 0.0 and np.all(np.diff(s) < 0)
  # eq. (5) by hand at i = 9 of 18
  ref = (80 ** (1 / 7) + 9 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(s[9], ref, rtol=1e-6)
  # ρ = 1: evenly spaced
  np.testing.assert_allclose(np.diff(edm.karras_sigmas(5, 1.0, 5.0, rho=1.0)[:-1]), -1.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(edm.karras_sigmas(1), [80.0, 0.0])
  with pytest.raises(ValueError, match="NFE ≥ 1"):
    edm.karras_sigmas(0)


class HeunTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_heun_matches_exact_ode_solution_second_order(self):
    x_T = 80.0 * jax.random.normal(jax.random.key(1), (4, 3))
    exact = exact_solution(x_T, 80.0)
    errs = {}
    for n in (9, 18, 36):
      sig = edm.karras_sigmas(n)
      out = self.variant(lambda x, sig=sig: edm.heun_sample(gauss_denoiser, x, sig))(x_T)
      errs[n] = float(jnp.max(jnp.abs(out - exact)))
    eul = float(jnp.max(jnp.abs(edm.euler_sample(gauss_denoiser, x_T, edm.karras_sigmas(18))
                                - exact)))
    # measured: 0.49 / 0.096 / 0.021 at n = 9 / 18 / 36 (the s = 0.05 row dominates), Euler-18 0.30
    assert errs[36] < 0.03 and errs[36] < errs[18] / 4 < errs[9] / 16   # second order: ×4 per ×2
    assert errs[18] < eul / 2.5                                         # Heun ≫ Euler at equal n


def test_heun_nfe_and_churn():
  calls = []

  def counting(x, s):
    calls.append(1)
    return gauss_denoiser(x, s)

  with jax.disable_jit():                      # scan runs its body once per step
    edm.heun_sample(counting, jnp.zeros((4, 3)), edm.karras_sigmas(6))
  assert len(calls) == edm.heun_nfe(6) == 11
  # churn adds noise (differs from the deterministic path) but keeps the same NFE
  x_T = 80.0 * jax.random.normal(jax.random.key(2), (4, 3))
  det = edm.heun_sample(gauss_denoiser, x_T, edm.karras_sigmas(18))
  sto = edm.heun_sample(gauss_denoiser, x_T, edm.karras_sigmas(18), churn=10.0,
                        key=jax.random.key(3))
  assert float(jnp.max(jnp.abs(det - sto))) > 1e-3
  with pytest.raises(ValueError, match="PRNG key"):
    edm.heun_sample(gauss_denoiser, x_T, edm.karras_sigmas(4), churn=1.0)


def test_edm_loss_weight_and_lognormal():
  # λ(σ) c_out(σ)² = 1 at every σ: the effective weight of F's regression (Table 1)
  sig = jnp.array([0.01, 0.3, 1.0, 50.0])
  np.testing.assert_allclose(edm.loss_weight(sig) * edm.precondition(sig)[1] ** 2, 1.0,
                             rtol=1e-5)
  ln = jnp.log(edm.lognormal_sigmas(jax.random.key(0), (20000,)))
  np.testing.assert_allclose([ln.mean(), ln.std()], [-1.2, 1.2], atol=0.03)
  # the exact denoiser has loss E‖D − x‖² λ = λ σ²s²/(σ²+s²) (posterior variance), row by row
  data = MU_B[:, None] + SD_B[:, None] * jax.random.normal(jax.random.key(4), (4, 20000))
  noise = jax.random.normal(jax.random.key(5), (4, 20000))
  got = edm.edm_per_example(gauss_denoiser, data, jnp.full((4,), 0.7), noise)
  want = edm.loss_weight(0.7) * 0.49 * SD_B ** 2 / (0.49 + SD_B ** 2)
  np.testing.assert_allclose(got, want, rtol=0.05)


def test_vp_sigma_table_and_fractional_timestep():
  sig = edm.vp_sigmas(SCHED)
  # ᾱ_500 = 0.07859 (ANCHORS) ⇒ σ_500 = √((1 − ᾱ)/ᾱ) = 3.424 at code index 499
  np.testing.assert_allclose(sig[499], np.sqrt((1 - 0.07859) / 0.07859), rtol=1e-3)
  idx = jnp.array([0, 1, 499, 998, 999])
  np.testing.assert_allclose(edm.sigma_to_t(sig[idx], SCHED), idx, atol=2e-3)
  mid = jnp.sqrt(sig[10] * sig[11])                    # geometric midpoint → t = 10.5
  np.testing.assert_allclose(edm.sigma_to_t(mid, SCHED), 10.5, atol=1e-3)
  np.testing.assert_array_equal(edm.sigma_to_t(jnp.array([0.0, 1e6]), SCHED), [0.0, 999.0])


def _analytic_eps(x_vp, t_B):
  """E[ε | x_t] for the Gaussian rows at a fractional DDPM index (ᾱ interpolated in log ᾱ)."""
  lab = jnp.interp(t_B, jnp.arange(1000.0), SCHED.log_alphas_cumprod)[:, None]
  a, s = jnp.exp(0.5 * lab), jnp.sqrt(-jnp.expm1(lab))
  return s * (x_vp - a * MU_B[:, None]) / (a ** 2 * SD_B[:, None] ** 2 + s ** 2)


def test_ddpm_wrapper_of_exact_eps_is_exact_denoiser():
  """The wrapped exact ε-network equals the exact EDM denoiser (at table σ's and between)."""
  D = edm.ddpm_denoiser(_analytic_eps, SCHED)
  x = 3.0 * jax.random.normal(jax.random.key(6), (4, 5))
  for sigma in (edm.vp_sigmas(SCHED)[jnp.array([0, 250, 700, 999])], jnp.array([0.05, 1.3, 7.0, 40.0])):
    np.testing.assert_allclose(D(x, sigma), gauss_denoiser(x, sigma), rtol=2e-3, atol=2e-4)


def _random_unet():
  cfg = UNetConfig(image_channels=1, base_channels=4, channel_mults=(1,), attn_resolutions=(),
                   num_groups=2, num_classes=None, image_size=4)
  net = UNet(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(net)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  # zero-initialised output convs would make ε ≡ 0: perturb every parameter
  leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def test_euler_on_ddim_grid_is_ddim_with_a_unet():
  """DDIM η = 0 is the Euler step of the wrapped network's PF-ODE in (x/√ᾱ, σ): same network,
  same start, same σ's ⇒ the same samples up to float32 rounding."""
  graphdef, state = nnx.split(_random_unet())
  z = jax.random.normal(jax.random.key(8), (3, 4, 4, 1))
  seq = samplers.timesteps(1000, 10)[::-1]
  sig = jnp.append(edm.vp_sigmas(SCHED)[seq], 0.0)

  @jax.jit
  def both(state, z):
    model_fn = lambda x, t: nnx.merge(graphdef, state)(x, t)
    ddim = samplers.ddim_sample(model_fn, SCHED, jax.random.key(0), z.shape, num_steps=10,
                                x_T=z)
    x_T = z * jnp.sqrt(1.0 + sig[0] ** 2)              # x̃ = x_vp / √ᾱ
    return ddim, edm.euler_sample(edm.ddpm_denoiser(model_fn, SCHED), x_T, sig)

  ddim, eul = both(state, z)
  assert float(jnp.max(jnp.abs(ddim))) > 0.1
  np.testing.assert_allclose(eul, ddim, atol=2e-3, rtol=1e-3)


def test_heun_pf_ode_agrees_with_ddim_at_many_steps():
  """Wrapped DDPM network (the exact ε of Gaussian rows): DDIM-1000 and EDM Heun on 64 Karras
  σ's between the table's ends solve the same ODE — they agree closely and with the exact
  solution; at 10 steps DDIM is visibly off."""
  sig_tab = edm.vp_sigmas(SCHED)
  z = jax.random.normal(jax.random.key(9), (4, 256))
  ddim = lambda n: samplers.ddim_sample(_analytic_eps, SCHED, jax.random.key(0), z.shape,
                                        num_steps=n, x_T=z)
  grid = edm.karras_sigmas(64, float(sig_tab[0]), float(sig_tab[-1]))
  heun = edm.heun_sample(edm.ddpm_denoiser(_analytic_eps, SCHED), z * jnp.sqrt(1 + grid[0] ** 2),
                         grid)
  exact = exact_solution(z * jnp.sqrt(1 + grid[0] ** 2), grid[0])
  d1000 = float(jnp.max(jnp.abs(heun - ddim(1000))))
  d10 = float(jnp.max(jnp.abs(heun - ddim(10))))
  assert d1000 < 0.02 and d10 > 5 * d1000
  assert float(jnp.max(jnp.abs(heun - exact))) < 0.02
