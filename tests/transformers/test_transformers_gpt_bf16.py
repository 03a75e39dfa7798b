"""GPT's bf16 compute path (`GPTConfig.dtype="bfloat16"`): fp32 parameters, bf16 matmuls, and the
same function as the fp32 model up to bf16 rounding (mixed precision, 1710.03740)."""

import dataclasses

from flax import nnx
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import gpt

TINY = gpt.GPTConfig(vocab_size=61, context_len=16, num_layers=2, num_heads=4, d_model=32)
VARIANTS = {
    "gpt2": {},
    "modern": dict(positions="rope", norm="rmsnorm", ffn="swiglu", num_kv_heads=2,
                   use_bias=False, tie_embeddings=False),
    "moe": dict(num_experts=4, top_k=2, capacity_factor=2.0),
}


def _pair(overrides):
  """The same parameters (fp32 init from one seed) under an fp32 and a bf16 compute dtype."""
  cfg32 = dataclasses.replace(TINY, **overrides)
  cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
  m32, m16 = gpt.GPT(cfg32, rngs=nnx.Rngs(0)), gpt.GPT(cfg16, rngs=nnx.Rngs(0))
  return m32, m16


def _tokens(seed=1, batch=2, length=16):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, TINY.vocab_size)


@nnx.jit  # one compiled call instead of hundreds of eager ops
def _forward(model, tokens_BT):
  return model(tokens_BT)


def _dot_dtypes(fn, *args):
  """Input dtypes of every dot_general in fn's jaxpr (including inside sub-jaxprs)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jex_core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_params_stay_fp32_and_outputs_match_fp32_model(name):
  m32, m16 = _pair(VARIANTS[name])
  for leaf in jax.tree.leaves(nnx.state(m16, nnx.Param)):
    assert leaf.dtype == jnp.float32
  toks = _tokens()
  l32, l16 = _forward(m32, toks), _forward(m16, toks)
  assert l16.dtype == jnp.float32 and l16.shape == l32.shape == (2, 16, TINY.vocab_size)
  # bf16 keeps 8 mantissa bits (relative step 2⁻⁸ ≈ 4e-3); through two layers the logits agree
  # to ~0.5 % of their scale (measured 0.33 % / 0.46 % dense), the loss to ~1e-2 nats. An MoE
  # token whose top-k choice flips under bf16 rounding is discontinuous (measured: 1 of 32
  # tokens, 6.6 %), so MoE allows that many outliers.
  scale = float(jnp.max(jnp.abs(l32)))
  err_BT = np.asarray(jnp.max(jnp.abs(l16 - l32), axis=-1))
  outliers = int(np.sum(err_BT >= 0.02 * scale))
  assert outliers <= (2 if name == "moe" else 0), (err_BT.max() / scale, outliers)
  assert err_BT.max() > 0.0  # it really ran in a different precision
  tgt = _tokens(seed=2)
  assert abs(float(gpt.lm_loss(l16, tgt)) - float(gpt.lm_loss(l32, tgt))) < 1e-2


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matmuls_run_in_bf16_except_the_router(name):
  _, m16 = _pair(VARIANTS[name])
  graphdef, state = nnx.split(m16)
  dots = _dot_dtypes(lambda s, t: nnx.merge(graphdef, s)(t), state, _tokens())
  bf16 = [d for d in dots if d == ("bfloat16", "bfloat16")]
  other = [d for d in dots if d != ("bfloat16", "bfloat16")]
  # Projections, FFN/experts, attention scores and the output head are bf16. Kept in fp32: the
  # MoE router (one per MoE layer) and, in the reference attention, the softmax-weighted sum's
  # fp32 logits are cast to v's dtype first, so it is bf16 too.
  n_router = TINY.num_layers if name == "moe" else 0
  assert len(other) == n_router, other
  assert all(d == ("bfloat16", "float32") or d == ("float32", "float32") for d in other)
  assert len(bf16) >= 5 * TINY.num_layers


def test_grads_are_fp32_and_aligned_with_fp32_grads():
  m32, m16 = _pair({})
  toks, tgt = _tokens(), _tokens(seed=2)

  @nnx.jit
  def grads(model):
    return nnx.grad(lambda m: gpt.lm_loss(m(toks), tgt))(model)

  g32 = jax.tree.leaves(grads(m32))
  g16 = jax.tree.leaves(grads(m16))
  assert all(g.dtype == jnp.float32 for g in g16)
  v32 = np.concatenate([np.ravel(g) for g in g32])
  v16 = np.concatenate([np.ravel(g) for g in g16])
  cos = float(v32 @ v16 / (np.linalg.norm(v32) * np.linalg.norm(v16)))
  assert cos > 0.99, cos


def test_kv_cache_defaults_to_compute_dtype_and_decode_matches_recompute():
  _, m16 = _pair(VARIANTS["modern"])
  caches = m16.init_cache(batch=1)
  assert caches[0].k.dtype == jnp.bfloat16
  toks = _tokens(batch=1, length=8)
  full = _forward(m16, toks)
  logits, _ = m16(toks, positions_BT=jnp.arange(8)[None], caches=caches)
  # Identical bf16 arithmetic on the same positions; only the masked-out cache tail differs.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(full), atol=2e-2, rtol=0)


def test_unknown_dtype_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown dtype 'float16'.*bfloat16"):
    dataclasses.replace(TINY, dtype="float16")
