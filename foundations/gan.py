"""Generative adversarial nets: the minimax and non-saturating losses, and two small MLPs.

Goodfellow et al. 2014, arXiv:1406.2661. With the discriminator's logit ℓ(x) and D = σ(ℓ),
the value function is
    V(D, G) = E_x[log D(x)] + E_z[log(1 − D(G(z)))]                          eq. (1)
D ascends V, G descends it. In logit form (log σ(ℓ) = −softplus(−ℓ), log(1 − σ(ℓ)) =
−softplus(ℓ), which stay finite where σ saturates):
    L_D           = E[softplus(−ℓ(x))] + E[softplus(ℓ(G(z)))]            (= −V)
    L_G minimax   = E[log(1 − D(G(z)))] = −E[softplus(ℓ(G(z)))]
    L_G non-sat.  = −E[log D(G(z))]     =  E[softplus(−ℓ(G(z)))]         (Sec. 3)
The non-saturating loss has the same fixed point but strong gradients early in training, when
D rejects G's samples confidently (the minimax loss's gradient vanishes there). At D ≡ 1/2
(ℓ = 0): L_D = 2 ln 2, L_G = ln 2 (non-saturating) or −ln 2 (minimax); the optimum of Prop. 1,
D*(x) = p_data(x) / (p_data(x) + p_g(x)), is 1/2 exactly when p_g = p_data (Thm. 1).
Losses are computed in fp32: softplus of bf16 logits loses ln 2's digits.

Wasserstein GAN (Arjovsky et al. 2017, arXiv:1701.07875) with the gradient penalty of WGAN-GP
(Gulrajani et al. 2017, arXiv:1704.00028). The critic D outputs an unbounded score, and
    L_critic = E[D(x̃)] − E[D(x)] + λ E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²],   L_G = −E[D(x̃)]     eq. (3)
with x̃ = G(z) and x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] drawn per example (Alg. 1, λ = 10): the
penalty holds D near 1-Lipschitz along lines between real and fake points, in place of WGAN's
weight clipping. The per-example gradient ∇_x̂ D(x̂) is the gradient of Σ_b D(x̂_b), which holds
only for a critic whose output b depends on input b alone: no batch norm in the critic (§4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

GENERATOR_LOSSES = ("non_saturating", "minimax")
GP_LAMBDA = 10.0          # λ of Alg. 1, 1704.00028


def discriminator_loss(logits_real_B: jax.Array, logits_fake_B: jax.Array) -> jax.Array:
  """L_D = −E[log D(x)] − E[log(1 − D(G(z)))] from logits — eq. (1) of 1406.2661, negated."""
  real = jax.nn.softplus(-logits_real_B.astype(jnp.float32))
  fake = jax.nn.softplus(logits_fake_B.astype(jnp.float32))
  return jnp.mean(real) + jnp.mean(fake)


def generator_loss(logits_fake_B: jax.Array, kind: str = "non_saturating") -> jax.Array:
  """L_G from the discriminator's logits on G(z): non-saturating −E[log D] (Sec. 3) or the
  minimax E[log(1 − D)] of eq. (1)."""
  if kind not in GENERATOR_LOSSES:
    raise ValueError(f"unknown generator loss {kind!r}; valid: {', '.join(GENERATOR_LOSSES)}")
  logits = logits_fake_B.astype(jnp.float32)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-logits))
  return -jnp.mean(jax.nn.softplus(logits))


def wgan_critic_loss(scores_real_B: jax.Array, scores_fake_B: jax.Array) -> jax.Array:
  """E[D(x̃)] − E[D(x)]: the critic's part of eq. (3) of 1704.00028 without the penalty; it falls
  as D scores real points above fakes (its negation estimates W₁, eq. (2) of 1701.07875)."""
  return jnp.mean(scores_fake_B.astype(jnp.float32)) - jnp.mean(scores_real_B.astype(jnp.float32))


def wgan_generator_loss(scores_fake_B: jax.Array) -> jax.Array:
  """L_G = −E[D(G(z))] (Alg. 1 of 1704.00028, line 11)."""
  return -jnp.mean(scores_fake_B.astype(jnp.float32))


def interpolate(real_BX: jax.Array, fake_BX: jax.Array, eps_B: jax.Array) -> jax.Array:
  """x̂_b = ε_b x_b + (1 − ε_b) x̃_b, one ε per example (Alg. 1 of 1704.00028, line 6)."""
  if real_BX.shape != fake_BX.shape or eps_B.shape != real_BX.shape[:1]:
    raise ValueError(f"interpolate needs real and fake of one shape [B, ...] and ε of shape [B]; "
                     f"got {real_BX.shape}, {fake_BX.shape} and {eps_B.shape}")
  eps = eps_B.reshape((-1,) + (1,) * (real_BX.ndim - 1)).astype(real_BX.dtype)
  return eps * real_BX + (1.0 - eps) * fake_BX


def gradient_penalty(critic, real_BX: jax.Array, fake_BX: jax.Array, eps_B: jax.Array,
                     lam: float = GP_LAMBDA) -> jax.Array:
  """λ E_b[(‖∇_x̂ D(x̂_b)‖₂ − 1)²] at the per-example interpolates (eq. (3) of 1704.00028).

  `critic` maps [B, ...] → scores [B] with no interaction between rows (no batch norm), so
  ∇ Σ_b D(x̂_b) stacks the per-example gradients. The penalty is differentiable in the critic's
  parameters (a double backward pass, as in the paper's code).
  """
  x_hat = interpolate(real_BX, fake_BX, eps_B).astype(jnp.float32)
  grad_BX = jax.grad(lambda x: jnp.sum(critic(x).astype(jnp.float32)))(x_hat)
  sq_B = jnp.sum(jnp.square(grad_BX).reshape(grad_BX.shape[0], -1), axis=1)
  # +1e-12 inside the root: d√s/ds is infinite at s = 0 (a flat critic), which would give NaN
  # parameter gradients; the shift changes ‖∇‖ by < 1e-6 wherever it is not ~0.
  norm_B = jnp.sqrt(sq_B + 1e-12)
  return lam * jnp.mean(jnp.square(norm_B - 1.0))


def wgan_gp_critic_loss(critic, real_BX: jax.Array, fake_BX: jax.Array, eps_B: jax.Array,
                        lam: float = GP_LAMBDA) -> tuple[jax.Array, dict]:
  """The whole critic loss of eq. (3), 1704.00028, at interpolation weights ε_B ~ U[0, 1] (drawn
  by the caller, laid out like the batch); returns (loss, {"wasserstein": E[D(x)] − E[D(x̃)],
  "gradient_penalty": λ E[(‖∇D(x̂)‖ − 1)²]})."""
  s_real_B, s_fake_B = critic(real_BX), critic(fake_BX)
  w = wgan_critic_loss(s_real_B, s_fake_B)
  gp = gradient_penalty(critic, real_BX, fake_BX, eps_B, lam)
  return w + gp, {"wasserstein": -w, "gradient_penalty": gp}


class MLPGenerator(nnx.Module):
  """z [B, Z] ~ N(0, I) → x [B, D]: Linear–ReLU blocks and a linear output."""

  def __init__(self, latent_dim: int, data_dim: int, hidden: int = 128, depth: int = 3, *,
               rngs: nnx.Rngs):
    widths = (latent_dim,) + (hidden,) * depth
    self.latent_dim = latent_dim
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.out = nnx.Linear(hidden, data_dim, rngs=rngs)

  def __call__(self, z_BZ: jax.Array) -> jax.Array:
    h = z_BZ
    for layer in self.layers:
      h = jax.nn.relu(layer(h))
    return self.out(h)


class MLPDiscriminator(nnx.Module):
  """x [B, D] → logit ℓ(x) [B]: Linear–LeakyReLU(0.2) blocks (DCGAN's activation, 1511.06434)."""

  def __init__(self, data_dim: int, hidden: int = 128, depth: int = 3, *, rngs: nnx.Rngs):
    widths = (data_dim,) + (hidden,) * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.out = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x_BD: jax.Array) -> jax.Array:
    h = x_BD
    for layer in self.layers:
      h = jax.nn.leaky_relu(layer(h), 0.2)
    return self.out(h)[:, 0]
