"""Tests for genfm.transformers.kv_cache: cached decoding equals full recompute."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import gpt, kv_cache, sampling

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


TINY = gpt.GPTConfig(vocab_size=13, context_len=16, num_layers=2, d_model=16, num_heads=4)
VARIANTS = {
    "gpt2": {},
    "rope_gqa_rmsnorm_swiglu": dict(positions="rope", num_kv_heads=2, norm="rmsnorm",
                                    ffn="swiglu", use_bias=False),
    "alibi_mqa_window_post": dict(positions="alibi", num_kv_heads=1, attention_window=3,
                                  norm_placement="post"),
}


def test_update_writes_slots_and_masks_causally():
  c = kv_cache.KVCache.init(2, 6, 1, 2)
  k = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 1, 2) + 1
  pos = jnp.array([[0, 1, 2], [0, 1, 2]])
  k_all, v_all, mask, c = c.update(k, -k, pos)
  np.testing.assert_array_equal(k_all[:, :3], k)
  np.testing.assert_array_equal(k_all[:, 3:], 0.0)
  np.testing.assert_array_equal(v_all[:, :3], -k)
  want = np.array([[s <= t for s in range(6)] for t in range(3)])
  np.testing.assert_array_equal(mask[0, 0], want)
  k_all, _, mask, c = c.update(k[:, :1] * 10, k[:, :1], jnp.array([[3], [3]]),
                               local_window_size=(2, 0))
  np.testing.assert_array_equal(k_all[:, 3], k[:, 0] * 10)
  np.testing.assert_array_equal(mask[0, 0, 0], [False, True, True, True, False, False])
  assert c.nbytes == 2 * 2 * 6 * 1 * 2 * 4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_greedy_decoding_equals_full_recompute(name):
  cfg = dataclasses.replace(TINY, **VARIANTS[name])
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  prompt = jax.random.randint(KEY(1), (2, 5), 0, cfg.vocab_size)
  tok_c, logits_c = sampling.generate(model, prompt, 8, use_cache=True)
  tok_r, logits_r = sampling.generate(model, prompt, 8, use_cache=False)
  np.testing.assert_allclose(logits_c, logits_r, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(tok_c, tok_r)
  np.testing.assert_array_equal(tok_c[:, :5], prompt)
  # And the reference really is the model: its step logits are the plain forward's.
  full = sampling._forward(model, tok_r, jnp.broadcast_to(jnp.arange(13), (2, 13)))
  np.testing.assert_allclose(logits_r, full[:, 4:12], atol=1e-5, rtol=1e-5)


def test_chunked_prefill_equals_one_prefill():
  # Shapes as in the test above (B = 2, 13 slots), so most programs are already compiled.
  cfg = dataclasses.replace(TINY, **VARIANTS["rope_gqa_rmsnorm_swiglu"])
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  tokens = jax.random.randint(KEY(2), (2, 13), 0, cfg.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(13), (2, 13))
  full = sampling._forward(model, tokens, pos)
  caches, chunks = model.init_cache(2, 13), []
  for a, b in ((0, 5), (5, 8), (8, 13)):
    logits, caches = sampling._forward_cached(model, tokens[:, a:b], pos[:, a:b], caches)
    chunks.append(logits)
  np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), full, atol=1e-5)


def test_cache_memory_and_errors():
  cfg = dataclasses.replace(TINY, num_kv_heads=1)
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  caches = model.init_cache(3)
  # 2 (k and v) · L · B · S · K · H · 4 bytes; MQA stores one head instead of N = 4.
  assert sum(c.nbytes for c in caches) == 2 * 2 * 3 * 16 * 1 * 4 * 4
  with pytest.raises(ValueError, match="exceeds context_len=16"):
    model.init_cache(1, 17)
  with pytest.raises(ValueError, match="needs explicit positions_BT"):
    model(jnp.zeros((3, 1), jnp.int32), caches=caches)
