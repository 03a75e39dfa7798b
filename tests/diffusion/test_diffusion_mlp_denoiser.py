"""Tests for genfm.diffusion.mlp_denoiser: parameter count by hand, and training to the
Bayes-optimal ε-loss of Gaussian data (closed form), a golden-value test."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.diffusion import gaussian
from genfm.diffusion import mlp_denoiser
from genfm.diffusion import schedules


def test_mlp_param_count():
  cfg = mlp_denoiser.MLPDenoiserConfig()          # D=2, hidden 128, 3 layers, temb 32
  model = nnx.eval_shape(lambda: mlp_denoiser.MLPDenoiser(cfg, rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  lin = lambda a, b: a * b + b
  assert n == (lin(32, 128) + lin(128, 32)                       # time-embedding MLP
               + lin(2 + 32, 128) + 2 * lin(128, 128) + lin(128, 2))
  cond = nnx.eval_shape(lambda: mlp_denoiser.MLPDenoiser(
      mlp_denoiser.MLPDenoiserConfig(num_classes=10), rngs=nnx.Rngs(0)))
  n_cond = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(cond, nnx.Param)))
  assert n_cond - n == (10 + 1) * 32                             # label table incl. null label


def test_training_reaches_bayes_optimal_eps_loss():
  """For x₀ ~ N(μ, s² I) the best ε-predictor has loss E_t[ᾱ s² / (ᾱ s² + 1 − ᾱ)] (mean over
  t uniform on 1..T); 400 Adam steps of L_simple (eq. 14 of 2006.11239) get within 8%."""
  sched = schedules.make_schedule("linear", 1000)
  mu, sd = jnp.array([1.0, -1.0]), 0.5
  cfg = mlp_denoiser.MLPDenoiserConfig(hidden=64, num_layers=2, temb_dim=16)
  # rbg keys: the initialisers compile several times faster on CPU than threefry's.
  model = mlp_denoiser.MLPDenoiser(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  graphdef, params = nnx.split(model)
  tx = optax.adam(3e-3)

  def loss_fn(p, x0, key):
    m = nnx.merge(graphdef, p)
    return gaussian.diffusion_loss(lambda x, t: m(x, t), sched, x0, key)

  @jax.jit
  def train(params, key):
    def step(carry, k):
      p, opt_state = carry
      k1, k2 = jax.random.split(k)
      x0 = mu + sd * jax.random.normal(k1, (256, 2))
      loss, grads = jax.value_and_grad(loss_fn)(p, x0, k2)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss
    (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 400))
    return p, losses

  params, losses = train(params, jax.random.key(1, impl="rbg"))
  # Zero-initialised output layer ⇒ the first loss is E[ε²] = 1 up to sampling noise.
  np.testing.assert_allclose(losses[0], 1.0, atol=0.15)
  ab = np.asarray(schedules.linear_betas(1000))
  ab = np.cumprod(1 - ab)
  bayes = float(np.mean(ab * sd ** 2 / (ab * sd ** 2 + 1 - ab)))      # 0.17305
  np.testing.assert_allclose(bayes, 0.17305, atol=1e-5)
  rng = np.random.default_rng(0)
  n = 8192
  x0 = jnp.asarray(np.asarray(mu) + sd * rng.normal(size=(n, 2)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, n))
  trained = nnx.merge(graphdef, params)
  loss = float(gaussian.diffusion_loss_at(lambda x, t: trained(x, t), sched, x0, t, noise))
  assert 0.95 * bayes < loss < 1.08 * bayes, (loss, bayes)
