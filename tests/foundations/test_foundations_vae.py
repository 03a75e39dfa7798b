"""VAE (1312.6114) and IWAE (1509.00519) against closed forms.

The reference model is linear-Gaussian: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so
log p(x) = log N(x; b, WWᵀ + σ²I) exactly and the posterior is Gaussian. With W = Q diag(s)
(orthonormal Q) the posterior covariance (I + WᵀW/σ²)⁻¹ is diagonal, so a `VAE` with
`hidden=()` (affine encoder and decoder) and a fixed-variance Gaussian decoder can hold the true
posterior exactly: then ELBO = log p(x) and every importance weight equals p(x).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.scipy.stats import multivariate_normal, norm

from genfm.foundations import vae

X, Z, SIGMA2 = 5, 2, 0.3
S = np.array([1.5, 0.7])


def linear_gaussian(mean_shift=0.0, logvar_shift=0.0):
  """(model, W [X, Z], b [X]); the encoder is the true posterior, shifted by the arguments.
  Built abstractly and filled with arrays (no eager initialisation ops to compile)."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(X, Z)))
  w, b = q * S, rng.normal(size=X)
  post_var = 1.0 / (1.0 + S ** 2 / SIGMA2)                         # diag (I + WᵀW/σ²)⁻¹
  gain = w * post_var / SIGMA2                                     # μ = (x − b) W Σ / σ²
  model = nnx.eval_shape(lambda: vae.VAE(X, Z, hidden=(), decoder="gaussian",
                                         decoder_logvar=math.log(SIGMA2), rngs=nnx.Rngs(0)))
  kernel = np.concatenate([gain, np.zeros((X, Z))], axis=1)
  bias = np.concatenate([-b @ gain + mean_shift, np.log(post_var) + logvar_shift])
  for param, value in ((model.to_output.kernel, w.T), (model.to_output.bias, b),
                       (model.to_stats.kernel, kernel), (model.to_stats.bias, bias)):
    param.set_value(jnp.asarray(value, jnp.float32))
  return model, w, b


def exact_log_px(x_BX, w, b):
  cov = w @ w.T + SIGMA2 * np.eye(X)
  return np.array([multivariate_normal.logpdf(x, b, cov) for x in np.asarray(x_BX, np.float64)])


def data(n, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, X)) * 1.5


def analytic_elbo(model, x_BX, w):
  """E_q[log p(x|z)] − KL in closed form: log p(x|μ) − Σ_j s_j² σ_qj² / (2σ²) − KL."""
  mean, logvar = model.encode(x_BX)
  trace = jnp.sum(jnp.sum(w ** 2, axis=0) * jnp.exp(logvar), axis=-1) / (2 * SIGMA2)
  return model.log_likelihood(x_BX, mean) - trace - vae.gaussian_kl(mean, logvar)


def test_gaussian_kl_is_zero_at_the_prior_and_matches_monte_carlo():
  mean = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2], [0.0, 0.0, 0.0]])
  logvar = jnp.array([[0.2, -1.0, 0.7], [1.2, -0.3, 0.0], [0.0, 0.0, 0.0]])

  @jax.jit
  def f(mean, logvar):     # KL, and log q(z) − log p(z) at 200k samples z ~ q per row
    shape = (200_000,) + mean.shape
    z = vae.reparameterize(jax.random.key(0), jnp.broadcast_to(mean, shape),
                           jnp.broadcast_to(logvar, shape))
    return vae.gaussian_kl(mean, logvar), (vae.diagonal_gaussian_log_prob(z, mean, logvar)
                                           - vae.diagonal_gaussian_log_prob(z, 0.0, jnp.zeros(3)))
  kl, log_ratio = (np.asarray(a, np.float64) for a in f(mean, logvar))
  assert kl[2] == 0.0                               # exactly: μ = 0, σ = 1
  mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(log_ratio))
  assert np.all(np.abs(kl[:2] - mc[:2]) < 4 * se[:2]) and np.all(se[:2] < 0.01), (kl, mc, se)
  assert kl[0] > kl[1] > 0.1                        # rows differ: no averaging over the batch


def test_reparameterize_moves_mean_and_scale():
  mean, logvar = jnp.array([1.0, -2.0]), jnp.array([0.0, math.log(4.0)])

  @jax.jit
  def f(mean):
    z = vae.reparameterize(jax.random.key(3), jnp.broadcast_to(mean, (100_000, 2)),
                           jnp.broadcast_to(logvar, (100_000, 2)))
    grad = jax.grad(lambda m: jnp.sum(vae.reparameterize(jax.random.key(1), m, logvar)))(mean)
    return z, grad
  z, grad = (np.asarray(a) for a in f(mean))
  np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(z.std(0), [1.0, 2.0], rtol=0.02)
  np.testing.assert_allclose(grad, 1.0)              # dz/dμ = 1: the gradient flows through z


def test_decoder_log_likelihoods_match_references_and_stay_finite():
  x = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
  logits = np.array([[-2.0, 0.5, 3.0, 1.0], [0.1, -0.7, 2.0, -4.0]])
  p = 1 / (1 + np.exp(-logits))
  naive = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), -1)        # fine away from saturation
  xg, mean = np.array([[0.0, 0.4, -1.0]]), np.array([[0.2, -1.0, 0.5]])
  logvar = np.array([0.3, -0.5, 1.0])
  sat_x, sat_logits = jnp.array([[1.0, 0.0]]), jnp.array([[-100.0, 100.0]])

  @jax.jit
  def f():
    return (vae.bernoulli_log_likelihood(x, logits),
            # saturated: x = 1 at ℓ = −100 and x = 0 at ℓ = +100 cost 100 nats each, where the
            # naive log(1 − sigmoid(100)) = log 0 = −inf in fp32
            vae.bernoulli_log_likelihood(sat_x, sat_logits),
            jnp.sum(sat_x * jnp.log(jax.nn.sigmoid(sat_logits))
                    + (1 - sat_x) * jnp.log(1 - jax.nn.sigmoid(sat_logits)), -1),
            vae.gaussian_log_likelihood(xg, mean, logvar),
            vae.gaussian_log_likelihood(xg, mean, 0.3),
            jnp.sum(norm.logpdf(xg, mean, jnp.exp(0.5 * logvar)), -1),
            jnp.sum(norm.logpdf(xg, mean, math.exp(0.15)), -1))
  bern, big, big_naive, gauss, gauss_fixed, ref, ref_fixed = f()
  np.testing.assert_allclose(bern, naive, rtol=1e-6)
  np.testing.assert_allclose(big, [-200.0], rtol=1e-6)
  assert np.isneginf(big_naive[0])
  np.testing.assert_allclose(gauss, ref, rtol=1e-6)
  np.testing.assert_allclose(gauss_fixed, ref_fixed, rtol=1e-6)


def test_elbo_equals_log_px_at_the_true_posterior():
  model, w, b = linear_gaussian()
  x = data(6)
  log_px = exact_log_px(x, w, b)
  assert np.ptp(log_px) > 1.0                        # rows differ

  @jax.jit
  def f(x):        # the closed form, and the single-sample ELBO at 20k draws per row
    rep = jnp.repeat(x, 20_000, axis=0)
    return analytic_elbo(model, x, w), vae.elbo(model, rep, jax.random.key(0)).elbo
  analytic, e = (np.asarray(a, np.float64) for a in f(x))
  np.testing.assert_allclose(analytic, log_px, rtol=1e-5)             # MC-free
  e = e.reshape(6, 20_000)
  se = e.std(1) / math.sqrt(20_000)
  assert np.all(np.abs(e.mean(1) - log_px) < 4 * se) and np.all(se < 0.02), (e.mean(1), se)
  assert np.all(e.std(1) > 0.1)                     # its single draws do vary


def test_elbo_gap_is_the_kl_to_the_true_posterior():
  """log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)) > 0, both sides in closed form."""
  true, w, b = linear_gaussian()
  model, _, _ = linear_gaussian(mean_shift=0.4, logvar_shift=0.6)
  x = data(6)

  @jax.jit
  def f(x):
    (mq, lq), (mp, lp) = model.encode(x), true.encode(x)
    kl = 0.5 * jnp.sum(lp - lq + (jnp.exp(lq) + (mq - mp) ** 2) / jnp.exp(lp) - 1.0, -1)
    return analytic_elbo(model, x, w), kl
  elbo, kl = f(x)
  gap = exact_log_px(x, w, b) - np.asarray(elbo)
  np.testing.assert_allclose(gap, kl, rtol=1e-4)
  assert np.all(gap > 0.1)


KS, ROWS, REPS = (1, 10, 100, 1000), 4, 200


@functools.partial(jax.jit, static_argnums=0)
def bounds(graphdef, state, x_RX, w):
  """For each of the R rows, REPS independent draws of L_K, K in KS ([K, R, REPS]; K = 1000 in
  3 chunks of 300 and a remainder of 100); L_100 again with the same key in 14 chunks of 7 and
  a remainder of 2; the closed-form ELBO [R]. One compile serves every linear-Gaussian model."""
  model = nnx.merge(graphdef, state)
  rep = jnp.repeat(x_RX, REPS, axis=0)
  lk = jnp.stack([vae.iwae_bound(model, rep, jax.random.key(k), k, chunk_size=300)
                  for k in KS]).reshape(len(KS), ROWS, REPS)
  chunked = vae.iwae_bound(model, rep, jax.random.key(100), 100, chunk_size=7)
  return lk, chunked.reshape(ROWS, REPS), analytic_elbo(model, x_RX, w)


def iwae_draws(model, w):
  graphdef, state = nnx.split(model)
  return (np.asarray(a, np.float64) for a in bounds(graphdef, state, data(ROWS), w))


def test_iwae_is_exact_at_the_true_posterior_for_every_k():
  """Every weight p(x, z)/q(z|x) equals p(x), so L_K = log p(x) row by row for all K: no
  Monte-Carlo error, and each row's bound is its own x's (no mixing across rows)."""
  model, w, b = linear_gaussian()
  lk, chunked, _ = iwae_draws(model, w)
  log_px = exact_log_px(data(ROWS), w, b)
  assert np.ptp(log_px) > 1.0
  for draws in (*lk, chunked):
    np.testing.assert_allclose(draws, np.repeat(log_px[:, None], REPS, 1), rtol=2e-6)


def test_iwae_rises_with_k_towards_log_px_and_l1_is_the_elbo():
  """q = true posterior with its mean shifted by 1: log p(x) − L_K ≈ 5.6, 2.3, 1.0, 0.4 nats."""
  model, w, b = linear_gaussian(mean_shift=1.0)
  lk, _, elbo = iwae_draws(model, w)
  means, ses = lk.mean(-1), lk.std(-1) / math.sqrt(REPS)              # [K, rows]
  log_px = exact_log_px(data(ROWS), w, b)
  assert np.all(np.abs(means[0] - elbo) < 4 * ses[0]), (means[0], elbo, ses[0])   # L_1 = ELBO
  assert np.all(np.diff(means, axis=0) > 4 * np.sqrt(ses[1:] ** 2 + ses[:-1] ** 2)), means
  assert np.all(means <= log_px + 4 * ses)                            # a lower bound
  assert np.all(log_px - means[-1] < 0.15 * (log_px - means[0])), (log_px, means)


def test_iwae_does_not_depend_on_the_chunking():
  """Sample k's noise is keyed by k, so 100 samples in one chunk or in chunks of 7 (plus a
  remainder of 2) give the same L_100 draw for draw."""
  model, w, _ = linear_gaussian(mean_shift=1.0)
  lk, chunked, _ = iwae_draws(model, w)
  assert np.ptp(chunked) > 0.1                                        # draws do differ
  np.testing.assert_allclose(chunked, lk[KS.index(100)], rtol=1e-6)


@pytest.mark.parametrize("decoder,extra", [("bernoulli", 0), ("gaussian", 0),
                                           ("gaussian_learned", 11)])
def test_parameter_count_matches_hand_formula(decoder, extra):
  state = nnx.state(nnx.eval_shape(lambda: vae.VAE(11, 3, (7, 5), decoder, rngs=nnx.Rngs(0))),
                    nnx.Param)
  n = sum(math.prod(p.shape) for p in jax.tree.leaves(state))
  enc = (11 * 7 + 7) + (7 * 5 + 5) + (5 * 6 + 6)            # 11 → 7 → 5 → (μ, log σ²) 2·3
  dec = (3 * 5 + 5) + (5 * 7 + 7) + (7 * 11 + 11)           # 3 → 5 → 7 → 11
  assert n == enc + dec + extra


def test_rows_do_not_mix():
  """On an MLP VAE, row i's ELBO depends on x_i only: changing the other rows leaves row 0's
  value bit-identical (same key), and rows with different x get different values. (IWAE's rows
  are checked exactly above: each row's L_K is its own log p(x).)"""
  @jax.jit
  def f(x):
    return vae.elbo(vae.VAE(6, 3, (8,), rngs=nnx.Rngs(0)), x, jax.random.key(1)).elbo
  x = jax.random.uniform(jax.random.key(0), (4, 6))
  value = np.asarray(f(x))
  changed = np.asarray(f(x.at[1:].set(jax.random.uniform(jax.random.key(1), (3, 6)))))
  assert value[0] == changed[0] and np.all(value[1:] != changed[1:])
  assert len(set(np.round(value, 4))) == 4


ABSTRACT = lambda: nnx.eval_shape(lambda: vae.VAE(6, 2, (4,), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("build,needle", [
    (lambda: vae.VAE(6, 0, rngs=nnx.Rngs(0)), "latent_dim must be a positive integer"),
    (lambda: vae.VAE(6, 2, decoder="poisson", rngs=nnx.Rngs(0)), "unknown decoder 'poisson'"),
    (lambda: vae.VAE(6, 2, hidden=(4, 0), rngs=nnx.Rngs(0)), "hidden widths must be positive"),
    (lambda: vae.VAE(6, 2, activation="gelu", rngs=nnx.Rngs(0)), "unknown activation 'gelu'"),
    (lambda: vae.iwae_bound(ABSTRACT(), jnp.zeros((2, 6)), jax.random.key(0), 0),
     "num_samples must be a positive integer"),
    (lambda: vae.elbo(ABSTRACT(), jnp.zeros((2, 7)), jax.random.key(0)),
     r"expects x of shape \[B, 6\]"),
])
def test_bad_inputs_are_one_line(build, needle):
  with pytest.raises(ValueError, match=needle) as e:
    build()
  assert "\n" not in str(e.value)
