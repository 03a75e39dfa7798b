"""PPO / GAE / KL estimators / GRPO, Dr. GRPO, DAPO pieces (transformers/policy_gradient.py).

References are numpy fp64 (closed forms, hand numbers); the library runs in fp32. Calls go
through jax.jit (one compile per test instead of one per primitive: eager is ~6× slower here);
the GAE test also runs eagerly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import policy_gradient as pg

LENGTHS = (6, 3, 1, 0)          # ragged: a full row, two short ones, an empty one
T = 6


def ragged_mask(lengths=LENGTHS, t=T):
  return (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.float32)


def maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


kl_estimate = jax.jit(pg.kl_estimate, static_argnames="kind")
aggregate = jax.jit(pg.aggregate, static_argnames=("mode", "max_len"))
whiten = jax.jit(pg.whiten, static_argnames=("shift_mean", "eps"))
group_advantages = jax.jit(pg.group_advantages, static_argnames=("kind", "eps"))


def jit_value_and_grad(f):
  return jax.jit(jax.value_and_grad(f, has_aux=True))


def jit_grad_of_loss(f):
  return jax.jit(jax.grad(lambda x: f(x)[0]))


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_pinned_nonnegative_and_zero_at_equality():
  logp = np.array([[-1.0, -2.0]], np.float32)
  ref = np.array([[-0.5, -2.0]], np.float32)                 # log r = 0.5, 0
  np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), [[-0.5, 0.0]])
  np.testing.assert_allclose(kl_estimate(logp, ref, "k2"), [[0.125, 0.0]])
  np.testing.assert_allclose(kl_estimate(logp, ref, "k3"), [[np.expm1(0.5) - 0.5, 0.0]],
                             rtol=1e-6)
  rng = np.random.default_rng(0)
  for scale in (1e-6, 1e-3, 0.1, 3.0, 50.0):                 # 50: past the ±20 exp clip
    lp = rng.normal(-3, 1, (4, 64)).astype(np.float32)
    rp = (lp + scale * rng.normal(size=lp.shape)).astype(np.float32)
    k3 = np.asarray(kl_estimate(lp, rp))
    assert np.isfinite(k3).all() and (k3 >= 0).all(), scale
  for kind in pg.KL_ESTIMATORS:
    assert (np.asarray(kl_estimate(lp, lp, kind)) == 0).all()


def test_kl_estimators_on_a_discrete_distribution():
  """Tokens sampled from p: mean k1 and k3 → KL(p‖q) (unbiased), k3 with less variance."""
  p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
  q = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
  kl = float(np.sum(p * np.log(p / q)))                      # exact: 0.0363 nats
  x = np.random.default_rng(0).choice(len(p), size=200_000, p=p)
  logp = np.log(p)[x].astype(np.float32)[None]
  ref = np.log(q)[x].astype(np.float32)[None]
  est = {k: np.asarray(kl_estimate(logp, ref, k), np.float64) for k in pg.KL_ESTIMATORS}
  np.testing.assert_allclose(est["k1"].mean(), kl, rtol=0.03)
  np.testing.assert_allclose(est["k3"].mean(), kl, rtol=0.03)
  np.testing.assert_allclose(est["k2"].mean(), kl, rtol=0.10)   # biased, small at small KL
  assert est["k3"].var() < 0.1 * est["k1"].var()


# ----------------------------------------------------------------------------- GAE


def gae_reference(rewards, values, lengths, gamma, lam):
  """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γV_{t+1} − V_t, V = 0 from the end on (fp64)."""
  adv = np.zeros(rewards.shape)
  for b, n in enumerate(lengths):
    v = np.append(values[b, :n].astype(np.float64), 0.0)
    delta = rewards[b, :n] + gamma * v[1:] - v[:-1]
    for t in range(n):
      adv[b, t] = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
  return adv


@pytest.mark.parametrize("jit", [False, True])
def test_gae_matches_the_closed_form_on_ragged_rows(jit):
  rng = np.random.default_rng(1)
  mask = ragged_mask()
  rewards = rng.normal(size=mask.shape).astype(np.float32)
  values = rng.normal(size=mask.shape).astype(np.float32)
  rewards[mask == 0], values[mask == 0] = 1e6, -1e6            # padding must not leak in
  for gamma, lam in ((0.99, 0.95), (0.9, 1.0), (0.8, 0.0), (1.0, 1.0)):
    fn = maybe_jit(functools.partial(pg.gae, gamma=gamma, lam=lam), jit)
    adv, ret = map(np.asarray, fn(rewards, values, mask))
    ref = gae_reference(rewards, values, LENGTHS, gamma, lam)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(adv[mask == 0], 0.0)
    np.testing.assert_array_equal(ret[mask == 0], 0.0)
    np.testing.assert_allclose(ret[mask > 0], (ref + values)[mask > 0], rtol=1e-5, atol=1e-5)
    # last real step: δ = r − V (no bootstrap past the end), whatever γ and λ
    for b, n in enumerate(LENGTHS[:3]):
      np.testing.assert_allclose(adv[b, n - 1], rewards[b, n - 1] - values[b, n - 1], rtol=1e-6)
    # first step of the full row, written out
    r, v = rewards[0].astype(np.float64), values[0].astype(np.float64)
    delta = r + gamma * np.append(v[1:], 0.0) - v
    np.testing.assert_allclose(adv[0, 0], np.sum((gamma * lam) ** np.arange(T) * delta),
                               rtol=1e-5)
    if lam == 1.0:      # discounted Monte-Carlo return − value
      mc = [sum(gamma ** l * r[t + l] for l in range(T - t)) for t in range(T)]
      np.testing.assert_allclose(adv[0], np.array(mc) - v, rtol=1e-5, atol=1e-5)
    if lam == 0.0:      # one-step TD error
      np.testing.assert_allclose(adv[0], delta, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- whiten, aggregate


def test_whiten_masked_moments():
  rng = np.random.default_rng(2)
  mask = ragged_mask()
  x = rng.normal(3.0, 2.0, mask.shape).astype(np.float32)
  x[mask == 0] = 1e4
  real = mask > 0
  w = np.asarray(whiten(x, mask))
  np.testing.assert_allclose(w[real].mean(), 0.0, atol=1e-6)
  np.testing.assert_allclose(w[real].var(), 1.0, rtol=1e-5)   # population variance
  np.testing.assert_array_equal(w[~real], 0.0)
  w = np.asarray(whiten(x, mask, shift_mean=False))
  np.testing.assert_allclose(w[real].mean(), x[real].mean(), rtol=1e-5)
  np.testing.assert_allclose(w[real].var(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(w[~real], 0.0)


def test_aggregations_by_hand():
  loss = np.array([[1, 2, 3, 4], [10, 20, np.nan, np.inf], [np.nan] * 4], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
  agg = lambda mode, **kw: float(aggregate(loss, mask, mode, **kw))
  np.testing.assert_allclose(agg("token_mean"), 40 / 6, rtol=1e-6)
  np.testing.assert_allclose(agg("seq_mean_token_mean"), (2.5 + 15 + 0) / 3, rtol=1e-6)
  np.testing.assert_allclose(agg("seq_mean_token_sum_norm"), (10 / 4 + 30 / 4 + 0) / 3,
                             rtol=1e-6)
  np.testing.assert_allclose(agg("seq_mean_token_sum_norm", max_len=8), (10 + 30) / 8 / 3,
                             rtol=1e-6)
  g = jax.jit(jax.grad(lambda l: pg.aggregate(l, mask, "seq_mean_token_mean")))(loss)
  np.testing.assert_allclose(g, np.array([[1 / 12] * 4, [1 / 6, 1 / 6, 0, 0], [0] * 4]),
                             rtol=1e-6)


def test_sum_norm_is_proportional_to_length_token_mean_is_not():
  loss = np.full((1, 8), 0.5, np.float32)
  short, long = ragged_mask([2], 8), ragged_mask([8], 8)
  for mode in ("token_mean", "seq_mean_token_mean"):
    assert float(aggregate(loss, short, mode)) == float(aggregate(loss, long, mode)) == 0.5
  s = float(aggregate(loss, short, "seq_mean_token_sum_norm"))
  l = float(aggregate(loss, long, "seq_mean_token_sum_norm"))
  np.testing.assert_allclose([s, l], [2 * 0.5 / 8, 8 * 0.5 / 8], rtol=1e-6)


# ----------------------------------------------------------------------------- PPO


def pg_grad_reference(adv, mask, mode, max_len=None):
  """d/dlogp of −aggregate(A·logp): −A·m / normaliser, per token (fp64)."""
  adv = np.where(mask > 0, adv, 0.0)
  if mode == "token_mean":
    return -adv * mask / max(mask.sum(), 1)
  if mode == "seq_mean_token_mean":
    return -adv * mask / np.maximum(mask.sum(-1, keepdims=True), 1) / len(mask)
  return -adv * mask / (max_len or mask.shape[-1]) / len(mask)


@pytest.mark.parametrize("mode", pg.AGGREGATIONS)
def test_ppo_on_policy_gradient_is_the_policy_gradient(mode):
  rng = np.random.default_rng(3)
  mask = ragged_mask()
  logp = rng.normal(-2, 1, mask.shape).astype(np.float32)
  adv = rng.normal(size=mask.shape).astype(np.float32)
  logp[mask == 0], adv[mask == 0] = -np.inf, np.inf           # padding may hold anything
  f = lambda lp: pg.ppo_clip_loss(lp, logp, adv, mask, aggregation=mode)
  (loss, metrics), grad = jit_value_and_grad(f)(logp)          # logp == old_logp
  assert float(metrics["ratio_mean"]) == 1.0
  assert float(metrics["clip_fraction"]) == 0.0
  assert float(metrics["approx_kl"]) == 0.0
  grad = np.asarray(grad)
  np.testing.assert_allclose(grad, pg_grad_reference(adv, mask, mode), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(grad[mask == 0], 0.0)          # exactly, despite the ±inf
  np.testing.assert_allclose(float(loss), float(aggregate(-adv, mask, mode)), rtol=1e-6)


def test_ppo_clipping_directions_and_clip_higher():
  # one token per row: (ratio, A) → clipped (no gradient)?
  cases = [(1.3, 1.0, True), (1.3, -1.0, False), (0.7, -2.0, True), (0.7, 0.5, False),
           (1.1, 1.0, False), (0.9, -1.0, False), (0.5, -1.0, True)]
  ratio = np.array([[r] for r, _, _ in cases], np.float32)
  adv = np.array([[a] for _, a, _ in cases], np.float32)
  clipped = np.array([c for _, _, c in cases])
  old = np.full_like(ratio, -1.5)
  mask = np.ones_like(ratio)
  f = lambda lp: pg.ppo_clip_loss(lp, old, adv, mask, clip_low=0.2)
  (loss, metrics), grad = jit_value_and_grad(f)(old + np.log(ratio))
  grad = np.asarray(grad)[:, 0]
  np.testing.assert_array_equal(grad[clipped], 0.0)
  np.testing.assert_allclose(grad[~clipped], (-adv * ratio)[~clipped, 0] / len(cases), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["clip_fraction"]), 3 / 7, rtol=1e-6)
  per_token = [-1.2, 1.3, 1.6, -0.35, -1.1, 0.9, 0.8]          # −min(ρA, clip(ρ)A)
  np.testing.assert_allclose(float(loss), np.mean(per_token), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["approx_kl"]),
                             np.mean(ratio - 1 - np.log(ratio)), rtol=1e-4)

  # DAPO clip-higher: ratio 1.25 with A > 0 is clipped at ε = 0.2 but not at ε_high = 0.28
  lp, o, a, m = np.log([[1.25]]), np.zeros((1, 1)), np.ones((1, 1)), np.ones((1, 1))
  g = lambda **kw: float(jit_grad_of_loss(lambda x: pg.ppo_clip_loss(x, o, a, m, **kw))(lp)[0, 0])
  assert g(clip_low=0.2) == 0.0
  np.testing.assert_allclose(g(clip_low=0.2, clip_high=0.28), -1.25, rtol=1e-6)
  # ...and the low side still clips at 1 − ε_low: ratio 0.75 with A < 0 → clipped
  g2 = jit_grad_of_loss(lambda x: pg.ppo_clip_loss(x, o, -a, m, clip_low=0.2, clip_high=0.28))
  assert float(g2(np.log([[0.75]]))[0, 0]) == 0.0


def test_value_loss_by_hand():
  #          (V,   V_old, R):  clipped branch active?  ½·max(...)
  values = np.array([[1.5, 0.5, 1.0, np.inf]], np.float32)    # last token is padding
  old = np.array([[1.0, 1.0, 1.0, np.nan]], np.float32)
  ret = np.array([[2.0, 2.0, 0.0, -np.inf]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  # token 0: (V−R)² = 0.25, V_clip = 1.2 → 0.64 (active); token 1: 2.25 vs V_clip 0.8 → 1.44;
  # token 2: 1 vs 1 (tie, not active)
  f = lambda v: pg.value_loss(v, old, ret, mask, clip=0.2)
  (loss, metrics), grad = jit_value_and_grad(f)(values)
  np.testing.assert_allclose(float(loss), (0.32 + 1.125 + 0.5) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["value_clip_fraction"]), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(grad, [[0.0, -1.5 / 3, 1.0 / 3, 0.0]], rtol=1e-6, atol=1e-7)
  loss, metrics = jax.jit(lambda v: pg.value_loss(v, old, ret, mask, clip=None))(values)
  np.testing.assert_allclose(float(loss), (0.25 + 2.25 + 1.0) / 2 / 3, rtol=1e-6)
  assert float(metrics["value_clip_fraction"]) == 0.0


def test_adaptive_kl_coef():
  f = jax.jit(functools.partial(pg.adaptive_kl_coef, target=6.0, horizon=10_000, n_steps=256))
  assert float(f(0.1, 6.0)) == pytest.approx(0.1)
  np.testing.assert_allclose(float(f(0.1, 6.6)), 0.1 * (1 + 0.1 * 0.0256), rtol=1e-6)
  np.testing.assert_allclose(float(f(0.1, 5.4)), 0.1 * (1 - 0.1 * 0.0256), rtol=1e-6)
  np.testing.assert_allclose(float(f(0.1, 600.0)), 0.1 * (1 + 0.2 * 0.0256), rtol=1e-6)  # cap
  np.testing.assert_allclose(float(f(0.1, 0.0)), 0.1 * (1 - 0.2 * 0.0256), rtol=1e-6)
  assert float(pg.adaptive_kl_coef(0.1, 600.0, target=6.0, horizon=10_000, n_steps=256)) == \
      pytest.approx(0.1 * (1 + 0.2 * 0.0256))                  # eager on Python floats too


# ----------------------------------------------------------------------------- GRPO family


def test_group_advantages():
  rewards = np.array([[1, 0, 0, 0], [3, 1, 2, 0.5]], np.float32)
  a = np.asarray(group_advantages(rewards))
  np.testing.assert_allclose(a[0], [1.5, -0.5, -0.5, -0.5], atol=1e-5)   # std (ddof 1) = 0.5
  r = rewards[1].astype(np.float64)
  np.testing.assert_allclose(a[1], (r - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-6)
  d = np.asarray(group_advantages(rewards, "drgrpo"))
  np.testing.assert_allclose(d[0], [0.75, -0.25, -0.25, -0.25], rtol=1e-6)
  np.testing.assert_allclose(d[1], r - r.mean(), rtol=1e-6)
  np.testing.assert_allclose(d.mean(-1), 0.0, atol=1e-6)
  # constant groups → exactly 0 (values whose plain fp32 mean need not round back to them)
  for c in (np.full((1, 3), 0.1, np.float32), np.full((2, 7), 0.7, np.float32),
            np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)):
    for kind in pg.ADVANTAGE_KINDS:
      assert (np.asarray(group_advantages(c, kind)) == 0).all()


def test_grpo_on_policy_gradient_and_kl_term():
  rng = np.random.default_rng(4)
  mask = ragged_mask()
  logp = rng.normal(-2, 1, mask.shape).astype(np.float32)
  adv_B = np.array([1.5, -0.5, -0.5, -0.5], np.float32)
  adv_BT = np.broadcast_to(adv_B[:, None], mask.shape)
  f = lambda lp: pg.grpo_loss(lp, logp, None, adv_B, mask, kl_coef=0.0)
  (loss, metrics), grad = jit_value_and_grad(f)(logp)
  np.testing.assert_allclose(grad, pg_grad_reference(adv_BT, mask, "seq_mean_token_mean"),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(loss), -(1.5 - 0.5 - 0.5 + 0) / 4, rtol=1e-6)  # empty row: 0
  assert float(metrics["kl"]) == 0.0 and float(metrics["clip_fraction"]) == 0.0
  # the same numbers as ppo_clip_loss with the advantage on every token
  ppo, grpo = jax.jit(lambda lp: (
      pg.ppo_clip_loss(lp, logp, adv_BT, mask, aggregation="seq_mean_token_mean"),
      pg.grpo_loss(lp, logp, None, adv_B, mask, kl_coef=0)))(logp + 0.3 * mask)
  np.testing.assert_allclose(float(ppo[0]), float(grpo[0]), rtol=1e-6)
  assert float(ppo[1]["clip_fraction"]) == float(grpo[1]["clip_fraction"]) > 0

  # KL term: 0 when logp == ref_logp; otherwise kl_coef · aggregate(k3) on top of the policy loss
  grpo = jax.jit(lambda lp, ref: pg.grpo_loss(lp, logp, ref, adv_B, mask, kl_coef=0.04))
  same = grpo(logp, logp)
  np.testing.assert_allclose(float(same[0]), float(loss), rtol=1e-7)
  assert float(same[1]["kl"]) == 0.0
  ref = (logp + rng.normal(0, 0.3, mask.shape)).astype(np.float32)
  ref[mask == 0] = np.inf                                      # padding in the reference too
  lossk, mk = grpo(logp, ref)
  log_r = np.where(mask > 0, ref - logp, 0.0).astype(np.float64)
  k3 = np.expm1(log_r) - log_r
  np.testing.assert_allclose(float(mk["kl"]), k3.sum() / mask.sum(), rtol=1e-5)
  per_seq = k3.sum(-1) / np.maximum(mask.sum(-1), 1)
  np.testing.assert_allclose(float(lossk) - float(mk["policy_loss"]), 0.04 * per_seq.mean(),
                             rtol=1e-4)
  gk = np.asarray(jit_grad_of_loss(lambda lp: grpo(lp, ref))(logp))
  assert np.isfinite(gk).all() and (gk[mask == 0] == 0).all()


def test_dr_grpo_removes_the_length_bias_of_wrong_answers():
  """2503.20783 sec. 3.1: with 1/|o_i|, a long wrong answer is pushed down less per token than a
  short one (so wrong answers drift longer); with a constant normaliser both equally."""
  mask = ragged_mask([2, 8], 8)
  logp = np.full((2, 8), -1.0, np.float32)
  adv_B = np.array([-1.0, -1.0], np.float32)                  # both wrong
  grad = lambda mode: np.asarray(jit_grad_of_loss(lambda lp: pg.grpo_loss(
      lp, logp, None, adv_B, mask, kl_coef=0.0, aggregation=mode))(logp))
  g = grad("seq_mean_token_mean")
  np.testing.assert_allclose([g[0, 0], g[1, 0]], [1 / (2 * 2), 1 / (2 * 8)], rtol=1e-6)
  assert g[1, 0] == pytest.approx(g[0, 0] * 2 / 8)               # shrinks as 1/|o|
  g = grad("seq_mean_token_sum_norm")
  np.testing.assert_allclose([g[0, 0], g[1, 0]], [1 / (2 * 8)] * 2, rtol=1e-6)
  assert (g[mask > 0] > 0).all()                               # A < 0: descent lowers logp


def test_dapo_overlong_penalty_and_dynamic_sampling():
  pen = pg.overlong_penalty(np.array([5, 16, 17, 18, 20, 21, 100]), max_len=20, cache_len=4)
  np.testing.assert_allclose(pen, [0, 0, -0.25, -0.5, -1, -1, -1], rtol=1e-6)
  keep = pg.informative_groups(np.array([[1, 1], [0, 1], [0, 0]], np.float32))
  np.testing.assert_array_equal(keep, [False, True, False])


def test_bad_input_raises_one_line_errors():
  x, m = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
  cases = [
      (lambda: pg.kl_estimate(x, x, "k4"), r"unknown KL estimator 'k4'; valid choices: k1, k2, k3"),
      (lambda: pg.ppo_clip_loss(x, x, x, m, clip_low=0.0),
       r"clip ranges must be in \(0, 1\), got clip_low=0.0, clip_high=0.0"),
      (lambda: pg.ppo_clip_loss(x, x, x, m, clip_high=1.2),
       r"clip ranges must be in \(0, 1\), got clip_low=0.2, clip_high=1.2"),
      (lambda: pg.grpo_loss(x, x, x, x[:, 0], m, clip_low=1.2), r"clip ranges must be in \(0, 1\)"),
      (lambda: pg.group_advantages(np.ones((3, 1))),
       r"a group needs at least 2 samples, got G=1; raise config.rl.group_size"),
      (lambda: pg.group_advantages(x, "ppo"), r"unknown advantage kind 'ppo'"),
      (lambda: pg.gae(x, x, m, gamma=1.5, lam=0.95), r"gamma must be in \[0, 1\], got 1.5"),
      (lambda: pg.gae(x, x, m, gamma=0.99, lam=-0.1), r"lam must be in \[0, 1\], got -0.1"),
      (lambda: pg.aggregate(x, m, "mean"),
       r"unknown aggregation 'mean'; valid choices: token_mean, seq_mean_token_mean"),
      (lambda: pg.grpo_loss(x, x, None, x[:, 0], m), r"kl_coef=0.04 needs ref_logp_BT"),
      (lambda: pg.overlong_penalty(x[0], max_len=4, cache_len=0), r"need 0 < cache_len"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match) as e:
      fn()
    assert "\n" not in str(e.value)
