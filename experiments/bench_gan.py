"""GAN step benchmarks (`genfm-bench gan_step`): the train-step time of DCGAN and WGAN-GP on
32×32×1 images, split into its discriminator / critic and generator updates.

Models: `foundations/dcgan.py` at the `fashion_dcgan.py` sizes (base width 16, Z = 64), batch m =
64 per update, Adam. Each update (forward + backward + Adam) is jitted and timed alone, as the
loop runs them one after the other inside one step:
  gan_step  per objective: d_update_ms (one D update: DCGAN's −V of 1406.2661 with batch-norm D,
            or WGAN-GP's eq. (3) of 1704.00028 with its double backward through a layer-norm
            critic), g_update_ms, and step_ms = critic_steps · d_update_ms + g_update_ms
            (n_critic = 1 for DCGAN, 5 for WGAN-GP, Alg. 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments import bench
from genfm.foundations import dcgan, gan

WIDTH, LATENT, BATCH = 16, 64, 64


def _updater(graphdef, tx, loss):
  """jit((params, rest, opt, *args) → (params, opt, loss)): one Adam step of `loss(model, *args)`
  (train mode; batch statistics it writes are dropped, as they do not change the timing)."""

  @jax.jit
  def step(params, rest, opt, *args):
    f = lambda p: loss(nnx.merge(graphdef, p, rest, copy=True), *args)
    value, grads = jax.value_and_grad(f)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  return step


def gan_step(emit) -> None:
  kx, kz, ke = jax.random.split(jax.random.key(0), 3)
  x_BHWC = jax.random.uniform(kx, (BATCH, 32, 32, 1), minval=-1.0, maxval=1.0)
  z_BZ = jax.random.normal(kz, (BATCH, LATENT))
  eps_B = jax.random.uniform(ke, (BATCH,))
  tx = optax.adam(1e-4, b1=0.5, b2=0.9)
  for objective, norm, k in (("dcgan", "batch", 1), ("wgan_gp", "layer", 5)):
    gen = dcgan.DCGANGenerator(LATENT, 1, WIDTH, rngs=nnx.Rngs(0))
    disc = dcgan.DCGANDiscriminator(1, WIDTH, norm, rngs=nnx.Rngs(1))
    g_def, g_params, g_rest = nnx.split(gen, nnx.Param, ...)
    d_def, d_params, d_rest = nnx.split(disc, nnx.Param, ...)
    fake_BHWC = gen(z_BZ)
    # D is rebuilt inside G's loss (copy=True: fresh variables its batch norm may write to).
    d_of = lambda dp, dr: nnx.merge(d_def, dp, dr, copy=True)
    if objective == "dcgan":
      d_loss = lambda d, real, fake: gan.discriminator_loss(d(real), d(fake))
      g_loss = lambda g, dp, dr, z: gan.generator_loss(d_of(dp, dr)(g(z)))
      d_args = (x_BHWC, fake_BHWC)
    else:
      d_loss = lambda d, real, fake, eps: gan.wgan_gp_critic_loss(d, real, fake, eps)[0]
      g_loss = lambda g, dp, dr, z: gan.wgan_generator_loss(d_of(dp, dr)(g(z)))
      d_args = (x_BHWC, fake_BHWC, eps_B)
    d_step, g_step = _updater(d_def, tx, d_loss), _updater(g_def, tx, g_loss)
    t_d = bench.time_fn(d_step, d_params, d_rest, tx.init(d_params), *d_args, warmup=1, iters=3)
    t_g = bench.time_fn(g_step, g_params, g_rest, tx.init(g_params), d_params, d_rest, z_BZ,
                        warmup=1, iters=3)
    count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    emit({"name": "gan_step", "objective": objective, "batch": BATCH, "width": WIDTH,
          "critic_steps": k, "generator_params": count(gen), "discriminator_params": count(disc),
          "d_update_ms": 1e3 * t_d, "g_update_ms": 1e3 * t_g, "step_ms": 1e3 * (k * t_d + t_g),
          "d_share": k * t_d / (k * t_d + t_g)})
