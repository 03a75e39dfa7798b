"""Policy-gradient losses for RL fine-tuning of language models: PPO, GAE, KL penalties, GRPO.

The pieces an RLHF / RL-from-verifiable-rewards step is assembled from, as pure jnp functions
(jit-able; hyperparameters are Python numbers checked eagerly, arrays may be traced):

- PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. (7)) with DAPO's
  asymmetric "clip-higher" (Yu et al. 2025, arXiv:2503.14476, eq. (10)), and the clipped value
  loss of the PPO2 / InstructGPT implementations (Ouyang et al. 2022, arXiv:2203.02155);
- generalized advantage estimation, GAE (Schulman et al. 2015, arXiv:1506.02438, eq. (16));
- KL estimators k1 / k2 / k3 (Schulman, "Approximating KL divergence",
  http://joschu.net/blog/kl-approx.html) and the adaptive KL coefficient of Ziegler et al. 2019
  (arXiv:1909.08593, eq. (2));
- group-relative advantages and the GRPO loss (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300,
  eq. (3)), Dr. GRPO's unbiased variant (Liu et al. 2025, arXiv:2503.20783, sec. 3.2), DAPO's
  overlong penalty (eq. (13)) and dynamic-sampling filter (eq. (11)).

Shapes: B sequences (for group functions: B groups), T response positions, G samples per group
(G is the group size here, not WORKSPACE.md's heads-per-KV-head). `mask_BT` is 1 for a real
response token and 0 for padding / positions after the end; masked positions may hold anything
(even inf): they are selected out with `jnp.where` before any arithmetic that could reach a
gradient, so they get exactly zero gradient.

Conventions, stated once:

- Everything is computed in fp32 (inputs are cast): policy ratios and KL estimates are
  differences of nearly equal log-probs; bf16 spaces log-probs in [−8, −4] 1/32 apart, so a
  ratio of 1.01 would round to 1 and a small KL to 0.
- Losses are to be *minimized*: the policy term is −min(ρA, clip(ρ)A), the KL term is
  +kl_coef · KL. Advantages > 0 make a token more likely.
- The ratio is ρ = exp(logp − old_logp) (new over old). `old_logp`, `ref_logp`, advantages,
  returns and old values are constants: gradients are stopped there.
- KL estimators take samples from the policy (`logp`) and log r = ref_logp − logp; k1 = −log r,
  k2 = ½(log r)², k3 = (r − 1) − log r; k1 and k3 are unbiased for KL(π‖π_ref), k3 ≥ 0.
- Group std uses Bessel's correction (ddof = 1), as TRL (torch.std) and verl do;
  `whiten` uses the population variance (ddof = 0) over the masked entries.
- Loss aggregation (`AGGREGATIONS`), over the real tokens:
    token_mean               Σ_bt ℓ·m / Σ_bt m            (DAPO eq. (12): token level)
    seq_mean_token_mean      1/B Σ_b (Σ_t ℓ·m / Σ_t m)    (GRPO eq. (3): 1/G Σ_i 1/|o_i| Σ_t)
    seq_mean_token_sum_norm  1/B Σ_b (Σ_t ℓ·m / max_len)  (Dr. GRPO: no 1/|o_i| length bias;
                                                           max_len a constant, default T)
  A sequence without real tokens contributes 0 (counts are floored at 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
ADVANTAGE_KINDS = ("grpo", "drgrpo")


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def _check_choice(what: str, value, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")


def _check_in(name: str, x, lo: float, hi: float) -> None:
  """lo ≤ x ≤ hi for a concrete hyperparameter (a traced one is the caller's business)."""
  if isinstance(x, jax.core.Tracer):
    return
  if not lo <= float(x) <= hi:
    raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {float(x):g}")


def _check_same_shape(**arrays) -> None:
  shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items() if v is not None}
  if len(set(shapes.values())) > 1:
    raise ValueError("shape mismatch: " + ", ".join(f"{k} {list(s)}" for k, s in shapes.items()))


def _masked_mean(x_BT: Array, mask_BT: Array) -> Array:
  m_BT = _f32(mask_BT)
  return jnp.sum(jnp.where(m_BT > 0, x_BT, 0.0)) / jnp.maximum(jnp.sum(m_BT), 1.0)


# ----------------------------------------------------------------------------- KL estimators


def kl_estimate(logp_BT: Array, ref_logp_BT: Array, kind: str = "k3") -> Array:
  """Per-token estimate of KL(π‖π_ref) from tokens sampled from π: [B, T] (not masked)."""
  _check_choice("KL estimator", kind, KL_ESTIMATORS)
  log_r_BT = _f32(ref_logp_BT) - _f32(logp_BT)            # fp32 before the difference
  if kind == "k1":
    return -log_r_BT                                      # k1 = −log r
  if kind == "k2":
    return 0.5 * jnp.square(log_r_BT)                     # k2 = ½ (log r)²
  # k3 = (r − 1) − log r ≥ 0, exactly 0 at r = 1. expm1, not exp(·) − 1: near r = 1 the latter
  # rounds to below log r (k3 < 0 by ~1e-7); the clip keeps exp from overflowing.
  return jnp.expm1(jnp.clip(log_r_BT, -20.0, 20.0)) - log_r_BT


def adaptive_kl_coef(coef, kl, *, target, horizon, n_steps):
  """Ziegler et al.'s adaptive KL controller: moves `coef` so that the observed KL tracks
  `target`, by at most ±20 % × n_steps / horizon per update. Works on traced values."""
  # eq. (2) of 1909.08593: e_t = clip(KL/KL_target − 1, ±0.2), β ← β(1 + K_β e_t), K_β = n/H
  e = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + e * n_steps / horizon)


# ----------------------------------------------------------------------------- advantages


def gae(rewards_BT: Array, values_BT: Array, mask_BT: Array, *, gamma: float,
        lam: float) -> tuple[Array, Array]:
  """Generalized advantage estimation → (advantages_BT, returns_BT), 0 at masked positions.

  The episode ends with the response: the value after the last real token is 0."""
  _check_in("gamma", gamma, 0.0, 1.0)
  _check_in("lam", lam, 0.0, 1.0)
  _check_same_shape(rewards_BT=rewards_BT, values_BT=values_BT, mask_BT=mask_BT)
  m_BT = _f32(mask_BT) > 0
  r_BT = jnp.where(m_BT, _f32(rewards_BT), 0.0)
  v_BT = jnp.where(m_BT, jax.lax.stop_gradient(_f32(values_BT)), 0.0)
  v_next_BT = jnp.pad(v_BT[:, 1:], ((0, 0), (0, 1)))     # V_{t+1}; 0 after the end and beyond T
  delta_BT = jnp.where(m_BT, r_BT + gamma * v_next_BT - v_BT, 0.0)  # δ_t = r_t + γV_{t+1} − V_t

  def step(a_next_B, inputs):
    delta_B, m_B = inputs
    a_B = jnp.where(m_B, delta_B + gamma * lam * a_next_B, 0.0)  # Â_t = δ_t + γλ Â_{t+1}
    return a_B, a_B

  # eq. (16) of 1506.02438: Â_t = Σ_l (γλ)^l δ_{t+l}, as a reverse scan over T
  _, adv_TB = jax.lax.scan(step, jnp.zeros(r_BT.shape[0], jnp.float32), (delta_BT.T, m_BT.T),
                           reverse=True)
  adv_BT = adv_TB.T
  return adv_BT, jnp.where(m_BT, adv_BT + v_BT, 0.0)


def whiten(x_BT: Array, mask_BT: Array, *, shift_mean: bool = True, eps: float = 1e-8) -> Array:
  """(x − μ) / sqrt(var + eps) with the masked mean and population variance; shift_mean=False
  adds μ back (TRL / InstructGPT whiten rewards that way). Masked entries → 0."""
  x_BT, m_BT = _f32(x_BT), _f32(mask_BT) > 0
  mu = _masked_mean(x_BT, m_BT)
  var = _masked_mean(jnp.square(x_BT - mu), m_BT)         # ddof = 0
  out_BT = (x_BT - mu) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out_BT = out_BT + mu
  return jnp.where(m_BT, out_BT, 0.0)


def group_advantages(rewards_BG: Array, kind: str = "grpo", *, eps: float = 1e-6) -> Array:
  """Outcome advantages of G samples of one prompt, relative to their group: [B, G].

  grpo: (r − mean) / (std + eps), std with Bessel's correction (ddof = 1; eq. (3) of
  2402.03300's outcome supervision); drgrpo: r − mean (2503.20783 sec. 3.2 drops the std, which
  up-weights questions that are too easy or too hard). A constant group gives exactly 0."""
  _check_choice("advantage kind", kind, ADVANTAGE_KINDS)
  G = rewards_BG.shape[-1]
  if G < 2:
    raise ValueError(f"a group needs at least 2 samples, got G={G}; raise config.rl.group_size")
  r_BG = _f32(rewards_BG)
  # Shift by the first sample before averaging: the same numbers, but a constant group is
  # exactly 0 (a plain mean of G copies of 0.1 need not round back to 0.1).
  d_BG = r_BG - r_BG[:, :1]
  centered_BG = d_BG - jnp.mean(d_BG, axis=-1, keepdims=True)   # r_i − mean(r)
  if kind == "drgrpo":
    return centered_BG
  std_B1 = jnp.sqrt(jnp.sum(jnp.square(centered_BG), axis=-1, keepdims=True) / (G - 1))
  return centered_BG / (std_B1 + eps)                     # Â_i = (r_i − mean(r)) / std(r)


def informative_groups(rewards_BG: Array) -> Array:
  """DAPO dynamic sampling (eq. (11) of 2503.14476): True for groups whose rewards are not all
  equal (0 < #correct < G for 0/1 rewards); the others have zero advantage and no gradient."""
  return jnp.any(rewards_BG != rewards_BG[:, :1], axis=-1)


def overlong_penalty(lengths_B: Array, *, max_len: int, cache_len: int) -> Array:
  """DAPO's soft overlong punishment, added to the reward: [B], in [−1, 0]."""
  if not 0 < cache_len <= max_len:
    raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, "
                     f"max_len={max_len}")
  L_B = _f32(lengths_B)
  soft = max_len - cache_len
  # eq. (13) of 2503.14476: 0 if L ≤ L_max − L_cache; ((L_max − L_cache) − L)/L_cache up to
  # L_max; −1 beyond.
  return jnp.where(L_B <= soft, 0.0, jnp.where(L_B <= max_len, (soft - L_B) / cache_len, -1.0))


# ----------------------------------------------------------------------------- losses


def aggregate(loss_BT: Array, mask_BT: Array, mode: str, *, max_len: int | None = None) -> Array:
  """Per-token losses → scalar, over the real tokens (see the module docstring for `mode`)."""
  _check_choice("aggregation", mode, AGGREGATIONS)
  _check_same_shape(loss_BT=loss_BT, mask_BT=mask_BT)
  m_BT = _f32(mask_BT)
  sum_B = jnp.sum(jnp.where(m_BT > 0, _f32(loss_BT), 0.0), axis=-1)
  if mode == "token_mean":                                # eq. (12) of 2503.14476
    return jnp.sum(sum_B) / jnp.maximum(jnp.sum(m_BT), 1.0)
  if mode == "seq_mean_token_mean":                       # eq. (3) of 2402.03300: 1/|o_i| Σ_t
    return jnp.mean(sum_B / jnp.maximum(jnp.sum(m_BT, axis=-1), 1.0))
  max_len = loss_BT.shape[-1] if max_len is None else max_len
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  return jnp.mean(sum_B / max_len)                        # 2503.20783 sec. 3.2: not 1/|o_i|


def _clip_range(clip_low: float, clip_high: float | None) -> tuple[float, float]:
  clip_high = clip_low if clip_high is None else clip_high
  if not (0 < clip_low < 1 and 0 < clip_high < 1):
    raise ValueError(f"clip ranges must be in (0, 1), got clip_low={clip_low}, "
                     f"clip_high={clip_high}")
  return clip_low, clip_high


def _clipped_surrogate(logp_BT, old_logp_BT, adv_BT, m_BT, clip_low, clip_high):
  """Per-token −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) and its metrics (token means)."""
  # Masked positions get log ρ = 0 and A = 0 first: garbage there can neither overflow nor
  # reach the gradient (a where() after an inf gives 0 · inf = NaN in the backward pass).
  log_ratio_BT = jnp.where(m_BT, _f32(logp_BT) - jax.lax.stop_gradient(_f32(old_logp_BT)), 0.0)
  ratio_BT = jnp.exp(log_ratio_BT)                        # ρ = π_θ / π_θ_old
  adv_BT = jnp.where(m_BT, jax.lax.stop_gradient(adv_BT), 0.0)
  clipped_BT = jnp.clip(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
  # eq. (7) of 1707.06347 (asymmetric clip: eq. (10) of 2503.14476), negated to a loss.
  loss_BT = -jnp.minimum(ratio_BT * adv_BT, clipped_BT * adv_BT)
  # The clipped term is the active one (no gradient) when ρ left the range in A's direction.
  clipped_active_BT = (((adv_BT > 0) & (ratio_BT > 1.0 + clip_high))
                       | ((adv_BT < 0) & (ratio_BT < 1.0 - clip_low)))
  sg = jax.lax.stop_gradient
  metrics = {
      "clip_fraction": _masked_mean(clipped_active_BT.astype(jnp.float32), m_BT),
      "ratio_mean": _masked_mean(sg(ratio_BT), m_BT),
      # k3 with r = π_θ/π_old on samples from π_old: KL(π_old‖π_θ)
      "approx_kl": _masked_mean(sg(jnp.expm1(log_ratio_BT) - log_ratio_BT), m_BT),
  }
  return loss_BT, metrics


def ppo_clip_loss(logp_BT: Array, old_logp_BT: Array, advantages_BT: Array, mask_BT: Array, *,
                  clip_low: float = 0.2, clip_high: float | None = None,
                  aggregation: str = "token_mean",
                  max_len: int | None = None) -> tuple[Array, dict[str, Array]]:
  """PPO's clipped surrogate loss over per-token advantages → (loss, metrics).

  metrics: clip_fraction, ratio_mean, approx_kl (k3 of KL(π_old‖π_θ)), token means."""
  clip_low, clip_high = _clip_range(clip_low, clip_high)
  _check_choice("aggregation", aggregation, AGGREGATIONS)
  _check_same_shape(logp_BT=logp_BT, old_logp_BT=old_logp_BT, advantages_BT=advantages_BT,
                    mask_BT=mask_BT)
  m_BT = _f32(mask_BT) > 0
  loss_BT, metrics = _clipped_surrogate(logp_BT, old_logp_BT, _f32(advantages_BT), m_BT,
                                        clip_low, clip_high)
  return aggregate(loss_BT, m_BT, aggregation, max_len=max_len), metrics


def value_loss(values_BT: Array, old_values_BT: Array, returns_BT: Array, mask_BT: Array, *,
               clip: float | None = 0.2,
               aggregation: str = "token_mean") -> tuple[Array, dict[str, Array]]:
  """Clipped value loss ½ max((V − R)², (V_old + clip(V − V_old, ±c) − R)²) (the PPO2 /
  InstructGPT implementations); clip=None gives ½ (V − R)². metrics: value_clip_fraction."""
  if clip is not None and not clip > 0:
    raise ValueError(f"value clip must be > 0 or None, got {clip}")
  _check_same_shape(values_BT=values_BT, old_values_BT=old_values_BT, returns_BT=returns_BT,
                    mask_BT=mask_BT)
  m_BT = _f32(mask_BT) > 0
  v_BT = jnp.where(m_BT, _f32(values_BT), 0.0)            # padding out before any arithmetic
  R_BT = jnp.where(m_BT, jax.lax.stop_gradient(_f32(returns_BT)), 0.0)
  plain_BT = jnp.square(v_BT - R_BT)
  if clip is None:
    loss_BT, active_BT = 0.5 * plain_BT, jnp.zeros(v_BT.shape, bool)
  else:
    v_old_BT = jnp.where(m_BT, jax.lax.stop_gradient(_f32(old_values_BT)), 0.0)
    v_clipped_BT = v_old_BT + jnp.clip(v_BT - v_old_BT, -clip, clip)
    clipped_BT = jnp.square(v_clipped_BT - R_BT)
    loss_BT = 0.5 * jnp.maximum(plain_BT, clipped_BT)
    active_BT = clipped_BT > plain_BT
  metrics = {"value_clip_fraction": _masked_mean(active_BT.astype(jnp.float32), m_BT)}
  return aggregate(loss_BT, m_BT, aggregation), metrics


def grpo_loss(logp_BT: Array, old_logp_BT: Array, ref_logp_BT: Array | None,
              advantages_B: Array, mask_BT: Array, *, clip_low: float = 0.2,
              clip_high: float | None = None, kl_coef: float = 0.04, kl_kind: str = "k3",
              aggregation: str = "seq_mean_token_mean",
              max_len: int | None = None) -> tuple[Array, dict[str, Array]]:
  """GRPO: the clipped surrogate with one advantage per sequence, plus a KL penalty to the
  reference per token → (loss, metrics). kl_coef=0 drops the KL term (ref_logp may be None).

  metrics: clip_fraction, ratio_mean, approx_kl, kl (token mean of the estimate; 0 without a
  reference), policy_loss (the aggregated loss without the KL term)."""
  clip_low, clip_high = _clip_range(clip_low, clip_high)
  _check_choice("aggregation", aggregation, AGGREGATIONS)
  _check_choice("KL estimator", kl_kind, KL_ESTIMATORS)
  _check_same_shape(logp_BT=logp_BT, old_logp_BT=old_logp_BT, ref_logp_BT=ref_logp_BT,
                    mask_BT=mask_BT)
  if jnp.shape(advantages_B) != jnp.shape(logp_BT)[:1]:
    raise ValueError(f"advantages_B must be [B] = [{jnp.shape(logp_BT)[0]}], got "
                     f"{list(jnp.shape(advantages_B))}")
  skip_kl = isinstance(kl_coef, (int, float)) and kl_coef == 0
  if ref_logp_BT is None and not skip_kl:
    raise ValueError(f"kl_coef={kl_coef} needs ref_logp_BT; pass it or set kl_coef=0")
  m_BT = _f32(mask_BT) > 0
  adv_BT = jnp.broadcast_to(_f32(advantages_B)[:, None], m_BT.shape)  # Â_{i,t} = Â_i, every t
  pg_BT, metrics = _clipped_surrogate(logp_BT, old_logp_BT, adv_BT, m_BT, clip_low, clip_high)
  if ref_logp_BT is None:
    kl_BT = jnp.zeros(m_BT.shape, jnp.float32)
  else:
    # where(): padding in ref_logp (or logp) must not reach k3's exp or the gradient.
    ref_BT = jnp.where(m_BT, jax.lax.stop_gradient(_f32(ref_logp_BT)), 0.0)
    kl_BT = kl_estimate(jnp.where(m_BT, _f32(logp_BT), 0.0), ref_BT, kl_kind)
  # eq. (3) of 2402.03300: −min(ρÂ, clip(ρ)Â) + β D_KL[π_θ‖π_ref], per token, then aggregated.
  loss_BT = pg_BT if skip_kl else pg_BT + kl_coef * kl_BT
  metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl_BT), m_BT)
  metrics["policy_loss"] = jax.lax.stop_gradient(
      aggregate(pg_BT, m_BT, aggregation, max_len=max_len))
  return aggregate(loss_BT, m_BT, aggregation, max_len=max_len), metrics
