"""Preference: Bradley–Terry, DPO, IPO, cDPO, sequence log-probs (transformers/preference.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import preference

B = 8


def logps(seed, n=4, scale=30.0):
  """`n` row-dependent [B] fp32 sequence log-probs (negative, of realistic size)."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(-scale * rng.random(B) - rng.random(B), jnp.float32) for _ in range(n)]


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def maybe_jit(fn, jit, **kw):
  return jax.jit(fn, **kw) if jit else fn


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_dpo_at_the_reference_is_ln2_with_gradient_weight_one_half(beta):
  pi_c, pi_r, _, _ = logps(0)
  f = lambda c, r: preference.preference_loss(c, r, pi_c, pi_r, beta=beta)[0]   # π = π_ref
  np.testing.assert_allclose(float(f(pi_c, pi_r)), math.log(2.0), rtol=1e-6)
  g_c, g_r = jax.grad(f, argnums=(0, 1))(pi_c, pi_r)
  # σ(−βh) = ½ at h = 0: each example pushes π_c up and π_r down with weight β/2, mean over B.
  np.testing.assert_allclose(g_c, np.full(B, -beta / 2 / B), rtol=1e-6)
  np.testing.assert_allclose(g_r, np.full(B, beta / 2 / B), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_dpo_equals_numpy_and_its_gradient_weight_is_eq8(beta, jit):
  pi_c, pi_r, ref_c, ref_r = logps(1)
  f = maybe_jit(functools.partial(preference.preference_loss, kind="dpo", beta=beta), jit)
  h = (np.float64(pi_c) - np.float64(ref_c)) - (np.float64(pi_r) - np.float64(ref_r))
  assert np.ptp(h) > 1.0                                          # not a trivially constant batch
  loss, _ = f(pi_c, pi_r, ref_c, ref_r)
  np.testing.assert_allclose(float(loss), -np.mean(np_log_sigmoid(beta * h)), rtol=1e-5)
  # eq. (8) of 2305.18290: weight σ(r̂_l − r̂_w) = σ(−βh) on ∇ log π(y_w)
  g_c = jax.grad(lambda c: f(c, pi_r, ref_c, ref_r)[0])(pi_c)
  np.testing.assert_allclose(g_c, -beta / (1.0 + np.exp(beta * h)) / B, rtol=1e-4, atol=1e-9)
  g_ref = jax.grad(lambda rc: f(pi_c, pi_r, rc, ref_r)[0])(ref_c)
  np.testing.assert_array_equal(g_ref, np.zeros(B))              # the reference is a constant


@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0, 4.0])
def test_ipo_at_the_reference_and_its_minimiser(tau):
  pi_c, pi_r, _, _ = logps(2)
  loss, _ = preference.preference_loss(pi_c, pi_r, pi_c, pi_r, kind="ipo", beta=tau)
  np.testing.assert_allclose(float(loss), 1.0 / (4.0 * tau**2), rtol=1e-5)
  # With the reference at 0, h = π_c − π_r: the loss is 0 exactly at h = 1/(2τ) and above 0 around.
  zero = jnp.zeros(B)
  ipo = lambda h: preference.preference_loss(h, zero, zero, zero, kind="ipo", beta=tau)[0]
  target = 1.0 / (2.0 * tau)
  assert float(ipo(jnp.full(B, target))) < 1e-9
  np.testing.assert_allclose(float(jax.grad(ipo)(jnp.full(B, target)).sum()), 0.0, atol=1e-6)
  assert float(ipo(jnp.full(B, target * 1.1))) > 0 and float(ipo(jnp.full(B, target * 0.9))) > 0


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_cdpo_optimum_is_where_its_derivative_vanishes(eps):
  z_star = preference.cdpo_optimum(eps)
  assert z_star == pytest.approx(math.log((1 - eps) / eps))
  zero = jnp.zeros(1)
  cdpo = lambda z: preference.preference_loss(z[None], zero, zero, zero, kind="cdpo", beta=1.0,
                                              label_smoothing=eps)[0]
  d = jax.jit(jax.grad(cdpo))
  np.testing.assert_allclose(float(d(jnp.float32(z_star))), 0.0, atol=1e-6)
  # convex (second derivative σ(z)σ(−z) > 0): the stationary point is the finite minimum
  assert np.all(jax.jit(jax.vmap(jax.grad(d)))(jnp.linspace(-8.0, 8.0, 17)) > 0)
  assert float(d(jnp.float32(z_star - 0.5))) < 0 < float(d(jnp.float32(z_star + 0.5)))
  # β scales z: with β = 0.5 the minimum in h sits at z*/β
  cdpo_b = lambda h: preference.preference_loss(h[None], zero, zero, zero, kind="cdpo", beta=0.5,
                                                label_smoothing=eps)[0]
  np.testing.assert_allclose(float(jax.grad(cdpo_b)(jnp.float32(z_star / 0.5))), 0.0, atol=1e-6)


def test_cdpo_with_zero_smoothing_is_dpo_exactly():
  args = logps(3)
  dpo, m_dpo = preference.preference_loss(*args, kind="dpo", beta=0.3)
  cdpo, m_cdpo = preference.preference_loss(*args, kind="cdpo", beta=0.3, label_smoothing=0.0)
  assert float(dpo) == float(cdpo)
  jax.tree.map(np.testing.assert_array_equal, m_dpo, m_cdpo)
  smoothed, _ = preference.preference_loss(*args, kind="cdpo", beta=0.3, label_smoothing=0.1)
  assert float(smoothed) != float(dpo)


def test_bradley_terry():
  r_c, r_r, _, _ = logps(4, scale=3.0)
  loss, _ = preference.bradley_terry_loss(r_c, r_c)
  np.testing.assert_allclose(float(loss), math.log(2.0), rtol=1e-6)
  loss, m = preference.bradley_terry_loss(r_c, r_r)
  delta = np.float64(r_c) - np.float64(r_r)
  np.testing.assert_allclose(float(loss), -np.mean(np_log_sigmoid(delta)), rtol=1e-5)
  assert float(m["accuracy"]) == np.mean(delta > 0)
  np.testing.assert_allclose(float(m["margin"]), np.mean(delta), rtol=1e-5)
  _, m = preference.bradley_terry_loss(jnp.array([1.0, 2.0, 0.0, 5.0]), jnp.array([0.0, 3.0, 0.0,
                                                                                   4.0]))
  assert float(m["accuracy"]) == 0.5                     # rows 0 and 3 win; a tie does not count


@pytest.mark.parametrize("jit", [False, True])
def test_sequence_logprobs_equals_a_loop_over_ragged_masks(jit):
  rng = np.random.default_rng(5)
  Bs, T, V = 4, 9, 13
  logits = rng.normal(size=(Bs, T, V)).astype(np.float32) * 3
  targets = rng.integers(0, V, (Bs, T))
  prompt, length = [0, 2, 4, 1], [9, 6, 8, 3]            # response = positions [prompt, length)
  mask = np.zeros((Bs, T), np.int32)
  for b in range(Bs):
    mask[b, prompt[b]:length[b]] = 1
  logsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = np.array([sum(logsm[b, t, targets[b, t]] for t in range(prompt[b], length[b]))
                   for b in range(Bs)])
  seq = maybe_jit(preference.sequence_logprobs, jit, static_argnames="average")
  got = seq(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  tok = preference.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
  assert tok.shape == (Bs, T) and tok.dtype == jnp.float32
  # masked targets may be anything, even far out of range: same value, same gradient
  junk = np.where(mask > 0, targets, 10**6)
  np.testing.assert_array_equal(seq(jnp.asarray(logits), jnp.asarray(junk), jnp.asarray(mask)), got)
  grad = jax.jit(lambda t: jax.grad(lambda l: seq(l, t, jnp.asarray(mask)).sum())(
      jnp.asarray(logits)))
  np.testing.assert_array_equal(grad(jnp.asarray(junk)), grad(jnp.asarray(targets)))
  avg = seq(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), average=True)
  np.testing.assert_allclose(avg, want / mask.sum(-1), rtol=1e-5)
  # bf16 logits are upcast: the result is fp32
  assert seq(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets),
             jnp.asarray(mask)).dtype == jnp.float32


@pytest.mark.parametrize("kind,eps", [("dpo", 0.0), ("ipo", 0.0), ("cdpo", 0.2)])
def test_metrics_flip_when_chosen_and_rejected_are_swapped(kind, eps):
  pi_c, pi_r, ref_c, ref_r = logps(6)
  beta = 0.5
  _, m = preference.preference_loss(pi_c, pi_r, ref_c, ref_r, kind=kind, beta=beta,
                                    label_smoothing=eps)
  _, s = preference.preference_loss(pi_r, pi_c, ref_r, ref_c, kind=kind, beta=beta,
                                    label_smoothing=eps)
  rc, rr = beta * (np.float64(pi_c) - ref_c), beta * (np.float64(pi_r) - ref_r)
  np.testing.assert_allclose(float(m["chosen_reward"]), rc.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m["rejected_reward"]), rr.mean(), rtol=1e-5)
  assert float(m["reward_accuracy"]) == np.mean(rc > rr)
  assert 0 < float(m["reward_accuracy"]) < 1                     # a mixed batch, not a trivial one
  assert float(s["reward_accuracy"]) == 1.0 - float(m["reward_accuracy"])
  np.testing.assert_allclose(float(s["reward_margin"]), -float(m["reward_margin"]), rtol=1e-5)
  assert float(s["chosen_reward"]) == float(m["rejected_reward"])
  _, bt = preference.bradley_terry_loss(pi_c, pi_r)
  _, bt_s = preference.bradley_terry_loss(pi_r, pi_c)
  assert float(bt_s["accuracy"]) == 1.0 - float(bt["accuracy"])
  assert float(bt_s["margin"]) == -float(bt["margin"])


def test_bad_inputs_raise():
  args = logps(7)
  for beta in (0.0, -1.0, 0):
    with pytest.raises(ValueError, match=r"beta must be > 0, got"):
      preference.preference_loss(*args, beta=beta)
  with pytest.raises(ValueError, match=r"unknown preference loss kind 'kto'.*dpo, ipo, cdpo"):
    preference.preference_loss(*args, kind="kto")
  for eps in (0.5, -0.1):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
      preference.preference_loss(*args, kind="cdpo", label_smoothing=eps)
  for kind in ("dpo", "ipo"):
    with pytest.raises(ValueError, match=r"only applies to kind='cdpo'"):
      preference.preference_loss(*args, kind=kind, label_smoothing=0.1)
  with pytest.raises(ValueError, match=r"one shape \[B\]"):
    preference.preference_loss(args[0], args[1][:3], args[2], args[3])
  with pytest.raises(ValueError, match=r"chosen and rejected responses are identical"):
    preference.check_pair([3, 4, 5], np.array([3, 4, 5]))
  with pytest.raises(ValueError, match=r"non-empty responses"):
    preference.check_pair([], [1, 2])
  with pytest.raises(ValueError, match=r"non-empty responses"):
    preference.check_pair([1], np.array([], np.int32))
  preference.check_pair([3, 4, 5], [3, 4])                        # a prefix is a different answer
  preference.check_pair([3, 4, 5], [3, 4, 6])
  with pytest.raises(ValueError, match=r"0 < label_smoothing < 0.5"):
    preference.cdpo_optimum(0.0)
  # Python-float config values are checked even when the loss itself is jitted
  with pytest.raises(ValueError, match=r"beta must be > 0"):
    jax.jit(functools.partial(preference.preference_loss, beta=0.0))(*args)
