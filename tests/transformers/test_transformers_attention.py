"""Tests for genfm.transformers.attention against jax.nn and a per-head loop."""

import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import attention

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


B, T, S, N, H = 2, 6, 7, 4, 8


def _qkv(K, T=T, S=S, seed=0, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(KEY(seed), 3)
  q = jax.random.normal(kq, (B, T, N, H), dtype)
  k = jax.random.normal(kk, (B, S, K, H), dtype)
  v = jax.random.normal(kv, (B, S, K, H), dtype)
  return q, k, v


CASES = [  # each mask/option at least once; fewer cases keep the (compile-bound) test fast
    dict(is_causal=True, scale=0.3),
    dict(local_window_size=2, key_value_seq_lengths=jnp.array([7, 4])),
    dict(local_window_size=(3, 0), is_causal=True),
    dict(query_seq_lengths=jnp.array([6, 3]), key_value_seq_lengths=jnp.array([5, 7])),
]


class EquivalenceTest(chex.TestCase):

  def test_reference_equals_jax_nn_xla(self):
    bias = jax.random.normal(KEY(1), (1, N, T, S))
    mask = jax.random.bernoulli(KEY(2), 0.8, (B, 1, T, S)).at[..., 0].set(True)
    cases = CASES + [dict(bias=bias), dict(mask=mask, is_causal=True)]
    for i, case in enumerate(cases):
      K = (4, 2, 1)[i % 3]  # every case with one of MHA / GQA / MQA keeps the test fast
      q, k, v = _qkv(K)
      got = attention.dot_product_attention(q, k, v, **case)
      want = jax.nn.dot_product_attention(q, k, v, implementation="xla", **case)
      np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6, err_msg=f"K={K} case={case}")

  @chex.variants(with_jit=True, without_jit=True)
  def test_reference_equals_jax_nn_xla_under_jit(self):
    q, k, v = _qkv(2)
    lengths = jnp.array([5, 7])
    fn = self.variant(lambda q, k, v, n: attention.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=(2, 0), key_value_seq_lengths=n))
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(2, 0),
                                        key_value_seq_lengths=lengths, implementation="xla")
    np.testing.assert_allclose(fn(q, k, v, lengths), want, atol=2e-6, rtol=2e-6)

  def test_xla_implementation_switch(self):
    q, k, v = _qkv(2, T=S)
    got = attention.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    want = attention.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_mask_helper_matches_definition():
  m = np.asarray(attention.attention_mask(5, 5, is_causal=True, local_window_size=(2, 0)))[0, 0]
  want = np.array([[0 <= t - s <= 2 for s in range(5)] for t in range(5)])
  np.testing.assert_array_equal(m, want)


def test_gqa_equals_mha_with_repeated_kv_heads():
  for K in (2, 1):  # K = 1 is MQA: every query head reads the single KV head
    q, k, v = _qkv(K)
    G = N // K
    got = attention.reference_attention(q, k, v, is_causal=True)
    want = attention.reference_attention(
        q, jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2), is_causal=True)
    # Equal up to fp32 summation order (the einsum contracts differently shaped operands).
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def _per_head_loop(mha, x, causal=True):
  """Eq. (1) and sec. 3.2.2 of 1706.03762 in numpy, one head at a time."""
  x = np.asarray(x, np.float64)
  Wq, Wk, Wv = (np.asarray(p.kernel[...], np.float64) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
  Wo = np.asarray(mha.o_proj.kernel[...], np.float64)
  G = mha.num_heads // mha.num_kv_heads
  Tn = x.shape[1]
  out = np.zeros(x.shape[:2] + (Wo.shape[-1],))
  for b in range(x.shape[0]):
    for n in range(mha.num_heads):
      q = x[b] @ Wq[:, n]
      k = x[b] @ Wk[:, n // G]
      v = x[b] @ Wv[:, n // G]
      logits = q @ k.T / np.sqrt(q.shape[-1])
      if causal:
        logits = np.where(np.tril(np.ones((Tn, Tn))) > 0, logits, -np.inf)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[b] += (p @ v) @ Wo[n]
  return out


@pytest.mark.parametrize("K", [4, 1])  # MHA and MQA; GQA is covered against jax.nn
def test_module_equals_per_head_loop(K):
  D = 16
  mha = attention.MultiHeadAttention(D, N, num_kv_heads=K, rngs=nnx.Rngs(KEY(0)))
  x = jax.random.normal(KEY(3), (B, T, D))
  np.testing.assert_allclose(mha(x), _per_head_loop(mha, x), atol=1e-5)


def test_module_shapes_and_param_count():
  D, K = 16, 2
  make = lambda: attention.MultiHeadAttention(
      D, N, num_kv_heads=K, use_bias=True, rngs=nnx.Rngs(KEY(0)))
  params = jax.eval_shape(lambda: nnx.state(make(), nnx.Param))
  n_params = sum(p.size for p in jax.tree.leaves(params))
  Hd = D // N
  assert n_params == (D * N * Hd + N * Hd) + 2 * (D * K * Hd + K * Hd) + (N * Hd * D + D)
  out = jax.eval_shape(lambda x: make()(x), jax.ShapeDtypeStruct((B, T, D), jnp.float32))
  chex.assert_shape(out, (B, T, D))


@pytest.mark.parametrize("window", [None, 2])
def test_causality_through_gradients(window):
  D = 16
  mha = attention.MultiHeadAttention(D, N, num_kv_heads=2, rngs=nnx.Rngs(KEY(0)))
  x = jax.random.normal(KEY(4), (1, T, D))
  jac = nnx.jit(lambda m, x: jax.jacrev(
      lambda x: m(x, local_window_size=None if window is None else (window, 0)))(x))(mha, x)
  dep = np.abs(np.asarray(jac)[0, :, :, 0, :, :]).sum(axis=(1, 3))  # [t, t']
  for t in range(T):
    for tp in range(T):
      visible = tp <= t and (window is None or t - tp <= window)
      if visible:
        assert dep[t, tp] > 0, (t, tp)
      else:
        assert dep[t, tp] == 0.0, (t, tp)  # exactly zero, not merely small


def test_padding_equals_truncated_sequence_and_ignores_padded_keys():
  q, k, v = _qkv(2)
  lengths = jnp.array([7, 4])
  out = attention.reference_attention(q, k, v, key_value_seq_lengths=lengths)
  trunc = attention.reference_attention(q[1:], k[1:, :4], v[1:, :4])
  np.testing.assert_allclose(out[1:], trunc, atol=1e-6)
  k2 = k.at[1, 4:].set(1e3)
  v2 = v.at[1, 4:].set(-1e3)
  out2 = attention.reference_attention(q, k2, v2, key_value_seq_lengths=lengths)
  np.testing.assert_array_equal(out, out2)


def test_bf16_inputs_close_to_fp32():
  q, k, v = _qkv(2, dtype=jnp.bfloat16)
  got = attention.reference_attention(q, k, v, is_causal=True)
  assert got.dtype == jnp.bfloat16
  want = attention.reference_attention(*(a.astype(jnp.float32) for a in (q, k, v)), is_causal=True)
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_custom_attention_fn_hook_is_called():
  calls = []

  def spy(q, k, v, *, is_causal):  # a kernel with a narrower signature than jax.nn's
    calls.append(is_causal)
    return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="xla")

  D = 16
  a = attention.MultiHeadAttention(D, N, num_kv_heads=2, rngs=nnx.Rngs(KEY(0)))
  b = attention.MultiHeadAttention(D, N, num_kv_heads=2, attention_fn=spy, rngs=nnx.Rngs(KEY(0)))
  x = jax.random.normal(KEY(5), (B, T, D))
  np.testing.assert_allclose(a(x), b(x), atol=2e-6)
  assert calls == [True]


def test_errors():
  q, k, v = _qkv(3)
  with pytest.raises(ValueError, match="divisible by key/value heads K=3"):
    attention.dot_product_attention(q, k, v)
  with pytest.raises(ValueError, match="num_kv_heads K=3"):
    attention.MultiHeadAttention(16, 4, num_kv_heads=3, rngs=nnx.Rngs(KEY(0)))
  q, k, v = _qkv(2)
  with pytest.raises(ValueError, match="valid choices"):
    attention.dot_product_attention(q, k, v, implementation="flash9000")
  with pytest.raises(ValueError, match="rank-4"):
    attention.dot_product_attention(q[0], k, v)
  with pytest.raises(ValueError, match=r"x \[B, T, D\]"):
    attention.MultiHeadAttention(16, 4, rngs=nnx.Rngs(KEY(0)))(jnp.ones((3, 16)))


# "reference_vjp": the reference forward with FlashAttention-2's closed-form backward. Its
# gradients must equal autodiff of the reference for every option, including a learned bias
# (T5's relative positions), GQA (each KV head sums the gradients of its G query heads), a row
# whose keys are all masked (uniform P there, but no gradient may leak through the mask) and
# ragged query/key lengths; the cotangent differs per element so a swapped dQ/dK would show.
VJP_CASES = [
    dict(is_causal=True, scale=0.3),
    dict(local_window_size=(3, 0), key_value_seq_lengths=jnp.array([7, 4]), bias=True),
    dict(query_seq_lengths=jnp.array([6, 3]), mask=True, bias=True),
]


@pytest.mark.parametrize("case,K", [(0, 4), (1, 2), (2, 2)])
def test_reference_vjp_gradients_equal_autodiff(case, K):
  kw = dict(VJP_CASES[case])
  q, k, v = _qkv(K)
  kb, km, kd = jax.random.split(KEY(9), 3)
  bias = jax.random.normal(kb, (1, N, T, S)) if kw.pop("bias", False) else None
  if kw.pop("mask", False):
    kw["mask"] = jax.random.bernoulli(km, 0.6, (B, 1, T, S)).at[1, 0, 2].set(False)
  do = jax.random.normal(kd, (B, T, N, H))

  def loss(q, k, v, bias, impl):
    out = attention.dot_product_attention(q, k, v, bias, implementation=impl, **kw)
    return jnp.sum(out * do)

  args = (q, k, v, bias)
  want_val, want = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args, "reference")
  got_val, got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)),
                         static_argnums=4)(*args, "reference_vjp")
  np.testing.assert_allclose(got_val, want_val, rtol=1e-6)
  for name, g, w in zip("qkvb", got, want):
    if w is None:
      assert g is None
      continue
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5, err_msg=name)
  if "mask" in kw:  # the fully masked query (b=1, t=2): its logits are constants, so dQ = 0
    np.testing.assert_array_equal(got[0][1, 2], 0.0)


def test_reference_vjp_bf16_gradients_close_to_fp32():
  q, k, v = _qkv(2, dtype=jnp.bfloat16)
  loss = lambda impl, *a: jnp.sum(attention.dot_product_attention(
      *a, is_causal=True, implementation=impl).astype(jnp.float32) ** 2)
  got = jax.grad(functools.partial(loss, "reference_vjp"), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(functools.partial(loss, "reference"), argnums=(0, 1, 2))(
      *(a.astype(jnp.float32) for a in (q, k, v)))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), w, atol=0.15, rtol=0.05)
