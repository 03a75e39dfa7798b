"""Learning from preference pairs: reward-model (Bradley–Terry), DPO, IPO and conservative DPO.

Data is (prompt x, chosen response y_w, rejected response y_l). Bradley–Terry models the
preference as p(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)) (eq. (1) of DPO, Rafailov et al. 2023,
arXiv:2305.18290); a reward model minimises its negative log-likelihood, eq. (2) of 2305.18290 —
InstructGPT's reward loss (Ouyang et al. 2022, arXiv:2203.02155, eq. (1)) per comparison.

DPO (eq. (7) of 2305.18290) skips the reward model: with the log-ratio difference

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

it minimises −log σ(β h). IPO (Azar et al. 2023, arXiv:2310.12036, eq. (17)) regresses h onto a
fixed margin instead, (h − 1/(2τ))², so the optimum stays finite even for deterministic
preferences. Conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences")
assumes each label is flipped with probability ε: −(1 − ε) log σ(βh) − ε log σ(−βh), whose
optimum in z = βh is the finite log((1 − ε)/ε) (`cdpo_optimum`); this is TRL's `sigmoid` loss
with `label_smoothing=ε`.

Conventions (one place, for every loss here):
- log π(y|x) is the SUM of the response tokens' log-probs (`sequence_logprobs`; prompt and
  padding masked), for IPO too. TRL length-normalises IPO's log-probs; we do not — pass
  `sequence_logprobs(..., average=True)` for every one of the four inputs if you want that.
- β > 0. For IPO the regularisation parameter τ is passed as `beta`; the target margin is 1/(2τ).
- The reference log-probs are constants: `preference_loss` stops their gradient.
- The implicit reward of sec. 5 of 2305.18290, r̂ = β (log π − log π_ref), is reported in the
  metrics for every kind (for IPO with β = τ), so runs of different kinds read alike.
- All math is fp32: a sequence log-prob is a sum of hundreds of tokens (magnitudes in the
  hundreds of nats) and h is a difference of such sums; bf16 spaces its values 1–2 nats apart
  there, which would swamp the signal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PREFERENCE_LOSSES = ("dpo", "ipo", "cdpo")


def token_logprobs(logits_BTV: Array, targets_BT: Array) -> Array:
  """log softmax(logits)[target] per position, fp32 [B, T]."""
  logits_BTV = logits_BTV.astype(jnp.float32)            # fp32: logsumexp over V
  picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1)   # no [B, T, V] log-softmax copy


def sequence_logprobs(logits_BTV: Array, targets_BT: Array, mask_BT: Array, *,
                      average: bool = False) -> Array:
  """Σ_t mask · log p(target_t) per row, fp32 [B]; divided by Σ_t mask when `average` (a row
  with no unmasked target gives 0). Masked targets may be anything, even out of range."""
  keep_BT = mask_BT > 0
  safe_BT = jnp.where(keep_BT, targets_BT, 0)             # never gather at a masked target
  logp_BT = jnp.where(keep_BT, token_logprobs(logits_BTV, safe_BT), 0.0)
  logp_B = jnp.sum(logp_BT, axis=-1)
  if average:
    logp_B = logp_B / jnp.maximum(jnp.sum(keep_BT, axis=-1).astype(jnp.float32), 1.0)
  return logp_B


def bradley_terry_loss(r_chosen_B: Array, r_rejected_B: Array) -> tuple[Array, dict[str, Array]]:
  """Reward-model loss −mean log σ(r_w − r_l) and {"accuracy", "margin"} over the batch."""
  _check_batch(r_chosen_B=r_chosen_B, r_rejected_B=r_rejected_B)
  margin_B = r_chosen_B.astype(jnp.float32) - r_rejected_B.astype(jnp.float32)
  loss = -jnp.mean(jax.nn.log_sigmoid(margin_B))          # eq. (2) of 2305.18290
  return loss, {"accuracy": jnp.mean((margin_B > 0).astype(jnp.float32)),
                "margin": jnp.mean(margin_B)}


def preference_loss(pi_chosen_B: Array, pi_rejected_B: Array, ref_chosen_B: Array,
                    ref_rejected_B: Array, *, kind: str = "dpo", beta: float = 0.1,
                    label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """Batch-mean DPO / IPO / cDPO loss from sequence log-probs [B] of the policy and the reference,
  and the implicit-reward metrics "chosen_reward", "rejected_reward", "reward_margin",
  "reward_accuracy". `beta` is β (τ for IPO); `label_smoothing` is cDPO's ε."""
  if kind not in PREFERENCE_LOSSES:
    raise ValueError(f"unknown preference loss kind {kind!r}; valid choices: "
                     f"{', '.join(PREFERENCE_LOSSES)}")
  # Config values are checked as Python numbers; a traced beta / ε (e.g. under vmap) is not.
  if _is_number(beta) and not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}; set a positive beta (tau for ipo)")
  if _is_number(label_smoothing):
    if not 0.0 <= label_smoothing < 0.5:
      raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}; it is the "
                       "probability that a label is flipped")
    if label_smoothing > 0 and kind != "cdpo":
      raise ValueError(f"label_smoothing={label_smoothing} only applies to kind='cdpo', got "
                       f"kind={kind!r}; use kind='cdpo' or label_smoothing=0")
  _check_batch(pi_chosen_B=pi_chosen_B, pi_rejected_B=pi_rejected_B, ref_chosen_B=ref_chosen_B,
               ref_rejected_B=ref_rejected_B)
  f32 = lambda x: x.astype(jnp.float32)
  ref_chosen_B, ref_rejected_B = jax.lax.stop_gradient((f32(ref_chosen_B), f32(ref_rejected_B)))
  chosen_ratio_B = f32(pi_chosen_B) - ref_chosen_B       # log π(y_w)/π_ref(y_w)
  rejected_ratio_B = f32(pi_rejected_B) - ref_rejected_B
  h_B = chosen_ratio_B - rejected_ratio_B
  if kind == "dpo":
    loss_B = -jax.nn.log_sigmoid(beta * h_B)              # eq. (7) of 2305.18290
  elif kind == "cdpo":                                    # Mitchell 2023: labels flipped w.p. ε
    loss_B = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h_B)
              - label_smoothing * jax.nn.log_sigmoid(-beta * h_B))
  else:
    loss_B = jnp.square(h_B - 1.0 / (2.0 * beta))         # eq. (17) of 2310.12036, τ = beta
  chosen_reward_B = beta * chosen_ratio_B                 # r̂ = β log π/π_ref, sec. 5 of 2305.18290
  rejected_reward_B = beta * rejected_ratio_B
  return jnp.mean(loss_B), {
      "chosen_reward": jnp.mean(chosen_reward_B),
      "rejected_reward": jnp.mean(rejected_reward_B),
      "reward_margin": jnp.mean(chosen_reward_B - rejected_reward_B),
      "reward_accuracy": jnp.mean((chosen_reward_B > rejected_reward_B).astype(jnp.float32)),
  }


def check_pair(chosen_ids, rejected_ids) -> None:
  """Host-side guard for one pair of response token ids: both non-empty and not identical."""
  chosen_ids, rejected_ids = np.asarray(chosen_ids), np.asarray(rejected_ids)
  if chosen_ids.size == 0 or rejected_ids.size == 0:
    raise ValueError(f"a preference pair needs non-empty responses, got {chosen_ids.size} chosen "
                     f"and {rejected_ids.size} rejected tokens; drop the pair")
  if chosen_ids.shape == rejected_ids.shape and np.array_equal(chosen_ids, rejected_ids):
    raise ValueError(f"a preference pair's chosen and rejected responses are identical "
                     f"({chosen_ids.size} tokens); drop the pair: h ≡ 0, it carries no preference")


def cdpo_optimum(label_smoothing: float) -> float:
  """argmin over z = βh of the cDPO loss: log((1 − ε)/ε), finite for 0 < ε < 0.5."""
  if not 0.0 < label_smoothing < 0.5:
    raise ValueError(f"cdpo_optimum needs 0 < label_smoothing < 0.5, got {label_smoothing} "
                     "(at 0 the optimum is at infinity)")
  # d/dz [−(1−ε) log σ(z) − ε log σ(−z)] = −(1−ε) σ(−z) + ε σ(z) = 0  ⇔  e^z = (1−ε)/ε
  return math.log((1.0 - label_smoothing) / label_smoothing)


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.number)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _check_batch(**arrays) -> None:
  shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
  first = next(iter(shapes.values()))
  if len(first) != 1 or any(s != first for s in shapes.values()):
    raise ValueError(f"expected per-example values of one shape [B], got {shapes}; reduce "
                     "token log-probs with sequence_logprobs first")
