"""Variational autoencoder and the importance-weighted bound.

Kingma & Welling 2013, arXiv:1312.6114 (Auto-Encoding Variational Bayes). An encoder
q_φ(z|x) = N(μ_φ(x), diag σ²_φ(x)) and a decoder p_θ(x|z) with prior p(z) = N(0, I) are
trained together on the evidence lower bound
    L(θ, φ; x) = −KL(q_φ(z|x) ‖ p(z)) + E_q[log p_θ(x|z)] ≤ log p_θ(x)          eq. (10)
with the KL in closed form (App. B) and the expectation estimated by one reparameterised
sample z = μ + σ ⊙ ε, ε ~ N(0, I) (§2.4), so the gradient flows through μ and σ.
`beta` weights the KL (β-VAE, Higgins et al. 2017, ICLR: β > 1 trades reconstruction for a
more factorised code); β = 1 is the bound itself.

Burda, Grosse & Salakhutdinov 2015, arXiv:1509.00519 (IWAE): with K samples z_k ~ q(z|x),
    L_K = E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)]                                   eq. (8)
L_1 is the ELBO's expectation, L_K ≤ L_{K+1} ≤ log p(x), and L_K → log p(x) as K → ∞
(Thm. 1). With K = 5000 it is the standard estimate of a VAE's test log-likelihood.

Decoders (`DECODERS`): "bernoulli" — logits ℓ, log p(x|z) = Σ x ℓ − softplus(ℓ), for binary
(binarised) pixels: the model of the MNIST log-likelihood tables, in nats of a discrete
distribution. "gaussian" — means, fixed per-pixel log-variance `decoder_logvar`;
"gaussian_learned" — means and a learned per-pixel log-variance: densities of continuous data
(not comparable with the Bernoulli's probabilities), and with a fixed variance the
linear-Gaussian model (probabilistic PCA) whose log p(x) is exact, which the tests use.

Shapes: B batch, X input features (flattened pixels), Z latent size, M importance samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

DECODERS = ("bernoulli", "gaussian", "gaussian_learned")
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mean_BZ: jax.Array, logvar_BZ: jax.Array) -> jax.Array:
  """KL(N(μ, diag σ²) ‖ N(0, I)) per row [B] — App. B of 1312.6114. In fp32: the sum over Z
  of terms near 0 loses its digits in bf16."""
  mean, logvar = mean_BZ.astype(jnp.float32), logvar_BZ.astype(jnp.float32)
  # −KL = ½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)   — App. B of 1312.6114
  return -0.5 * jnp.sum(1.0 + logvar - mean ** 2 - jnp.exp(logvar), axis=-1)


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = μ + σ ⊙ ε, ε ~ N(0, I) of μ's shape — §2.4 of 1312.6114 (σ = exp(½ log σ²))."""
  eps = jax.random.normal(key, mean.shape, jnp.float32)
  return mean + jnp.exp(0.5 * logvar) * eps


def diagonal_gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; μ, diag σ²) summed over the last axis (fp32), broadcasting leading axes."""
  z, mean, logvar = (jnp.asarray(a, jnp.float32) for a in (z, mean, logvar))
  return -0.5 * jnp.sum(_LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def bernoulli_log_likelihood(x_BX: jax.Array, logits_BX: jax.Array) -> jax.Array:
  """log Bernoulli(x; σ(ℓ)) summed over X → [...] (leading axes broadcast).

  log σ(ℓ) = −softplus(−ℓ) and log(1 − σ(ℓ)) = −softplus(ℓ) stay exact where σ saturates
  (x = 0 at ℓ = 100 costs 100 nats; the naive log(1 − σ(100)) is log 0 = −inf in fp32). In
  fp32 because a sum over 784 pixels of bf16 terms is off by whole nats. For x in [0, 1] it
  is the negated binary cross-entropy.
  """
  x, logits = x_BX.astype(jnp.float32), logits_BX.astype(jnp.float32)
  return -jnp.sum(x * jax.nn.softplus(-logits) + (1.0 - x) * jax.nn.softplus(logits), axis=-1)


def gaussian_log_likelihood(x_BX: jax.Array, mean_BX: jax.Array, logvar) -> jax.Array:
  """log N(x; mean, diag σ²) summed over X → [...]; `logvar` a scalar or [X] (fixed or learned)."""
  logvar = jnp.broadcast_to(jnp.asarray(logvar, jnp.float32), mean_BX.shape[-1:])
  return diagonal_gaussian_log_prob(x_BX, mean_BX, logvar)


class VAE(nnx.Module):
  """x [B, X] → encoder MLP → (μ, log σ²) [B, Z] each; z [..., Z] → decoder MLP → [..., X]
  (Bernoulli logits or Gaussian means). `hidden` lists the encoder's widths (the decoder uses
  them reversed); `hidden=()` makes both maps affine (the linear-Gaussian model)."""

  def __init__(self, input_dim: int, latent_dim: int, hidden: Sequence[int] = (512, 256),
               decoder: str = "bernoulli", decoder_logvar: float = 0.0,
               activation: str = "relu", *, rngs: nnx.Rngs):
    hidden = tuple(hidden)
    for name, v in (("input_dim", input_dim), ("latent_dim", latent_dim)):
      if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"VAE: {name} must be a positive integer, got {v!r}")
    if any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden):
      raise ValueError(f"VAE: hidden widths must be positive integers, got {hidden!r}")
    if decoder not in DECODERS:
      raise ValueError(f"VAE: unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"VAE: unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    self.input_dim, self.latent_dim, self.decoder_kind = input_dim, latent_dim, decoder
    self.activation = activation
    enc = (input_dim,) + hidden
    self.encoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(enc[:-1], enc[1:])])
    self.to_stats = nnx.Linear(enc[-1], 2 * latent_dim, rngs=rngs)     # → [μ, log σ²]
    dec = (latent_dim,) + hidden[::-1]
    self.decoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dec[:-1], dec[1:])])
    self.to_output = nnx.Linear(dec[-1], input_dim, rngs=rngs)
    if decoder == "gaussian_learned":
      self.logvar_X = nnx.Param(jnp.full((input_dim,), decoder_logvar, jnp.float32))
    else:
      self.logvar_X = None
    self.decoder_logvar = float(decoder_logvar)

  def encode(self, x_BX: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(μ [B, Z], log σ² [B, Z]) of q(z|x)."""
    if x_BX.ndim != 2 or x_BX.shape[1] != self.input_dim:
      raise ValueError(f"VAE.encode expects x of shape [B, {self.input_dim}], got "
                       f"{tuple(x_BX.shape)}; flatten images to [B, H·W·C] first")
    act, h = ACTIVATIONS[self.activation], x_BX.astype(jnp.float32)
    for layer in self.encoder:
      h = act(layer(h))
    stats = self.to_stats(h)
    return stats[:, :self.latent_dim], stats[:, self.latent_dim:]

  def decode(self, z_BZ: jax.Array) -> jax.Array:
    """Decoder output [..., X]: Bernoulli logits or Gaussian means; leading axes pass through."""
    act, h = ACTIVATIONS[self.activation], z_BZ
    for layer in self.decoder:
      h = act(layer(h))
    return self.to_output(h)

  def mean_image(self, z_BZ: jax.Array) -> jax.Array:
    """E[x|z] [..., X]: σ(logits) for Bernoulli, the means for Gaussian decoders."""
    out = self.decode(z_BZ)
    return jax.nn.sigmoid(out) if self.decoder_kind == "bernoulli" else out

  def log_likelihood(self, x_BX: jax.Array, z_BZ: jax.Array) -> jax.Array:
    """log p(x|z) [..., B] for z [..., B, Z] (a leading sample axis broadcasts over x)."""
    out = self.decode(z_BZ)
    if self.decoder_kind == "bernoulli":
      return bernoulli_log_likelihood(x_BX, out)
    logvar = self.logvar_X[...] if self.logvar_X is not None else self.decoder_logvar
    return gaussian_log_likelihood(x_BX, out, logvar)


class Elbo(NamedTuple):
  """Per-example [B] terms: elbo = log_likelihood − β·kl."""
  elbo: jax.Array
  log_likelihood: jax.Array   # log p(x|z) at one z ~ q(z|x)
  kl: jax.Array               # KL(q(z|x) ‖ p(z)), closed form


def elbo(model, x_BX: jax.Array, key: jax.Array, beta: float = 1.0) -> Elbo:
  """Single-sample ELBO per example, eq. (10) of 1312.6114, with β on the KL (β-VAE).

  `model` needs `encode(x) → (μ, log σ²)` and `log_likelihood(x, z) → [B]` (a `VAE`).
  Its expectation over `key` is L_1 of 1509.00519; with β = 1 it is ≤ log p(x).
  """
  mean_BZ, logvar_BZ = model.encode(x_BX)
  z_BZ = reparameterize(key, mean_BZ, logvar_BZ)                           # §2.4
  log_lik_B = model.log_likelihood(x_BX, z_BZ).astype(jnp.float32)
  kl_B = gaussian_kl(mean_BZ, logvar_BZ)                                   # App. B
  return Elbo(log_lik_B - beta * kl_B, log_lik_B, kl_B)                   # eq. (10)


def iwae_bound(model, x_BX: jax.Array, key: jax.Array, num_samples: int,
               chunk_size: int = 500) -> jax.Array:
  """L_K per example [B], eq. (8) of 1509.00519, K = `num_samples`, one draw of the K samples.

  Memory: the K samples go through the decoder `chunk_size` at a time under `lax.scan` (plus
  one shorter chunk for the remainder), so the peak is one chunk's decoder activations,
  [chunk_size, B, width] — for K = 5000 on a 784-pixel decoder, B = 50 and chunk 500 that is
  500·50·784·4 B ≈ 78 MB per layer output instead of 0.8 GB. Each chunk's log-weights are
  reduced to a logsumexp [B] at once; the chunks' logsumexps are combined at the end (exact:
  logsumexp is associative). Sample k's noise comes from fold_in(key, k), so the result does
  not depend on `chunk_size`. All in fp32: log-weights of −200 nats lose their differences
  in bf16, and the logsumexp subtracts the max first.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"iwae_bound: num_samples must be a positive integer (K), got "
                     f"{num_samples!r}")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"iwae_bound: chunk_size must be a positive integer, got {chunk_size!r}")
  mean_BZ, logvar_BZ = model.encode(x_BX)
  mean_BZ, logvar_BZ = mean_BZ.astype(jnp.float32), logvar_BZ.astype(jnp.float32)
  std_BZ = jnp.exp(0.5 * logvar_BZ)

  def chunk_lse(first: jax.Array, size: int) -> jax.Array:
    keys_M = jax.vmap(lambda k: jax.random.fold_in(key, k))(first + jnp.arange(size))
    eps_MBZ = jax.vmap(lambda k: jax.random.normal(k, mean_BZ.shape, jnp.float32))(keys_M)
    z_MBZ = mean_BZ + std_BZ * eps_MBZ                                     # §2.4 of 1312.6114
    log_lik_MB = model.log_likelihood(x_BX, z_MBZ).astype(jnp.float32)
    log_prior_MB = -0.5 * jnp.sum(_LOG_2PI + z_MBZ ** 2, axis=-1)         # log N(z; 0, I)
    # log q(z|x) with (z − μ)/σ = ε exactly: −½ Σ (log 2π + log σ² + ε²)
    log_q_MB = -0.5 * jnp.sum(_LOG_2PI + logvar_BZ + eps_MBZ ** 2, axis=-1)
    return jax.nn.logsumexp(log_lik_MB + log_prior_MB - log_q_MB, axis=0)  # [B]

  size = min(chunk_size, num_samples)
  full, rest = divmod(num_samples, size)
  _, lse_CB = jax.lax.scan(lambda c, i: (c, chunk_lse(i * size, size)), None,
                           jnp.arange(full))
  if rest:
    lse_CB = jnp.concatenate([lse_CB, chunk_lse(full * size, rest)[None]])
  # L_K = log (1/K) Σ_k w_k = logsumexp_k(log w_k) − log K     — eq. (8) of 1509.00519
  return jax.nn.logsumexp(lse_CB, axis=0) - math.log(num_samples)
