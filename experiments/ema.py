"""An exponential moving average (EMA) of the parameters, evaluated in place of the raw ones.

DDPM (Ho et al. 2020, arXiv:2006.11239, App. B) samples from an EMA of the weights, decay 0.9999;
the average of the late iterates (Polyak & Juditsky 1992) smooths the SGD noise that a sampler
integrating ε_θ over many steps would otherwise amplify. Key `ema_decay` of the config: 0 (the
default) keeps no average; d ∈ (0, 1) keeps one in `state["ema_params"]`, checkpointed with the
run, and the loop evaluates it (metrics as usual) beside the raw parameters (metrics `raw_*`).

Update after optimizer step k (k = 0, 1, ...; θ_{k+1} the parameters it produced):
    d_k = min(d, (1 + k) / (10 + k))            the warm-up of tf.train.ExponentialMovingAverage
                                                  with num_updates = k: early iterates are not
                                                  remembered for ~1/(1 − d) steps
    ē_{k+1} = d_k ē_k + (1 − d_k) θ_{k+1},       ē_0 = θ_0.
Kept in the parameters' dtype (fp32 here: a bf16 average would lose updates of relative size
below 2⁻⁸ · (1 − d) / d, i.e. all of them for d = 0.999).
"""

import jax
import jax.numpy as jnp

from genfm.experiments.errors import ConfigError


def ema_decay(config) -> float:
  """`config.ema_decay` checked: 0 (no EMA) or a decay in (0, 1)."""
  d = config.get("ema_decay", 0.0)
  if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
    raise ConfigError(f"config.ema_decay must be 0 (no parameter EMA) or a decay in (0, 1) such "
                      f"as 0.999, got {d!r}")
  return float(d)


def warmed_decay(decay: float, step: jax.Array) -> jax.Array:
  """d_k = min(d, (1 + k) / (10 + k)) for the update after optimizer step k."""
  k = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + k) / (10.0 + k))


def ema_update(ema, params, decay: float, step: jax.Array):
  """ē ← d_k ē + (1 − d_k) θ, leaf by leaf (θ the parameters after optimizer step `step`)."""
  d = warmed_decay(decay, step)
  # ē + (1 − d)(θ − ē): the same average, rounded better than dē + (1 − d)θ when ē ≈ θ.
  return jax.tree.map(lambda e, p: (e + (1.0 - d) * (p - e)).astype(e.dtype), ema, params)
