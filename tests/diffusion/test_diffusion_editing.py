"""SDEdit and RePaint on analytic ε-models: strength 0 and 1 identities, the SDEdit chain,
inpainting keeping the known pixels exactly, RePaint's jump schedule, outpainting masks, and
bad input in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.diffusion import editing
from genfm.diffusion import samplers
from genfm.diffusion import schedules

SCHED = schedules.make_schedule("linear", 1000)
SHAPE = (3, 4, 4, 1)
MU = 0.5


def gaussian_eps(x, t):
  """The exact ε̂ of data N(μ, 0.5²) (per pixel): ε̂ = √(1−ᾱ)(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
  abar = SCHED.alphas_cumprod[t][:, None, None, None]
  return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * 0.25 + 1 - abar)


def _x0():
  return jax.random.uniform(jax.random.key(7), SHAPE, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sdedit_strength_one_is_sampling_from_noise_with_the_same_key(eta):
  key = jax.random.key(3)
  edited = jax.jit(lambda x0: editing.sdedit(gaussian_eps, SCHED, key, x0, 1.0, num_steps=10,
                                             eta=eta))(_x0())
  plain = jax.jit(lambda: samplers.sample("ddim", gaussian_eps, SCHED, key, SHAPE,
                                          num_steps=10, eta=eta))()
  np.testing.assert_array_equal(edited, plain)
  # ...and it does not depend on the input image at all
  np.testing.assert_array_equal(
      editing.sdedit(gaussian_eps, SCHED, key, -_x0(), 1.0, num_steps=10, eta=eta), edited)


def test_sdedit_strength_zero_returns_the_input_and_small_strength_stays_close():
  x0 = _x0()
  assert editing.sdedit(gaussian_eps, SCHED, jax.random.key(0), x0, 0.0, num_steps=10) is x0
  # distance to the input grows with strength (rows differ: each its own x0 and noise)
  dists = [float(jnp.mean(jnp.abs(editing.sdedit(gaussian_eps, SCHED, jax.random.key(0), x0, s,
                                                 num_steps=20) - x0)))
           for s in (0.02, 0.3, 0.7)]
  assert dists[0] < 0.1 and dists[0] < dists[1] < dists[2]


def test_sdedit_chain_and_start_follow_q_sample():
  # the chain: t_s = round(s (T − 1)) then the DDIM sub-sequence below it
  np.testing.assert_array_equal(editing.sdedit_timesteps(SCHED, 10, 0.5),
                                [500, 444, 333, 222, 111, 0])
  np.testing.assert_array_equal(editing.sdedit_timesteps(SCHED, 10, 1.0),
                                samplers.timesteps(1000, 10)[::-1])
  assert len(editing.sdedit_timesteps(SCHED, 10, 0.0)) == 0
  # a model that always predicts ε̂ = 0 makes DDIM η = 0 return x_start / √ᾱ_start: so the
  # output reveals the start x(t₀) = √ᾱ x0 + √(1 − ᾱ) z with z the key's first split
  key, s = jax.random.key(5), 0.4
  out = editing.sdedit(lambda x, t: jnp.zeros_like(x), SCHED, key, _x0(), s, num_steps=10)
  t0 = editing.sdedit_timesteps(SCHED, 10, s)[0]
  a = SCHED.sqrt_alphas_cumprod[t0]
  z = jax.random.normal(jax.random.split(key)[0], SHAPE)
  np.testing.assert_allclose(out, (a * _x0() + jnp.sqrt(1 - a ** 2) * z) / a, rtol=1e-4, atol=1e-4)


def _mask(seed=0):
  return (jax.random.uniform(jax.random.key(seed), SHAPE) < 0.5).astype(jnp.float32)


@pytest.mark.parametrize("resample,jump", [(1, 1), (3, 2)])
def test_inpaint_keeps_the_known_pixels_exactly(resample, jump):
  known, mask = _x0(), _mask()
  out = jax.jit(lambda k, m: editing.inpaint(gaussian_eps, SCHED, jax.random.key(1), k, m,
                                             num_steps=8, resample=resample, jump=jump))(known,
                                                                                        mask)
  np.testing.assert_array_equal(np.asarray(out)[mask == 1], np.asarray(known)[mask == 1])
  # the generated pixels are samples of N(0.5, 0.5²), not the input
  free = np.asarray(out)[mask == 0]
  assert np.all(np.isfinite(free)) and not np.allclose(free, np.asarray(known)[mask == 0])


def test_inpaint_with_an_all_zero_mask_and_no_resampling_samples_like_ddim_eta_one():
  # nothing known, no jumps: RePaint's reverse moves are DDIM η = 1 steps; the keys differ
  # (RePaint splits each step's key into model noise and known-pixel noise), so compare the
  # distribution of many pixels with DDIM η = 1's (both under-disperse N(0.5, 0.5²) at 10 steps)
  shape = (64, 8, 8, 1)
  out = editing.inpaint(gaussian_eps, SCHED, jax.random.key(2), jnp.zeros(shape),
                        jnp.zeros(shape), num_steps=10)
  ref = samplers.sample("ddim", gaussian_eps, SCHED, jax.random.key(3), shape, num_steps=10,
                        eta=1.0)
  assert float(out.mean()) == pytest.approx(float(ref.mean()), abs=0.02)
  assert float(out.std()) == pytest.approx(float(ref.std()), abs=0.02)


def test_repaint_schedule_is_the_official_jump_schedule():
  np.testing.assert_array_equal(editing.repaint_schedule(4), [4, 3, 2, 1, 0])
  # U = 2, jump 1: every position below the top is visited twice (one step back up each)
  np.testing.assert_array_equal(editing.repaint_schedule(4, 2, 1),
                                [4, 3, 4, 3, 2, 3, 2, 1, 2, 1, 0])
  # the RePaint code's get_schedule_jump(t_T=6, jump_length=2, jump_n_sample=2), indices + 1
  np.testing.assert_array_equal(editing.repaint_schedule(6, 2, 2),
                                [6, 5, 4, 3, 4, 5, 4, 3, 2, 1, 2, 3, 2, 1, 0])
  pos = editing.repaint_schedule(50, 4, 5)
  assert pos[0] == 50 and pos[-1] == 0 and set(np.abs(np.diff(pos))) == {1}


def test_outpaint_and_box_masks():
  m = editing.outpaint_mask((2, 6, 6, 1), 2)
  assert m.shape == (2, 6, 6, 1) and m.sum() == 2 * 4
  np.testing.assert_array_equal(m[0, 2:4, 2:4, 0], np.ones((2, 2)))
  b = editing.box_mask((1, 6, 6, 1), 1, 2, 3, 2)
  assert b.sum() == 36 - 6 and b[0, 1:4, 2:4, 0].sum() == 0
  with pytest.raises(ValueError, match="keep must be"):
    editing.outpaint_mask((1, 6, 6, 1), 7)


def test_bad_input_one_line():
  x0 = _x0()
  for s in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
      editing.sdedit(gaussian_eps, SCHED, jax.random.key(0), x0, s, num_steps=10)
  with pytest.raises(ValueError, match="mask has shape"):
    editing.inpaint(gaussian_eps, SCHED, jax.random.key(0), x0, _mask()[:, :3], num_steps=4)
  with pytest.raises(ValueError, match=r"only 0 \(generate\) and 1 \(keep\)"):
    editing.inpaint(gaussian_eps, SCHED, jax.random.key(0), x0, _mask() * 0.5, num_steps=4)
  with pytest.raises(ValueError, match="resample must be an integer"):
    editing.inpaint(gaussian_eps, SCHED, jax.random.key(0), x0, _mask(), num_steps=4,
                    resample=0)
