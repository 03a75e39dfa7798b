"""RL fine-tuning of the instruction-tuned char GPT: GRPO, Dr. GRPO, DAPO and PPO-RLHF.

The policy and a frozen reference both start from an SFT run (`config.init_from`, an
`instruct_char` workdir). Each step samples `rl.group_size` responses to each of the batch's
prompts with the KV cache inside the jitted step (`transformers/rollout.py`), scores them, and
makes `rl.num_updates` optimizer steps on that rollout (the first is exactly on-policy: ratio 1).

Rewards (`rl.reward`):
    exact   1 if the response is the answer then END, else 0 (the verifiable reward of the
            instruction generator, computed on device from the answer's tokens)
    model   a frozen reward model's score at the last response token (`config.init_from_models
            .reward`, a `preference` run with `preference.kind="rm"`)

Algorithms (`rl.algorithm`; every formula lives in `transformers/policy_gradient.py`):
    grpo    group-normalised advantages (r − mean)/std (Bessel), per-sequence token mean,
            k3 KL to the reference in the loss (2402.03300 eq. (3))
    drgrpo  advantages r − mean, token sums over a constant (2503.20783 §3.2), no KL by default
    dapo    clip-higher (ε_low 0.2, ε_high 0.28), token-mean loss, overlong shaping, dynamic
            sampling: `rl.oversample`× groups sampled, the informative ones (rewards not all
            equal) trained first (2503.14476 eqs. (10)–(13)); static shapes: when fewer than
            needed are informative, the batch is filled with uninformative ones (zero advantage)
    ppo     a value head on the policy (shared trunk, `value_head`), per-token rewards
            −β·KL_t + score at the last token (InstructGPT eq. (2)), GAE, whitened advantages,
            clipped surrogate + clipped value loss; β adaptive (1909.08593) when `rl.kl_target`

Evaluation: the SFT task's (test loss, corpus loss, greedy exact match on test items and held-out
templates, answers file) on the policy, plus `kl_to_reference` (Σ_t log π/π_ref over sampled
test responses, nats per response, k1: unbiased) and `wrong_length` (mean characters of wrong
greedy answers, the length Dr. GRPO says GRPO inflates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments.data import instructions
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch
from genfm.experiments.tasks.sft import SFTTask
from genfm.transformers import gpt, policy_gradient as pg, reward_model, rollout

ALGORITHMS = ("grpo", "drgrpo", "dapo", "ppo")
REWARDS = ("exact", "model")


class KLCoef(nnx.Variable):
  """PPO's KL coefficient β, carried in the policy's state for the adaptive controller."""


def prompt_records(task: SFTTask, examples) -> dict[str, np.ndarray]:
  """prompt [N, P], prompt_len [N], answer [N, A] (answer · END, −1 padded), answer_len [N]."""
  prompts = [task.lm.encode(ex.prompt) for ex in examples]
  answers = [task.lm.encode(ex.response) for ex in examples]
  P, A = max(map(len, prompts)), max(map(len, answers))
  out = {"prompt": np.zeros((len(examples), P), np.int32),
         "prompt_len": np.array([len(p) for p in prompts], np.int32),
         "answer": np.full((len(examples), A), -1, np.int32),
         "answer_len": np.array([len(a) for a in answers], np.int32)}
  for i, (p, a) in enumerate(zip(prompts, answers)):
    out["prompt"][i, :len(p)], out["answer"][i, :len(a)] = p, a
  return out


def exact_match(response_BN: jax.Array, answer_BA: jax.Array, answer_len_B: jax.Array):
  """1.0 where the response starts with the answer's tokens (answer · END), else 0: the
  instruction generator's `reward` (exact match, END required), on device."""
  N, A = response_BN.shape[1], answer_BA.shape[1]
  n = min(N, A)
  need_B = answer_len_B <= N                                   # an answer longer than N fails
  pos_A = jnp.arange(n)[None]
  ok_BA = (response_BN[:, :n] == answer_BA[:, :n]) | (pos_A >= answer_len_B[:, None])
  return (jnp.all(ok_BA, axis=1) & need_B).astype(jnp.float32)


def kl_to_reference(policy, reference, prompts_BP, lengths_B, num_new: int, key, end_id: int):
  """(Σ_t log π − log π_ref per sampled response [B], response mask [B, N]): k1, unbiased for
  KL(π ‖ π_ref) over whole responses."""
  r = rollout.sample_responses(policy, prompts_BP, lengths_B, num_new, key, end_id=end_id)
  ref = rollout.response_logprobs(reference, r.tokens_BS, r.lengths_B, num_new)
  return jnp.sum((r.logprobs_BN - ref) * r.mask_BN, axis=1), r.mask_BN


class RLTask(SFTTask):
  """Policy (+ value head for PPO) and a frozen reference from an SFT run; optional frozen
  reward model."""

  def __init__(self, config):
    super().__init__(config)
    r = config.rl
    if r.algorithm not in ALGORITHMS:
      raise unknown_choice("config.rl.algorithm", r.algorithm, ALGORITHMS)
    if r.reward not in REWARDS:
      raise unknown_choice("config.rl.reward", r.reward, REWARDS)
    if self.method not in ("full", "lora"):
      raise ConfigError(f"config.peft.method={self.method!r}: RL trains the full policy or LoRA "
                        "on it ('full' or 'lora')")
    if r.algorithm != "ppo" and r.group_size < 2:
      raise ConfigError(f"config.rl.group_size={r.group_size}: a group needs at least 2 samples "
                        "to normalise rewards; raise it (GRPO uses 4–64)")
    for name in ("clip_low", "clip_high"):
      v = r.get(name)
      if v is not None and not 0.0 < v < 1.0:
        raise ConfigError(f"config.rl.{name}={v}: clip ranges must be in (0, 1)")
    if r.kl_coef < 0:
      raise ConfigError(f"config.rl.kl_coef={r.kl_coef} must be >= 0")
    if r.reward == "model" and not dict(config.get("init_from_models", None) or {}).get("reward"):
      raise ConfigError("config.rl.reward='model' needs a trained reward model: set "
                        "--config.init_from_models.reward=DIR (a preference run, kind 'rm')")
    self.end_id = int(self.lm.encode(instructions.END)[0])
    train = instructions.cached(tuple(config.instruction_tasks), "train",
                                config.num_train_examples, seed=config.seed)
    self._prompts = prompt_records(self, train)
    self._test_prompts = prompt_records(self, self._eval_examples["test"])
    if self._prompts["prompt"].shape[1] + r.max_new_tokens > self.model_config.context_len:
      raise ConfigError(f"prompts of up to {self._prompts['prompt'].shape[1]} tokens + "
                        f"rl.max_new_tokens={r.max_new_tokens} exceed context_len "
                        f"{self.model_config.context_len}")

  def train_source(self):
    return ArraySource(self._prompts, info_from_arrays("instructions", "train", self._prompts))

  # -- models ----------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    models = {"policy": super().build_models(rngs)["model"],
              "reference": gpt.GPT(self.model_config, rngs=rngs)}
    r = self.config.rl
    if r.algorithm == "ppo":
      reward_model.add_head(models["policy"], "value_head", rngs=rngs)
      models["policy"].kl_coef = KLCoef(jnp.asarray(r.kl_coef, jnp.float32))
    if r.reward == "model":
      rm = gpt.GPT(self.model_config, rngs=rngs)
      reward_model.add_head(rm, "reward_head", rngs=rngs)
      models["reward"] = rm
    self._built["policy"] = models["policy"]
    return models

  def trainable(self, name: str):
    if name != "policy":
      return nnx.Nothing
    base = super().trainable("model")
    return nnx.Any(base, reward_model.HeadParam) if self.config.rl.algorithm == "ppo" else base

  def new_parameters(self, name: str):
    if name == "reward":           # a reward model's head must come from its (RM) run
      return nnx.Nothing
    return nnx.Any(super().new_parameters(name), reward_model.HeadParam)   # the value head

  def init_source(self, name: str, source_models: tuple[str, ...]):
    if name in ("policy", "reference") and "model" in source_models:
      return "model"
    return super().init_source(name, source_models)

  def convert_source(self, name: str, arrays: dict) -> dict:
    if name != "policy":
      return arrays
    return super().convert_source(name, arrays)

  # -- one step --------------------------------------------------------------------------------

  def _reward(self, ctx, roll):
    """The frozen reward model's score at each response's last token (END when it ended)."""
    last_B = roll.lengths_B + jnp.maximum(roll.response_lengths_B.astype(jnp.int32), 1) - 1
    return reward_model.sequence_scores(ctx.model("reward"), roll.tokens_BS, last_B)

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    r = self.config.rl
    G = 1 if r.algorithm == "ppo" else r.group_size
    rep = lambda x: jnp.repeat(x, G, axis=0)
    prompt, plen = rep(batch["prompt"]), rep(batch["prompt_len"])
    answer, alen = rep(batch["answer"]), rep(batch["answer_len"])
    N = r.max_new_tokens
    policy = ctx.model("policy")
    roll = rollout.sample_responses(policy, prompt, plen, N, key, temperature=r.temperature,
                                    end_id=self.end_id)
    correct_B = exact_match(roll.response_BN, answer, alen)
    score_B = correct_B if r.reward == "exact" else self._reward(ctx, roll)
    length_B = roll.response_lengths_B
    stats = {"reward": jnp.mean(score_B), "accuracy": jnp.mean(correct_B),
             "response_length": jnp.mean(length_B),
             "wrong_length": jnp.sum(length_B * (1 - correct_B))
                             / jnp.maximum(jnp.sum(1 - correct_B), 1.0)}
    logp = lambda m: rollout.response_logprobs(m, roll.tokens_BS, roll.lengths_B, N,
                                               temperature=r.temperature)
    # The behaviour log-probs, recomputed by the training path itself: the first update's
    # ratio is then exp(0) = 1 exactly, not 1 ± the cache's rounding.
    old_logp = jax.lax.stop_gradient(logp(policy))
    ref_logp = logp(ctx.model("reference")) if r.kl_coef > 0 else None
    mask = roll.mask_BN
    if r.algorithm == "ppo":
      self._ppo(ctx, roll, score_B, old_logp, ref_logp, logp, stats)
      return
    if r.algorithm == "dapo":
      score_B = score_B + pg.overlong_penalty(length_B, max_len=N, cache_len=r.overlong_cache)
    adv_BG = pg.group_advantages(score_B.reshape(-1, G),
                                 "drgrpo" if r.algorithm == "drgrpo" else "grpo")
    informative_b = pg.informative_groups(score_B.reshape(-1, G))
    stats["informative_groups"] = jnp.mean(informative_b.astype(jnp.float32))
    adv_B = adv_BG.reshape(-1)
    if r.algorithm == "dapo" and r.oversample > 1:
      # Dynamic sampling with static shapes: keep 1/oversample of the groups, informative first.
      n_keep = informative_b.shape[0] // r.oversample
      order = jnp.argsort(~informative_b, stable=True)[:n_keep]
      rows = (order[:, None] * G + jnp.arange(G)[None]).reshape(-1)
      take = lambda x: None if x is None else x[rows]
      adv_B, mask, old_logp, ref_logp = take(adv_B), mask[rows], old_logp[rows], take(ref_logp)
      roll = roll.replace(tokens_BS=roll.tokens_BS[rows], lengths_B=roll.lengths_B[rows])
      logp = lambda m: rollout.response_logprobs(m, roll.tokens_BS, roll.lengths_B, N,
                                                 temperature=r.temperature)
    ctx.log(**stats)

    def loss_fn(model):
      return pg.grpo_loss(logp(model), old_logp, ref_logp, adv_B, mask, clip_low=r.clip_low,
                          clip_high=r.get("clip_high"), kl_coef=r.kl_coef, kl_kind=r.kl_kind,
                          aggregation=r.aggregation, max_len=N)

    for _ in range(r.num_updates):
      ctx.update("policy", loss_fn)

  def _ppo(self, ctx, roll, score_B, old_logp, ref_logp, logp, stats):
    """InstructGPT's PPO step: per-token rewards, GAE on the value head, clipped losses."""
    r, N = self.config.rl, self.config.rl.max_new_tokens
    mask = roll.mask_BN
    policy = ctx.model("policy")
    values = lambda m: rollout.gather_response(
        reward_model.token_scores(m, roll.tokens_BS, head="value_head"), roll.lengths_B, N)
    old_values = jax.lax.stop_gradient(values(policy))
    beta = policy.kl_coef[...]
    kl_BN = (pg.kl_estimate(old_logp, ref_logp, r.kl_kind) if ref_logp is not None
             else jnp.zeros_like(old_logp)) * mask
    last_BN = jax.nn.one_hot(roll.response_lengths_B.astype(jnp.int32) - 1, N) * mask
    rewards_BN = -beta * kl_BN + score_B[:, None] * last_BN        # InstructGPT eq. (2)
    adv_BN, returns_BN = pg.gae(rewards_BN, old_values, mask, gamma=r.gamma, lam=r.lam)
    adv_BN = pg.whiten(adv_BN, mask)
    kl_seq = jnp.mean(jnp.sum(kl_BN, axis=1))
    stats.update(kl=kl_seq, kl_coef=beta)
    ctx.log(**stats)

    def loss_fn(model):
      pol, m1 = pg.ppo_clip_loss(logp(model), old_logp, adv_BN, mask, clip_low=r.clip_low,
                                 clip_high=r.get("clip_high"), aggregation=r.aggregation)
      val, m2 = pg.value_loss(values(model), old_values, returns_BN, mask, clip=r.value_clip,
                              aggregation=r.aggregation)
      if r.kl_target:                                 # adaptive β, 1909.08593 §2.2
        model.kl_coef[...] = pg.adaptive_kl_coef(beta, kl_seq, target=r.kl_target,
                                                 horizon=r.kl_horizon,
                                                 n_steps=self.config.batch_size)
      return pol + r.value_coef * val, {**m1, **m2, "policy_loss": pol, "value_loss": val}

    for _ in range(r.num_updates):
      ctx.update("policy", loss_fn)

  # -- evaluation ------------------------------------------------------------------------------

  def eval_metrics(self, models, batch: Batch):
    return super().eval_metrics(models["policy"], batch)

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    policy = models["policy"]
    metrics = super().after_eval(policy, workdir, step)
    wrong = [len(instructions.answer_of(text)) for ex, text in self.last_answers["test"]
             if not instructions.is_correct(ex, text)]
    metrics["wrong_length"] = float(np.mean(wrong)) if wrong else 0.0
    metrics["style_rate"] = float(np.mean([instructions.follows_style(text)
                                           for _, text in self.last_answers["test"]]))
    t = self._test_prompts
    kl_B, mask = _eval_kl(policy, models["reference"], jnp.asarray(t["prompt"]),
                          jnp.asarray(t["prompt_len"]), self.config.rl.max_new_tokens,
                          jax.random.key(self.config.seed + 7), self.end_id)
    metrics["kl_to_reference"] = float(jnp.mean(kl_B))
    metrics["sampled_length"] = float(jnp.mean(jnp.sum(mask, axis=1)))
    return metrics


_eval_kl = nnx.jit(kl_to_reference, static_argnums=(4, 6))
