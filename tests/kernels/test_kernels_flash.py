"""Pallas flash attention (interpret mode on CPU) against the pure-jnp fp32 reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.kernels import attention_reference as ar
from genfm.kernels import flash_attention as fa
from genfm.kernels import flash_attention_kernels as fak

SMALL = fa.BlockSizes(32, 64, 32, 64)  # several tiles per sequence at T, S <= 128
_reference = jax.jit(ar.mha_reference, static_argnames=("scale", "is_causal"))


def _qkv(b, t, s, n, k, h, dtype=jnp.float32, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(kq, (b, t, n, h), dtype), jax.random.normal(kk, (b, s, k, h), dtype),
          jax.random.normal(kv, (b, s, k, h), dtype), jax.random.normal(kd, (b, t, n, h)))


def _segments(b, length, cut):
  """Two packed documents per row: ids 0 before `cut`, 1 after (cut differs per batch row)."""
  return (jnp.arange(length)[None, :] >= jnp.array(cut)[:, None]).astype(jnp.int32)


def _value_and_grads(fn, q, k, v, do):
  """(fn(q, k, v), its vjp with cotangent do), one jit: eager op-by-op dispatch is slow."""

  @jax.jit
  def run(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do.astype(out.dtype))

  return run(q, k, v, do)


# (B, T, S, N, K, H, causal, segments, tpu_layout): MHA/GQA/MQA, H 64/128, uneven T and S
# (not multiples of the 32/64 tiles), cross-attention T != S, packed segments, and the
# TPU-structured kernels (BNTH, [rows, 1] statistics) run by the interpreter.
CASES = [
    (2, 128, 128, 2, 2, 64, False, False, False),
    (1, 96, 96, 4, 2, 128, True, False, False),
    (1, 80, 112, 4, 1, 64, True, False, False),
    (2, 100, 100, 4, 2, 64, True, True, False),
    (1, 72, 72, 2, 1, 128, False, True, True),
]  # backend="tpu" itself (128-row tiles) runs in the TPU interpreter test at the end.


@pytest.mark.parametrize("b,t,s,n,k,h,causal,segments,tpu_layout", CASES)
def test_fp32_forward_and_grads_match_reference(b, t, s, n, k, h, causal, segments, tpu_layout):
  q, k_, v, do = _qkv(b, t, s, n, k, h)
  qs = _segments(b, t, [t // 3, t // 2][:b]) if segments else None
  ks = _segments(b, s, [t // 3, t // 2][:b]) if segments else None
  kw = dict(is_causal=causal, q_segment_ids=qs, kv_segment_ids=ks)
  pallas = functools.partial(fa.flash_attention, block_sizes=SMALL, tpu_layout=tpu_layout, **kw)
  out, grads = _value_and_grads(pallas, q, k_, v, do)
  ref_out, ref_grads = _value_and_grads(lambda *a: ar.mha_reference(*a, **kw), q, k_, v, do)
  chex.assert_shape(out, (b, t, n, h))
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, (q, k_, v))
  np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, atol=1e-4, rtol=0)


def test_public_api_equals_jax_nn_xla_gqa_causal():
  q, k, v, _ = _qkv(2, 64, 64, 4, 2, 64, seed=1)
  ours = jax.jit(lambda *a: fa.dot_product_attention(*a, is_causal=True))(q, k, v)
  jaxs = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(ours, jaxs, atol=1e-5, rtol=0)
  ours_xla = fa.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(ours_xla, jaxs, atol=0, rtol=0)


def test_segment_ids_equal_jax_nn_with_block_diagonal_mask():
  q, k, v, _ = _qkv(1, 64, 64, 2, 2, 64, seed=2)
  seg = _segments(1, 64, [40])
  ours = fa.dot_product_attention(q, k, v, segment_ids=seg, scale=0.3)
  mask = (seg[:, :, None] == seg[:, None, :])[:, None]
  jaxs = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3, implementation="xla")
  np.testing.assert_allclose(ours, jaxs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,k,causal", [(64, 1, False), (128, 2, True)])  # MQA / GQA
def test_bf16_within_2e2_and_at_most_twice_xla_error(h, k, causal):
  q, k_, v, do = _qkv(1, 96, 96, 4, k, h, dtype=jnp.bfloat16, seed=3)
  f32 = [x.astype(jnp.float32) for x in (q, k_, v)]
  ref_out, ref_grads = _value_and_grads(functools.partial(ar.mha_reference, is_causal=causal),
                                        *f32, do)
  pallas = functools.partial(fa.flash_attention, is_causal=causal, block_sizes=SMALL)
  xla = functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="xla")
  errs = {}
  for name, fn in (("pallas", pallas), ("xla", xla)):
    out, grads = _value_and_grads(fn, q, k_, v, do)
    assert out.dtype == jnp.bfloat16
    errs[name] = [float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref_out)))] + [
        float(jnp.max(jnp.abs(g.astype(jnp.float32) - rg)) / jnp.max(jnp.abs(rg)))
        for g, rg in zip(grads, ref_grads)]  # grads: error relative to the largest entry
  assert max(errs["pallas"]) < 2e-2, errs
  for ours, theirs in zip(errs["pallas"], errs["xla"]):
    assert ours <= 2 * theirs + 1e-3, errs  # +1e-3: one bf16 ulp at |x| ~ 0.25


def test_fully_masked_rows_are_zero_with_finite_zero_grads():
  b, t, s, n, k, h = 1, 48, 64, 2, 1, 64
  q, k_, v, do = _qkv(b, t, s, n, k, h, seed=4)
  q_ids = jnp.where(jnp.arange(t) < 20, 0, 7)[None].astype(jnp.int32)  # id 7: no such key
  kv_ids = jnp.zeros((b, s), jnp.int32)
  kw = dict(is_causal=True, segment_ids=(q_ids, kv_ids))
  pallas = functools.partial(fa.dot_product_attention, **kw)
  out, (dq, dk, dv) = _value_and_grads(pallas, q, k_, v, do)
  for x in (out, dq, dk, dv):
    assert bool(jnp.all(jnp.isfinite(x)))
  np.testing.assert_array_equal(out[:, 20:], 0.0)
  np.testing.assert_array_equal(dq[:, 20:], 0.0)
  ref = _reference(q, k_, v, is_causal=True, q_segment_ids=q_ids, kv_segment_ids=kv_ids)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
  xla = fa.dot_product_attention(q, k_, v, implementation="xla", **kw)
  np.testing.assert_allclose(xla, ref, atol=1e-5, rtol=0)


def test_causal_gradient_of_output_wrt_future_keys_is_exactly_zero():
  q, k, v, _ = _qkv(1, 64, 64, 2, 2, 64, seed=5)
  t0 = 21  # output row 21 must not depend on keys/values 22..63

  def row(k_, v_):
    return jnp.sum(fa.flash_attention(q, k_, v_, is_causal=True, block_sizes=SMALL)[:, t0])

  dk, dv = jax.jit(jax.grad(row, argnums=(0, 1)))(k, v)
  assert float(jnp.max(jnp.abs(dk[:, t0 + 1:]))) == 0.0
  assert float(jnp.max(jnp.abs(dv[:, t0 + 1:]))) == 0.0
  assert float(jnp.max(jnp.abs(dv[:, :t0 + 1]))) > 0.0


def test_eval_shape_and_jit_equals_eager():
  q, k, v, _ = _qkv(1, 32, 32, 2, 1, 64, seed=6)
  shape = jax.eval_shape(lambda *a: fa.dot_product_attention(*a), q.astype(jnp.bfloat16),
                         k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  assert shape.shape == (1, 32, 2, 64) and shape.dtype == jnp.bfloat16
  fn = functools.partial(fa.dot_product_attention, scale=0.5)
  ref = _reference(q, k, v, scale=0.5)
  for variant in (fn, jax.jit(fn)):  # eager and jitted
    np.testing.assert_allclose(variant(q, k, v), ref, atol=1e-5, rtol=0)


def _brute_force_tiles(t, s, bq, bk, causal):
  """Per query tile: (#leading fully-visible key tiles, #key tiles with any visible key)."""
  mask = np.tril(np.ones((t, s), bool)) if causal else np.ones((t, s), bool)
  t_pad, s_pad = -(-t // bq) * bq, -(-s // bk) * bk
  full = np.zeros((t_pad, s_pad), bool)
  full[:t, :s] = mask
  full[t:, :s] = True if not causal else np.tril(np.ones((t_pad, s), bool))[t:]  # padded q rows
  out = []
  for i in range(t_pad // bq):
    tiles = [full[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk] for j in range(s_pad // bk)]
    any_vis = [bool(x.any()) for x in tiles]
    visible = max([j + 1 for j, a in enumerate(any_vis) if a], default=0)
    unmasked = next((j for j, x in enumerate(tiles) if not x.all()), len(tiles))
    out.append((unmasked, visible))
  return out


@pytest.mark.parametrize("t,s,bq,bk,causal", [(128, 128, 32, 32, True), (100, 90, 32, 64, True),
                                              (64, 128, 64, 16, True), (70, 50, 16, 32, False)])
def test_tile_ranges_skip_exactly_the_invisible_tiles(t, s, bq, bk, causal):
  cfg = fak.KernelConfig(backend="interpret", scale=1.0, is_causal=causal, has_segments=False,
                         seq_q=t, seq_k=s, block_q=bq, block_k=bk, block_q_dkv=bq,
                         block_k_dkv=bk, groups=1, tpu_layout=False)
  want = _brute_force_tiles(t, s, bq, bk, causal)
  got = [tuple(int(x) for x in fak.kv_tile_range(jnp.int32(i), bq, bk, cfg))
         for i in range(len(want))]
  assert got == want


def test_dkv_query_ranges_cover_exactly_the_visible_tiles():
  t = s = 96
  bq, bk = 16, 32
  cfg = fak.KernelConfig(backend="interpret", scale=1.0, is_causal=True, has_segments=False,
                         seq_q=t, seq_k=s, block_q=bq, block_k=bk, block_q_dkv=bq,
                         block_k_dkv=bk, groups=1, tpu_layout=False)
  mask = np.tril(np.ones((t, s), bool))
  for j in range(s // bk):
    first, first_unmasked = (int(x) for x in fak.q_tile_range(jnp.int32(j), bq, bk, t // bq, cfg))
    cols = mask[:, j * bk:(j + 1) * bk]
    tiles = [cols[i * bq:(i + 1) * bq] for i in range(t // bq)]
    assert first == min(i for i, x in enumerate(tiles) if x.any())
    assert first_unmasked == min((i for i, x in enumerate(tiles) if x.all()), default=len(tiles))


@pytest.mark.parametrize("kwargs,match", [
    (dict(implementation="flash"), "implementation must be one of"),
    # cuDNN off a GPU; on a GPU (the device run) the same call fails on its fp32 inputs instead.
    (dict(implementation="cudnn"), "needs a CUDA GPU" if jax.default_backend() == "cpu"
     else "needs bfloat16 or float16"),
    (dict(q_shape=(1, 8, 3, 16)), "multiple of key/value heads"),
    (dict(q_shape=(8, 4, 16)), "rank 4"),
    (dict(k_shape=(1, 8, 2, 32)), "must share B=1 and H=16"),
    (dict(v_shape=(1, 9, 2, 16)), "same shape"),
    (dict(dtype=jnp.int32), "dtype must be one of"),
    (dict(segment_ids=jnp.zeros((1, 7), jnp.int32)), r"shape \(1, 8\)"),
    (dict(segment_ids=jnp.zeros((1, 8))), "must be integers"),
    (dict(segment_ids=(jnp.zeros((1, 8), jnp.int32),)), "a pair"),
])
def test_bad_input_raises_clear_value_error(kwargs, match):
  q_shape = kwargs.pop("q_shape", (1, 8, 4, 16))
  k_shape = kwargs.pop("k_shape", (1, 8, 2, 16))
  v_shape = kwargs.pop("v_shape", k_shape)
  dtype = kwargs.pop("dtype", jnp.float32)
  q, k, v = (jnp.ones(sh, dtype) for sh in (q_shape, k_shape, v_shape))
  with pytest.raises(ValueError, match=match):
    fa.dot_product_attention(q, k, v, **kwargs)


def test_bad_block_sizes_raise():
  q = jnp.ones((1, 64, 2, 64))
  with pytest.raises(ValueError, match="powers of two"):
    jax.eval_shape(lambda x: fa.flash_attention(x, x, x, backend="gpu",
                                                block_sizes=fa.BlockSizes(48)), q)
  with pytest.raises(ValueError, match="multiple of 128"):
    jax.eval_shape(lambda x: fa.flash_attention(x, x, x, backend="tpu",
                                                block_sizes=fa.BlockSizes(block_k=64)), q)
  with pytest.raises(ValueError, match="backend must be one of"):
    fa.flash_attention(q, q, q, backend="metal")


@pytest.mark.slow
def test_tpu_backend_under_tpu_interpreter_matches_reference():
  """backend="tpu" as shipped (128-row tiles, BNTH, Mosaic compiler params) in jax's TPU
  interpreter: GQA, causal, packed segments, T=200 and S=136 padded to whole 128-tiles."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  force = getattr(pltpu, "force_tpu_interpret_mode", None)
  if force is None:
    pytest.skip("this jax has no pltpu.force_tpu_interpret_mode")
  b, t, s, n, k, h = 1, 200, 136, 4, 2, 64
  q, k_, v, do = _qkv(b, t, s, n, k, h, seed=7)
  kw = dict(is_causal=True, q_segment_ids=_segments(b, t, [70]),
            kv_segment_ids=_segments(b, s, [70]))
  with force():
    out, grads = _value_and_grads(functools.partial(fa.flash_attention, backend="tpu", **kw),
                                  q, k_, v, do)
  ref_out, ref_grads = _value_and_grads(functools.partial(ar.mha_reference, **kw), q, k_, v, do)
  np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, atol=1e-4, rtol=0)
