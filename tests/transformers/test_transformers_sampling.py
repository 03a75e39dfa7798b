"""Tests for genfm.transformers.sampling: filters vs numpy, reductions to greedy, errors."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import gpt, sampling

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


B, V = 64, 10


def _logits(seed=0):
  return 2.0 * jax.random.normal(KEY(seed), (B, V))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_top_k_and_top_p_match_numpy_definitions():
  logits = np.asarray(_logits(), np.float64)
  for k in (1, 3, V):
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k=k))
    for b in range(B):
      kept = set(np.argsort(-logits[b])[:k])
      assert {i for i in range(V) if np.isfinite(got[b, i])} == kept
  for p in (0.05, 0.5, 0.9):
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), temperature=0.7, top_p=p))
    probs = _softmax(logits / 0.7)
    for b in range(B):
      order = np.argsort(-probs[b])
      n = np.searchsorted(np.cumsum(probs[b, order]), p) + 1  # smallest prefix with mass >= p
      assert {i for i in range(V) if np.isfinite(got[b, i])} == set(order[:n])
      np.testing.assert_allclose(got[b, order[:n]], logits[b, order[:n]] / 0.7, rtol=1e-5)


def test_samples_follow_the_filtered_distribution():
  logits = jnp.tile(_logits(1)[:1], (4000, 1))
  draws = sampling.sample(logits, KEY(2), temperature=1.5, top_k=4)
  freq = np.bincount(np.asarray(draws), minlength=V) / 4000
  want = _softmax(np.asarray(sampling.filter_logits(logits[:1], temperature=1.5, top_k=4)))[0]
  assert (freq[want == 0] == 0).all()
  np.testing.assert_allclose(freq, want, atol=0.03)  # ~4 sigma for 4000 draws


def test_limits_reduce_to_greedy():
  logits = _logits(3)
  greedy = np.asarray(jnp.argmax(logits, -1))
  key = KEY(4)
  for kw in (dict(temperature=0.0), dict(temperature=1e-4), dict(top_k=1),
             dict(top_p=1e-6), dict(temperature=2.0, top_k=1), dict(temperature=2.0, top_p=1e-6)):
    np.testing.assert_array_equal(sampling.sample(logits, key, **kw), greedy, err_msg=str(kw))


def test_no_filter_is_plain_softmax_sampling():
  logits = _logits(5)
  key = KEY(6)
  np.testing.assert_array_equal(
      sampling.sample(logits, key, temperature=1.0, top_k=V, top_p=1.0),
      jax.random.categorical(key, logits, axis=-1))


def test_errors():
  logits = _logits()
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    sampling.sample(logits, KEY(0), temperature=-0.5)
  for p in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
      sampling.sample(logits, KEY(0), top_p=p)
  for k in (0, V + 1):
    with pytest.raises(ValueError, match="top_k must be in 1..10"):
      sampling.sample(logits, KEY(0), top_k=k)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    sampling.sample(logits, None, temperature=1.0)
  model = gpt.GPT(gpt.GPTConfig(vocab_size=7, context_len=8, num_layers=1, d_model=8,
                                num_heads=2), rngs=nnx.Rngs(KEY(0)))
  with pytest.raises(ValueError, match="exceeds context_len=8"):
    sampling.generate(model, jnp.zeros((1, 5), jnp.int32), 4)
  with pytest.raises(ValueError, match="outside 0..6"):
    sampling.generate(model, jnp.full((1, 2), 7, jnp.int32), 2)
  with pytest.raises(ValueError, match="top_p"):
    sampling.generate(model, jnp.zeros((1, 2), jnp.int32), 2, top_p=2.0, key=KEY(0))


def test_generate_with_sampling_is_reproducible_and_in_range():
  model = gpt.GPT(gpt.GPTConfig(vocab_size=7, context_len=12, num_layers=1, d_model=8,
                                num_heads=2, positions="rope"), rngs=nnx.Rngs(KEY(0)))
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
  kw = dict(key=KEY(7), temperature=1.0, top_k=5, top_p=0.9)
  a, _ = sampling.generate(model, prompt, 6, **kw)
  b, _ = sampling.generate(model, prompt, 6, use_cache=False, **kw)
  np.testing.assert_array_equal(a, b)  # same keys, same logits → same samples
  assert a.shape == (2, 9) and int(a.min()) >= 0 and int(a.max()) < 7
