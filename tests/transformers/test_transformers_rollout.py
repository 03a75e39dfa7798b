"""Rollouts with the KV cache (`transformers/rollout.py`) and scalar heads (`reward_model.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.transformers import gpt, reward_model, rollout, sft

CFG = gpt.GPTConfig(vocab_size=13, context_len=24, num_layers=2, d_model=32, num_heads=4,
                    init_std=0.3)   # a large init: random models whose greedy tokens vary
PROMPTS = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([3]),
           np.array([9, 8, 7, 6])]
P, N = 6, 8


@pytest.fixture(scope="module")
def model():
  return gpt.GPT(CFG, rngs=nnx.Rngs(0))


def _batch():
  buf = np.zeros((len(PROMPTS), P), np.int32)
  for i, p in enumerate(PROMPTS):
    buf[i, :len(p)] = p
  return jnp.asarray(buf), jnp.asarray([len(p) for p in PROMPTS], jnp.int32)


_roll = nnx.jit(rollout.sample_responses, static_argnums=(3,),
                static_argnames=("temperature", "end_id"))


def test_ragged_greedy_rollout_equals_recomputing_each_prompt(model):
  """Rows of prompt lengths 3, 6, 1, 4 in one cached batch decode exactly as the no-cache
  reference does, and as each prompt decoded alone."""
  prompts, lengths = _batch()
  r = _roll(model, prompts, lengths, N, None, temperature=0.0)
  ref = np.stack(sft.complete(model, PROMPTS, N))
  np.testing.assert_array_equal(np.asarray(r.response_BN), ref)
  assert len({tuple(row) for row in ref}) == len(PROMPTS)       # the rows really differ
  for i in (1, 2):                        # the longest and the shortest alone, no padding
    p = PROMPTS[i]
    alone = _roll(model, jnp.asarray(p)[None], jnp.asarray([len(p)]), N, None, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(alone.response_BN)[0], ref[i])
  # The layout: prompt, then the response from each row's own length on.
  tokens = np.asarray(r.tokens_BS)
  for i, p in enumerate(PROMPTS):
    np.testing.assert_array_equal(tokens[i, :len(p)], p)
    np.testing.assert_array_equal(tokens[i, len(p):len(p) + N], ref[i])
    assert not tokens[i, len(p) + N:].any()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_logprobs_equal_the_training_forward(model, temperature):
  prompts, lengths = _batch()
  r = _roll(model, prompts, lengths, N, jax.random.key(3), temperature=temperature)
  again = rollout.response_logprobs(model, r.tokens_BS, r.lengths_B, N, temperature=temperature)
  np.testing.assert_allclose(np.asarray(r.logprobs_BN), np.asarray(again), atol=1e-5)
  # ... and they are the log-probs of the tokens actually sampled (first and last step).
  logits = model(r.tokens_BS) / temperature
  for i, n in enumerate(np.asarray(lengths)):
    for j in (0, N - 1):
      lp = jax.nn.log_softmax(logits[i, n + j - 1])[r.response_BN[i, j]]
      np.testing.assert_allclose(float(r.logprobs_BN[i, j]), float(lp), atol=1e-5)


def test_end_token_mask(model):
  """The mask is 1 up to and including the first END, 0 after; later tokens are END; a row
  whose first token is END has mask [1, 0, ...]; a row that never ends is all 1."""
  prompts, lengths = _batch()
  greedy = np.asarray(_roll(model, prompts, lengths, N, None, temperature=0.0).response_BN)
  end = int(greedy[0, 0])                           # row 0 ends at its first token
  r = _roll(model, prompts, lengths, N, None, temperature=0.0, end_id=end)
  mask, resp = np.asarray(r.mask_BN), np.asarray(r.response_BN)
  np.testing.assert_array_equal(mask[0], [1] + [0] * (N - 1))
  for i in range(len(PROMPTS)):
    hits = np.flatnonzero(greedy[i] == end)
    n = hits[0] + 1 if len(hits) else N
    np.testing.assert_array_equal(mask[i], [1] * n + [0] * (N - n))
    np.testing.assert_array_equal(resp[i, :n], greedy[i, :n])
    assert (resp[i, n:] == end).all()
    assert float(r.response_lengths_B[i]) == n
  assert np.asarray(r.logprobs_BN)[mask == 0].sum() == 0


def test_rollout_runs_inside_jit_with_traced_prompts(model):
  prompts, lengths = _batch()
  f = jax.jit(lambda st, p, l, k: rollout.sample_responses(
      nnx.merge(nnx.graphdef(model), st), p, l, N, k).response_BN)
  out = f(nnx.state(model), prompts, lengths, jax.random.key(0))
  assert out.shape == (len(PROMPTS), N)


def test_rollout_bad_input(model):
  prompts, lengths = _batch()
  with pytest.raises(ValueError, match="context_len"):
    rollout.sample_responses(model, prompts, lengths, CFG.context_len, None, temperature=0.0)
  with pytest.raises(ValueError, match="PRNG key"):
    rollout.sample_responses(model, prompts, lengths, N, None, temperature=1.0)


def test_scalar_heads_init_and_reading_position():
  m = gpt.GPT(gpt.GPTConfig(vocab_size=13, context_len=24, num_layers=1, d_model=512,
                            num_heads=4), rngs=nnx.Rngs(0))
  before = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  reward_model.add_head(m, "reward_head", rngs=nnx.Rngs(1))
  reward_model.add_head(m, "value_head", rngs=nnx.Rngs(2))
  heads = nnx.state(m, reward_model.HeadParam)
  assert sum(x.size for x in jax.tree.leaves(heads)) == 2 * (512 + 1)   # D + 1 each
  assert sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))) == before + 2 * 513
  std = float(jnp.std(m.reward_head.kernel[...]))
  assert abs(std * np.sqrt(513) - 1) < 0.1                   # N(0, 1/(D + 1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 13, (3, 10)), jnp.int32)
  assert not reward_model.token_scores(m, tokens, head="value_head").any()   # V ≡ 0 at init
  last = jnp.asarray([2, 9, 5])
  s = reward_model.sequence_scores(m, tokens, last)
  all_s = reward_model.token_scores(m, tokens, head="reward_head")
  np.testing.assert_allclose(np.asarray(s), np.asarray(all_s)[np.arange(3), [2, 9, 5]],
                             rtol=1e-6)
  # Causal: tokens after a row's last position do not change its score.
  changed = tokens.at[0, 3:].set(0).at[2, 6:].set(0)
  np.testing.assert_allclose(np.asarray(reward_model.sequence_scores(m, changed, last))[[0, 2]],
                             np.asarray(s)[[0, 2]], rtol=1e-5)
  with pytest.raises(ValueError, match="no value_head"):
    reward_model.token_scores(gpt.GPT(CFG, rngs=nnx.Rngs(0)), tokens)
