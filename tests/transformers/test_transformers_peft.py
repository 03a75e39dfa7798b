"""Adapters (1902.00751), prefix tuning (2101.00190) and prompt tuning (2104.08691) on the GPT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.transformers import adapters, gpt, prefix_tuning, prompt_tuning

CFG = gpt.GPTConfig(vocab_size=37, context_len=24, num_layers=2, d_model=32, num_heads=4)
HARD = jnp.array([3, 7, 9, 11, 2])                                  # a "text" of P = 5 tokens
TOKENS = jnp.array([[5, 6, 7, 8, 9, 10, 30], [1, 2, 3, 4, 5, 6, 36]])   # rows differ
FWD = nnx.jit(lambda m, t: m(t))


def base_model(positions="learned"):
  cfg = gpt.GPTConfig(**{**CFG.__dict__, "positions": positions})
  return gpt.GPT(cfg, rngs=nnx.Rngs(0))


def hard_prompted(base, tokens):
  """The base reading HARD before `tokens`: logits of the tokens only."""
  full = jnp.concatenate([jnp.broadcast_to(HARD, (tokens.shape[0], 5)), tokens], axis=1)
  return FWD(base, full)[:, 5:]


# -- adapters -------------------------------------------------------------------------------------


def test_adapter_is_near_identity_at_init_within_its_bound():
  base = base_model()
  model = nnx.clone(base)
  paths = adapters.apply_adapters(model, 8, rngs=nnx.Rngs(1))
  assert paths == [f"layers/{i}/{p}" for i in range(2) for p in ("attn/o_proj", "ffn/down")]
  h = jax.random.normal(jax.random.key(0), (4, 32)) * 3.0
  for layer in (model.layers[0].attn.o_proj, model.layers[1].ffn.down):
    dev = jnp.linalg.norm(layer.adapter(h) - h, axis=-1)
    assert jnp.all(dev <= adapters.init_deviation_bound(layer, h) * (1 + 1e-5))
    assert 0 < float(jnp.max(dev / jnp.linalg.norm(h, axis=-1))) < 2e-3   # near, not equal
  diff = float(jnp.max(jnp.abs(FWD(model, TOKENS) - FWD(base, TOKENS))))
  assert 0 < diff < 1e-2


def test_adapter_with_zero_up_projection_is_the_identity_and_counts_params():
  base = base_model()
  model = nnx.clone(base)
  adapters.apply_adapters(model, 8, rngs=nnx.Rngs(1))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, adapters.AdapterParam)))
  assert n == 4 * (2 * 8 * 32 + 8 + 32)                       # 2·m·D + m + D per adapter
  for layer in (l for i in range(2) for l in (model.layers[i].attn.o_proj,
                                               model.layers[i].ffn.down)):
    layer.adapter_up[...] = jnp.zeros_like(layer.adapter_up[...])
  np.testing.assert_allclose(FWD(model, TOKENS), FWD(base, TOKENS), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="one feature axis"):   # q: output [B, T, N, H]
    adapters.apply_adapters(base_model(), 8, "attn/q_proj", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"m=0 must be an integer in 1\.\.32"):
    adapters.apply_adapters(base_model(), 0, rngs=nnx.Rngs(0))


# -- prompt and prefix: initialised from a text, they *are* that text as a hard prompt ------------


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_soft_prompt_from_a_text_equals_the_hard_prompt(positions):
  base = base_model(positions)
  want = hard_prompted(base, TOKENS)
  model = nnx.clone(base)
  prompt_tuning.add_soft_prompt(model, 5, init_tokens=HARD)
  assert model.num_virtual_tokens == 5
  np.testing.assert_allclose(FWD(model, TOKENS), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions,reparam", [("learned", False), ("learned", True),
                                                ("rope", True)])
def test_prefix_from_a_text_equals_the_hard_prompt(positions, reparam):
  base = base_model(positions)
  want = hard_prompted(base, TOKENS)
  model = nnx.clone(base)
  prefix = prefix_tuning.add_prefix(model, 5, init_tokens=HARD, reparam=reparam,
                                    rngs=nnx.Rngs(2))
  np.testing.assert_allclose(FWD(model, TOKENS), want, rtol=1e-5, atol=1e-5)
  kv = prefix.materialize()
  assert kv.shape == (CFG.num_layers, 2, 5, CFG.num_heads, CFG.d_model // CFG.num_heads)


def test_prefix_is_seen_by_every_query_and_causality_holds_after_it():
  """The gradient of position t's logits w.r.t. the prefix is non-zero for every t (t = 0 too),
  and a later token changes no earlier logit."""
  model = base_model()
  prefix_tuning.add_prefix(model, 3, rngs=nnx.Rngs(1))
  graph, pre, rest = nnx.split(model, prefix_tuning.PrefixParam, ...)
  grad_t = jax.jit(jax.grad(lambda p, t: jnp.sum(nnx.merge(graph, p, rest)(TOKENS)[:, t])))
  for t in (0, 6):
    g = grad_t(pre, t)
    assert float(jnp.max(jnp.abs(g["prefix"]["kv"][...]))) > 0
  changed = TOKENS.at[:, 5].set(0)                  # a later token changes ...
  before, after = FWD(model, TOKENS), FWD(model, changed)
  np.testing.assert_array_equal(after[:, :5], before[:, :5])   # ... nothing before it
  assert float(jnp.max(jnp.abs(after[:, 5:] - before[:, 5:]))) > 0


def test_only_the_new_parameters_get_gradients():
  for add, kind in ((lambda m: prompt_tuning.add_soft_prompt(m, 4, rngs=nnx.Rngs(1)),
                     prompt_tuning.PromptParam),
                    (lambda m: prefix_tuning.add_prefix(m, 4, reparam=True, rngs=nnx.Rngs(1)),
                     prefix_tuning.PrefixParam)):
    model = base_model()
    add(model)
    graph, trained, rest = nnx.split(model, kind, ...)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graph, p, rest)(TOKENS) ** 2)))(trained)
    assert {type(v) for _, v in nnx.to_flat_state(grads)} == {kind}
    assert any(float(jnp.max(jnp.abs(v[...]))) > 0 for _, v in nnx.to_flat_state(grads))


def test_virtual_tokens_count_against_the_context_and_bad_input_is_one_line():
  model = base_model()
  prompt_tuning.add_soft_prompt(model, 20, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sequence of 7 tokens after 20 virtual tokens exceeds "
                                       "context_len=24"):
    model(TOKENS)
  with pytest.raises(ValueError, match="cannot be packed"):
    model(TOKENS[:, :3], segment_ids_BT=jnp.ones((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"length must be in 1\.\.context_len-1=23"):
    prompt_tuning.add_soft_prompt(base_model(), 24, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already has"):
    prefix_tuning.add_prefix(model, 2, rngs=nnx.Rngs(0))
