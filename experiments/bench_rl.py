"""RL step benchmarks (`genfm-bench rl`): rollout tokens/s with the KV cache at the group sizes
the configs use, the same rollout by full recompute (the no-cache reference), and the share of a
GRPO step spent generating vs updating.

The model is the `instruct_char` GPT (4 layers, width 128, context 64; random weights: speed does
not depend on them), prompts of 32 tokens, 12 new tokens, as in `rl_char.py`. Rows:
  rl_rollout   per group size G (8 prompts × G responses): cached and recompute seconds,
               generated tokens/s, cached-vs-recompute speedup
  rl_step      one GRPO step split in its parts, each jitted alone: rollout, reference and old
               log-probs (one forward each), the update (forward + backward + AdamW); the
               rollout's share of their sum
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments import bench
from genfm.transformers import gpt, policy_gradient as pg, rollout, sft

MODEL = gpt.GPTConfig(vocab_size=84, context_len=64, num_layers=4, num_heads=4, d_model=128)
PROMPT_LEN, NEW, PROMPTS = 32, 12, 8
GROUPS = (4, 8, 16)


def rl_bench(emit) -> None:
  model = gpt.GPT(MODEL, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  cached = jax.jit(lambda s, p, l, k: rollout.sample_responses(
      nnx.merge(graphdef, s), p, l, NEW, k, temperature=0.0).tokens_BS)
  # The no-cache reference: SFT's greedy decoder, a causal forward over the whole buffer per token.
  recompute = lambda s, p, l: sft._greedy(  # pylint: disable=protected-access
      (graphdef, s), jnp.pad(p, ((0, 0), (0, NEW))), l, NEW)
  for G in GROUPS:
    B = PROMPTS * G
    prompts = jax.random.randint(jax.random.key(G), (B, PROMPT_LEN), 0, MODEL.vocab_size)
    lengths = jnp.full((B,), PROMPT_LEN, jnp.int32)
    t_c = bench.time_fn(cached, state, prompts, lengths, jax.random.key(0), iters=5)
    t_r = bench.time_fn(recompute, state, prompts, lengths, iters=5)
    emit({"name": "rl_rollout", "group_size": G, "rows": B, "new_tokens": NEW,
          "cached_seconds": t_c, "recompute_seconds": t_r, "tokens_per_sec": B * NEW / t_c,
          "cached_speedup": t_r / t_c})

  # One GRPO step (G = 8), its parts timed alone.
  G = 8
  B = PROMPTS * G
  prompts = jax.random.randint(jax.random.key(1), (B, PROMPT_LEN), 0, MODEL.vocab_size)
  lengths = jnp.full((B,), PROMPT_LEN, jnp.int32)
  sample = jax.jit(lambda s, p, l, k: rollout.sample_responses(
      nnx.merge(graphdef, s), p, l, NEW, k, end_id=0))
  roll = sample(state, prompts, lengths, jax.random.key(2))
  logp = jax.jit(lambda s, r: rollout.response_logprobs(nnx.merge(graphdef, s), r.tokens_BS,
                                                        r.lengths_B, NEW))
  params = nnx.state(model, nnx.Param)
  tx = optax.adamw(1e-5)
  opt = tx.init(params)
  adv = jax.random.normal(jax.random.key(3), (B,))
  old = logp(state, roll)

  @jax.jit
  def update(params, opt, roll):
    def loss(p):
      m = nnx.merge(graphdef, p, nnx.state(model, nnx.Not(nnx.Param)))
      lp = rollout.response_logprobs(m, roll.tokens_BS, roll.lengths_B, NEW)
      return pg.grpo_loss(lp, old, old, adv, roll.mask_BN)[0]
    g = jax.grad(loss)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt

  t_roll = bench.time_fn(sample, state, prompts, lengths, jax.random.key(2), iters=5)
  t_logp = bench.time_fn(logp, state, roll, iters=5)
  t_upd = bench.time_fn(update, params, opt, roll, iters=5)
  total = t_roll + 2 * t_logp + t_upd
  emit({"name": "rl_step", "algorithm": "grpo", "group_size": G, "rows": B,
        "rollout_seconds": t_roll, "logprob_seconds": t_logp, "update_seconds": t_upd,
        "step_seconds": total, "rollout_share": t_roll / total,
        "logprob_share": 2 * t_logp / total, "update_share": t_upd / total})
