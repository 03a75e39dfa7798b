"""Tests for genfm.transformers.speculative: samples follow the target's exact distribution
(chi-square against enumeration), draft = target accepts everything, greedy = greedy target,
acceptance rate = Σ min(p, q), errors."""

import functools
import itertools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genfm.transformers import gpt, sampling, speculative

# Keys use the "rbg" generator, like the other transformers tests (threefry compiles slowly on CPU).
KEY = functools.partial(jax.random.key, impl="rbg")

# init_std 0.5 gives peaked, clearly different next-token distributions for two seeds, so the
# draft is a poor proposal (many rejections) and the chi-square test has power.
TARGET = gpt.GPTConfig(vocab_size=4, context_len=8, num_layers=1, d_model=16, num_heads=2,
                       positions="rope", init_std=0.5)
DRAFT = gpt.GPTConfig(vocab_size=4, context_len=8, num_layers=1, d_model=8, num_heads=1,
                      positions="rope", init_std=0.5)
PROMPT = jnp.array([[1, 3]])
N_SAMPLES = 20_000  # rows of one batch = independent samples (each row has its own randomness)


@functools.cache
def _models():
  return gpt.GPT(TARGET, rngs=nnx.Rngs(KEY(0))), gpt.GPT(DRAFT, rngs=nnx.Rngs(KEY(1)))


def _exact_distribution(model, prompt_1T, n, temperature=1.0):
  """p(y_1..y_n | prompt) for all V^n continuations, by enumeration and one full forward."""
  V, T0 = model.cfg.vocab_size, prompt_1T.shape[1]
  conts = np.array(list(itertools.product(range(V), repeat=n)))
  seqs = jnp.asarray(np.concatenate([np.tile(prompt_1T, (len(conts), 1)), conts], 1))
  logits = np.asarray(model(seqs, positions_BT=jnp.broadcast_to(
      jnp.arange(T0 + n), seqs.shape)), np.float64) / temperature
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  lp = sum(logp[np.arange(len(conts)), T0 + i - 1, conts[:, i]] for i in range(n))
  return np.exp(lp), conts


def _index(conts_XN, V):
  return (conts_XN * V ** np.arange(conts_XN.shape[1])[::-1]).sum(-1)


def _chi2_pvalue(counts, probs):
  """Pearson chi-square p-value; cells expecting < 5 samples are pooled into one (the χ²
  approximation needs ≈ 5 per cell; some of the 64 sequences have probability ~1e-6)."""
  expected = counts.sum() * probs
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  chi2 = ((obs - exp) ** 2 / exp).sum()
  return stats.chi2.sf(chi2, len(obs) - 1)


@pytest.mark.slow  # ~15 s CPU (20k sample rows); ~35 s wall on a loaded box
def test_samples_follow_the_target_distribution():
  target, draft = _models()
  n, V = 3, TARGET.vocab_size
  prompt = jnp.tile(PROMPT, (N_SAMPLES, 1))
  tokens, st = speculative.speculative_generate(target, draft, prompt, n, key=KEY(2), gamma=2)
  chex.assert_shape(tokens, (N_SAMPLES, 2 + n))
  np.testing.assert_array_equal(tokens[:, :2], prompt)
  p_exact, conts = _exact_distribution(target, PROMPT, n)
  q_exact, _ = _exact_distribution(draft, PROMPT, n)
  np.testing.assert_allclose(p_exact.sum(), 1.0, rtol=1e-5)
  assert 0.5 * np.abs(p_exact - q_exact).sum() > 0.2  # the draft really is a different model
  order = np.argsort(_index(conts, V))
  counts = np.bincount(_index(np.asarray(tokens[:, 2:]), V), minlength=V**n)
  # Pearson chi-square over the 64 sequences against the exact target distribution.
  assert _chi2_pvalue(counts, p_exact[order]) > 1e-3
  tv = 0.5 * np.abs(counts / N_SAMPLES - p_exact[order]).sum()
  assert tv < 0.03, tv  # multinomial noise at 20k samples over 64 cells is ≈ 0.02
  # The same statistic rejects the draft's distribution: the test can tell them apart.
  assert _chi2_pvalue(counts, q_exact[order]) < 1e-9
  # Both paths ran: rejections (replacement tokens) and full acceptance (bonus tokens).
  acc = np.asarray(st["accepted"]) / np.asarray(st["proposed"])
  assert 0.1 < acc.mean() < 0.9 and (acc == 1).any() and (acc == 0).any()


def test_acceptance_rate_is_sum_of_min_p_q():
  # γ = 1, one token: the draft token is accepted with probability β = Σ_x min(p(x), q(x))
  # (Definition 3.1 of 2211.17192), here exactly computable.
  target, draft = _models()
  prompt = jnp.tile(PROMPT, (N_SAMPLES, 1))
  _, st = speculative.speculative_generate(target, draft, prompt, 1, key=KEY(3), gamma=1)
  p, _ = _exact_distribution(target, PROMPT, 1)
  q, _ = _exact_distribution(draft, PROMPT, 1)
  beta = np.minimum(p, q).sum()
  rate = float(np.mean(st["accepted"]) / np.mean(st["proposed"]))
  print(f"acceptance rate {rate:.4f} vs beta = sum min(p, q) = {beta:.4f}")
  assert abs(rate - beta) < 4 * np.sqrt(beta * (1 - beta) / N_SAMPLES)


def test_draft_equal_to_target_accepts_everything():
  target, _ = _models()
  prompt = jnp.tile(PROMPT, (64, 1))
  tokens, st = speculative.speculative_generate(target, target, prompt, 5, key=KEY(4), gamma=2)
  np.testing.assert_array_equal(st["accepted"], st["proposed"])  # rate exactly 1
  np.testing.assert_array_equal(st["rounds"], 2)  # ⌈5 / (γ + 1)⌉ target passes
  assert len({tuple(r) for r in np.asarray(tokens)}) > 1  # still sampling, not greedy


def test_greedy_speculative_equals_greedy_target():
  target, draft = _models()
  prompt = jax.random.randint(KEY(5), (3, 2), 0, TARGET.vocab_size)
  tokens, st = speculative.speculative_generate(target, draft, prompt, 5, gamma=2,
                                                temperature=0.0)
  greedy, _ = sampling.generate(target, prompt, 5)
  np.testing.assert_array_equal(tokens, greedy)
  assert (np.asarray(st["accepted"]) < np.asarray(st["proposed"])).any()  # rejections happened


def test_errors():
  target, draft = _models()
  other = gpt.GPT(gpt.GPTConfig(vocab_size=5, context_len=8, num_layers=1, d_model=8,
                                num_heads=1), rngs=nnx.Rngs(KEY(0)))
  prompt = jnp.zeros((1, 2), jnp.int32)
  for g in (0, -1, 1.5):
    with pytest.raises(ValueError, match="gamma .* must be an integer >= 1"):
      speculative.speculative_generate(target, draft, prompt, 2, key=KEY(0), gamma=g)
  with pytest.raises(ValueError, match="same vocabulary: draft vocab_size=5, target vocab_size=4"):
    speculative.speculative_generate(target, other, prompt, 2, key=KEY(0))
  with pytest.raises(ValueError, match="= 9 exceeds context_len=8"):
    speculative.speculative_generate(target, draft, prompt, 5, key=KEY(0), gamma=3)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    speculative.speculative_generate(target, draft, prompt, 2, key=KEY(0), temperature=-1.0)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    speculative.speculative_generate(target, draft, prompt, 2)
  with pytest.raises(ValueError, match="outside 0..3"):
    speculative.speculative_generate(target, draft, jnp.full((1, 2), 4), 2, key=KEY(0))
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    speculative.speculative_generate(target, draft, prompt, 0, key=KEY(0))
