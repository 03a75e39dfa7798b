"""Tests for genfm.transformers.gpt: parameter counts, FLOPs, causality, initial loss."""

import dataclasses
import functools
import math

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genfm.transformers import gpt

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


TINY = gpt.GPTConfig(vocab_size=11, context_len=8, num_layers=2, d_model=16, num_heads=4)
VARIANTS = {
    "gpt2": {},
    "modern": dict(positions="rope", norm="rmsnorm", ffn="swiglu", use_bias=False,
                   tie_embeddings=False),
    "gqa_alibi_window": dict(positions="alibi", num_kv_heads=2, attention_window=3),
    "mqa_sinusoidal_post": dict(positions="sinusoidal", num_kv_heads=1, norm_placement="post"),
    # capacity_factor = E / k: every expert can take every token, so nothing is dropped.
    "moe": dict(positions="none", num_experts=4, top_k=2, capacity_factor=2.0, moe_every=2),
}


def _n_params(cfg):
  params = jax.eval_shape(lambda: nnx.state(gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0))), nnx.Param))
  return sum(p.size for p in jax.tree.leaves(params))


def test_gpt2_small_has_124_439_808_params():
  cfg = gpt.GPTConfig()  # defaults are GPT-2 small: learned positions, tied embeddings
  assert gpt.param_count(cfg) == 124_439_808
  assert _n_params(cfg) == 124_439_808


@pytest.mark.parametrize("name", list(VARIANTS))
def test_param_count_matches_formula_for_every_variant(name):
  cfg = dataclasses.replace(TINY, **VARIANTS[name])
  assert _n_params(cfg) == gpt.param_count(cfg)


def test_param_count_by_hand_for_tiny_configs():
  V, T, D, L = 11, 8, 16, 2
  # GPT-2 layout: wte, wpe, per layer (ln1, qkv+b, proj+b, ln2, fc+b, proj+b), ln_f.
  layer = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D)
  assert gpt.param_count(TINY) == V * D + T * D + L * layer + 2 * D
  # Modern: no wpe, untied head, RMSNorm scales only, bias-free attention, SwiGLU F=round(8D/3).
  F = 43
  modern = dataclasses.replace(TINY, **VARIANTS["modern"])
  assert modern.ffn_dim == F
  assert gpt.param_count(modern) == V * D + L * (D + 4 * D * D + D + 3 * D * F) + D + D * V
  # MoE on layer 2 of 2: router D·E plus E experts of 2·D·F (no biases); top-2 active.
  moe = dataclasses.replace(TINY, **VARIANTS["moe"])
  dense_ffn, expert = 2 * D * 4 * D + 5 * D, 2 * D * 4 * D
  base = V * D + L * (2 * D + 4 * D * D + 4 * D + 2 * D) + 2 * D + dense_ffn
  assert gpt.param_count(moe) == base + D * 4 + 4 * expert
  assert gpt.param_count(moe, active=True) == base + D * 4 + 2 * expert


def test_flops_per_token_gpt2_small():
  cfg = gpt.GPTConfig()
  n = 124_439_808 - 1024 * 768  # the position table is a lookup, not a matmul
  assert gpt.flops_per_token(cfg) == 6 * n + 12 * 12 * 768 * 1024 == 855_166_464


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_shapes_and_causality(name):
  cfg = dataclasses.replace(TINY, **VARIANTS[name])
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  tokens = jax.random.randint(KEY(1), (2, 8), 0, cfg.vocab_size)
  fwd = nnx.jit(lambda m, t: m(t, return_aux=True))
  logits, aux = fwd(model, tokens)
  chex.assert_shape(logits, (2, 8, cfg.vocab_size))
  assert logits.dtype == jnp.float32
  assert set(aux) == {"load_balance", "router_z", "dropped_fraction"}
  if cfg.num_experts:
    assert float(aux["dropped_fraction"]) == 0.0 and float(aux["load_balance"]) >= 1.0 - 1e-6
  # Changing token t' changes no logit at t < t', and does change the logit at t'.
  for tp in (3, 7):
    changed = tokens.at[:, tp].set((tokens[:, tp] + 1) % cfg.vocab_size)
    logits2, _ = fwd(model, changed)
    np.testing.assert_array_equal(logits[:, :tp], logits2[:, :tp])
    assert not np.allclose(logits[:, tp], logits2[:, tp])


def test_initial_loss_is_ln_vocab():
  cfg = gpt.GPTConfig(vocab_size=84, context_len=16, num_layers=2, d_model=32, num_heads=4)
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  tokens = jax.random.randint(KEY(2), (4, 17), 0, 84)
  loss = nnx.jit(lambda m, t: gpt.lm_loss(m(t[:, :-1]), t[:, 1:]))(model, tokens)
  # Logits ~ N(0, D·σ²) with σ = 0.02 (tied embeddings after the final norm), so the expected
  # loss is ln V + D·σ²/2 + sampling noise ≈ 4.431 + 0.006; measured 4.450 on this batch.
  assert abs(float(loss) - math.log(84)) < 0.05, (float(loss), math.log(84))  # ln 84 = 4.431


def test_a_few_adamw_steps_overfit_one_batch():
  cfg = dataclasses.replace(TINY, **VARIANTS["modern"])
  model = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
  tokens = jax.random.randint(KEY(3), (2, 9), 0, cfg.vocab_size)

  @nnx.jit
  def step(model, opt, tokens):
    loss, grads = nnx.value_and_grad(lambda m: gpt.lm_loss(m(tokens[:, :-1]), tokens[:, 1:]))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, tokens)) for _ in range(40)]
  assert losses[0] == pytest.approx(math.log(11), abs=0.05)
  assert losses[-1] < 0.3 * losses[0], losses


def test_lm_loss_mask_and_formula():
  logits = jax.random.normal(KEY(4), (2, 3, 5))
  targets = jnp.array([[0, 1, 2], [3, 4, 0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  lp = np.asarray(jax.nn.log_softmax(logits))
  want = -(lp[0, 0, 0] + lp[0, 1, 1] + lp[1, 0, 3]) / 3
  np.testing.assert_allclose(gpt.lm_loss(logits, targets, mask), want, rtol=1e-6)


def test_pallas_flash_kernel_plugs_in():
  # genfm.kernels' flash attention (Pallas interpreter on CPU) through attention_impl.
  cfg = dataclasses.replace(TINY, positions="rope", num_kv_heads=2)
  ref = gpt.GPT(cfg, rngs=nnx.Rngs(KEY(0)))
  pal = gpt.GPT(dataclasses.replace(cfg, attention_impl="pallas"), rngs=nnx.Rngs(KEY(0)))
  tokens = jax.random.randint(KEY(5), (2, 8), 0, cfg.vocab_size)
  fwd = nnx.jit(lambda m, t: m(t))
  np.testing.assert_allclose(fwd(pal, tokens), fwd(ref, tokens), atol=1e-5)


def test_config_and_input_errors():
  with pytest.raises(ValueError, match="valid choices: learned, sinusoidal, rope, alibi, none"):
    gpt.GPTConfig(positions="xpos")
  with pytest.raises(ValueError, match="valid choices"):
    gpt.GPTConfig(ffn="relu")
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    gpt.GPTConfig(num_heads=4, d_model=16, num_kv_heads=3)
  with pytest.raises(ValueError, match="top_k"):
    gpt.GPTConfig(num_experts=2, top_k=3)
  with pytest.raises(ValueError, match="causal attention only"):
    gpt.GPTConfig(attention_impl="pallas", positions="alibi")
  model = gpt.GPT(TINY, rngs=nnx.Rngs(KEY(0)))
  with pytest.raises(ValueError, match="exceeds context_len=8"):
    model(jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match=r"integer array \[B, T\]"):
    model(jnp.zeros((1, 4), jnp.float32))
