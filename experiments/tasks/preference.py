"""Learning from preference pairs on the instruction-tuned char GPT: a reward model, DPO, IPO, cDPO.

Pairs (prompt, chosen, rejected) are built from the instruction generator's train items
(`preference.pairs`), held-out pairs from its test items:
    style    chosen = the answer with a full stop before END ("357.\\n"), rejected = the plain
             answer ("357\\n"): a rule any reader can check, which the SFT model never follows
    correct  chosen = the correct response, rejected = a wrong sample (T = 1) of the SFT model
             itself (`config.init_from`), drawn once when the task is built (seeded)
    both     the two sets together

Kinds (`preference.kind`, losses in `transformers/preference.py`):
    rm       the SFT model with a scalar head (`transformers/reward_model.py`) trained with the
             Bradley–Terry loss; metric: pairwise accuracy on held-out pairs
    dpo, ipo, cdpo   a policy against a frozen reference (both the SFT model); reference
             log-probs live from the frozen model, or computed once at build time and stored
             with the pairs (`preference.cache_reference`, equal to 1e-5, tested)

Evaluation (dpo / ipo / cdpo): held-out loss and implicit-reward accuracy and margin; greedy
answers on test items: `style_rate` (answers that follow the style rule: the win rate by the
rule against the SFT model, which has 0), `exact_match` (the answer, with the style's full
stop allowed), and `kl_to_reference` (Σ_t log π/π_ref over sampled responses, nats).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments import init_from
from genfm.experiments.data import instructions
from genfm.experiments.data.instructions import STYLE, correct_modulo_style, follows_style
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch
from genfm.experiments.tasks.rl import _eval_kl, prompt_records
from genfm.experiments.tasks.sft import SFTTask
from genfm.transformers import gpt, preference as pref, reward_model, rollout, sft

KINDS = ("rm",) + pref.PREFERENCE_LOSSES
PAIRS = ("style", "correct", "both")


class PreferenceTask(SFTTask):
  """Pairs → Bradley–Terry reward model, or DPO / IPO / cDPO against a frozen reference."""

  def __init__(self, config):
    super().__init__(config)
    p = config.preference
    if p.kind not in KINDS:
      raise unknown_choice("config.preference.kind", p.kind, KINDS)
    if p.pairs not in PAIRS:
      raise unknown_choice("config.preference.pairs", p.pairs, PAIRS)
    if self.method != "full":
      raise ConfigError("config.peft.method must be 'full' for a preference task")
    if p.kind != "rm":   # the loss's own checks, now, in one line (β ≤ 0, ε out of range)
      try:
        pref.preference_loss(*(jnp.zeros(1),) * 4, kind=p.kind, beta=p.beta,
                             label_smoothing=p.label_smoothing)
      except ValueError as e:
        raise ConfigError(f"config.preference: {e}") from None
    self.end_id = int(self.lm.encode(instructions.END)[0])
    self._source = None
    tasks = tuple(config.instruction_tasks)
    train = instructions.cached(tasks, "train", p.num_pairs, seed=config.seed)
    self._pairs = self._encode_pairs(self._make_pairs(train, config.seed))
    test = self._eval_examples["test"]
    self._eval_pairs = self._encode_pairs(self._make_pairs(test, config.seed + 1))
    if p.kind != "rm" and p.cache_reference:
      for arrays in (self._pairs, self._eval_pairs):
        arrays["ref_chosen"], arrays["ref_rejected"] = self._reference_logprobs(arrays)
    self._test_prompts = prompt_records(self, test)

  # -- pairs ------------------------------------------------------------------------------------

  def _source_model(self) -> gpt.GPT:
    """The SFT model of `config.init_from`, loaded once (read-only)."""
    if self._source is None:
      if not self.config.get("init_from", ""):
        raise ConfigError("a preference task needs config.init_from (the SFT run): its samples "
                          "make the 'correct' pairs and it is the reference")
      m = gpt.GPT(self.model_config, rngs=nnx.Rngs(0))
      graphdef, params, rest = nnx.split(m, nnx.Param, ...)
      _, source, _ = init_from.read_source(self.config.init_from, self.config.init_from_step)
      values, _ = init_from.load_into({"model": {"params": params, "rest": rest}}, self, source,
                                      self.config.init_from)
      self._source = nnx.merge(graphdef, values["model"]["params"], values["model"]["rest"])
    return self._source

  def _wrong_samples(self, examples, seed: int) -> list[str | None]:
    """A wrong T = 1 sample of the SFT model per example (None when all `tries` were right)."""
    rec = prompt_records(self, examples)
    n_new, tries = self.config.answer_tokens, self.config.preference.tries
    out: list[str | None] = [None] * len(examples)
    model = self._source_model()
    for t in range(tries):
      roll = _sample(model, jnp.asarray(rec["prompt"]), jnp.asarray(rec["prompt_len"]), n_new,
                     jax.random.key(seed * 1000 + t), self.end_id)
      resp, mask = np.asarray(roll.response_BN), np.asarray(roll.mask_BN)
      for i, ex in enumerate(examples):
        if out[i] is None:
          text = self.lm.decode(resp[i][mask[i] > 0])
          if text.endswith(instructions.END) and not instructions.is_correct(ex, text):
            out[i] = text
    return out

  def _make_pairs(self, examples, seed: int) -> list[tuple[str, str, str, int]]:
    """(prompt, chosen, rejected, kind: 0 style / 1 correct) tuples."""
    kind = self.config.preference.pairs
    pairs = []
    if kind in ("style", "both"):
      pairs += [(ex.prompt, ex.answer + STYLE + instructions.END, ex.response, 0)
                for ex in examples]
    if kind in ("correct", "both"):
      wrong = self._wrong_samples(examples, seed)
      pairs += [(ex.prompt, ex.response, w, 1) for ex, w in zip(examples, wrong) if w]
    if not pairs:
      raise ConfigError("no preference pair could be built: the SFT model answered every "
                        "prompt correctly in every try; use preference.pairs='style' or 'both'")
    return pairs

  def _encode_pairs(self, pairs) -> dict[str, np.ndarray]:
    rows = {"chosen": [], "rejected": []}
    for prompt, chosen, rejected, _ in pairs:
      ids = [self.lm.encode(x) for x in (prompt, chosen, rejected)]
      try:
        pref.check_pair(ids[1], ids[2])
        rows["chosen"].append(sft.encode_example(ids[0], ids[1], self.max_len))
        rows["rejected"].append(sft.encode_example(ids[0], ids[2], self.max_len))
      except ValueError as e:
        raise ConfigError(f"preference pair for {prompt!r}: {e}") from None
    out = {}
    for side, exs in rows.items():
      padded = sft.pad_rows(exs, self.max_len)
      out.update({f"{side}_{k}": padded[k] for k in ("inputs", "targets", "loss_mask")})
      # The whole text (prompt · response, END included) for the reward model, which reads its
      # score at the response's last token, END: where PPO reads it on a rollout too.
      n_B = np.array([len(ex["inputs"]) + 1 for ex in exs], np.int32)
      if n_B.max() > self.max_len:
        raise ConfigError(f"a preference pair of {n_B.max()} tokens does not fit the "
                          f"{self.max_len} positions of the model")
      full = np.zeros((len(exs), self.max_len), np.int32)
      for i, ex in enumerate(exs):
        full[i, :n_B[i]] = np.concatenate([ex["inputs"], ex["targets"][-1:]])
      out[f"{side}_tokens"], out[f"{side}_last"] = full, n_B - 1
    out["pair_kind"] = np.array([p[3] for p in pairs], np.int32)
    return out

  def _reference_logprobs(self, arrays) -> tuple[np.ndarray, np.ndarray]:
    model = self._source_model()
    out = []
    for side in ("chosen", "rejected"):
      vals = [np.asarray(_seq_logprobs(model, *(jnp.asarray(arrays[f"{side}_{k}"][i:i + 512])
                                                for k in ("inputs", "targets", "loss_mask"))))
              for i in range(0, len(arrays["pair_kind"]), 512)]
      out.append(np.concatenate(vals))
    return out[0], out[1]

  def train_source(self):
    return ArraySource(self._pairs, info_from_arrays("preferences", "train", self._pairs))

  def eval_sources(self):
    """Held-out pairs by kind ("style", "correct"): metrics `style_pair_accuracy`, ..."""
    out = {}
    for k, name in enumerate(("style", "correct")):
      sel = self._eval_pairs["pair_kind"] == k
      if sel.any():
        arrays = {key: v[sel] for key, v in self._eval_pairs.items()}
        out[name] = ArraySource(arrays, info_from_arrays("preferences", f"test_{name}", arrays))
    return out

  # -- models ------------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    if self.config.preference.kind == "rm":
      m = gpt.GPT(self.model_config, rngs=rngs)
      reward_model.add_head(m, "reward_head", rngs=rngs)
      return {"model": m}
    return {"policy": gpt.GPT(self.model_config, rngs=rngs),
            "reference": gpt.GPT(self.model_config, rngs=rngs)}

  def trainable(self, name: str):
    return nnx.Nothing if name == "reference" else nnx.Param

  def new_parameters(self, name: str):
    return reward_model.HeadParam

  def init_source(self, name: str, source_models: tuple[str, ...]):
    return "model" if "model" in source_models else super().init_source(name, source_models)

  def convert_source(self, name: str, arrays: dict) -> dict:
    del name
    return arrays            # full fine-tuning: the source's layout as it is

  # -- losses ------------------------------------------------------------------------------------

  def _side(self, batch, side):
    return tuple(batch[f"{side}_{k}"] for k in ("inputs", "targets",
                                                                    "loss_mask"))

  def _scores(self, model, batch):
    """Reward-model scores (chosen, rejected) [B] at each response's last token."""
    return [reward_model.sequence_scores(model, batch[f"{side}_tokens"], batch[f"{side}_last"])
            for side in ("chosen", "rejected")]

  def _logps(self, model, batch):
    return [_seq_logprobs(model, *self._side(batch, s)) for s in ("chosen", "rejected")]

  def _ref_logps(self, ref_model, batch):
    if self.config.preference.cache_reference:
      return batch["ref_chosen"], batch["ref_rejected"]
    return self._logps(ref_model, batch)

  def _pair_loss(self, policy_or_rm, ref_model, batch):
    p = self.config.preference
    if p.kind == "rm":
      return pref.bradley_terry_loss(*self._scores(policy_or_rm, batch))
    return pref.preference_loss(*self._logps(policy_or_rm, batch),
                                *self._ref_logps(ref_model, batch), kind=p.kind, beta=p.beta,
                                label_smoothing=p.label_smoothing)

  def train_step(self, ctx, batch: Batch, key: jax.Array) -> None:
    del key
    if self.config.preference.kind == "rm":
      ctx.update("model", lambda m: self._pair_loss(m, None, batch))
      return
    ref = ctx.model("reference")
    ctx.update("policy", lambda m: self._pair_loss(m, ref, batch))

  def eval_metrics(self, models, batch: Batch):
    w = batch["mask"].astype(jnp.float32)
    if self.config.preference.kind == "rm":
      c, r = self._scores(models, batch)
      margin = c - r
    else:
      pc, pr = self._logps(models["policy"], batch)
      rc, rr = self._ref_logps(models["reference"], batch)
      margin = self.config.preference.beta * ((pc - rc) - (pr - rr))
    # Pairwise accuracy: the reward model's r(chosen) > r(rejected), or DPO's implicit rewards.
    return {"pair_accuracy": jnp.sum((margin > 0) * w), "margin": jnp.sum(margin * w),
            "count": jnp.sum(w)}

  def after_eval(self, models, workdir: str, step: int) -> dict[str, float]:
    if self.config.preference.kind == "rm":
      return {}
    policy = models["policy"]
    got = self.last_answers = {"test": self.answers(policy, "test")}
    metrics = {"style_rate": float(np.mean([follows_style(t) for _, t in got["test"]])),
               "exact_match": float(np.mean([correct_modulo_style(ex, t)
                                             for ex, t in got["test"]]))}
    t = self._test_prompts
    kl_B, _ = _eval_kl(policy, models["reference"], jnp.asarray(t["prompt"]),
                       jnp.asarray(t["prompt_len"]), self.config.answer_tokens,
                       jax.random.key(self.config.seed + 7), self.end_id)
    metrics["kl_to_reference"] = float(jnp.mean(kl_B))
    lines = [f"{'style' if follows_style(t) else '-----'} "
             f"{'ok ' if correct_modulo_style(ex, t) else 'BAD'} {ex.prompt!r} -> "
             f"{instructions.answer_of(t)!r}" for ex, t in got["test"]]
    with open(os.path.join(workdir, f"answers_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, {self.config.preference.kind}, greedy\n" + "\n".join(lines) + "\n")
    return metrics


@nnx.jit
def _seq_logprobs(model, inputs_BT, targets_BT, mask_BT):
  return pref.sequence_logprobs(model(inputs_BT), targets_BT, mask_BT)


_sample = nnx.jit(lambda m, p, l, n, k, e: rollout.sample_responses(m, p, l, n, k, end_id=e),
                  static_argnums=(3, 5))
