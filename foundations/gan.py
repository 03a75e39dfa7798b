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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

GENERATOR_LOSSES = ("non_saturating", "minimax")


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
