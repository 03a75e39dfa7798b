"""Tests for `GPT.PARAM_AXES`: every parameter has a row of its rank, the Megatron column/row
pairs (1909.08053) share their model-parallel name, FSDP (1910.02054) reaches every matrix, and
the per-device parameter count under a mesh matches a hand formula."""

import dataclasses
import math

from flax import nnx
import jax
from jax.sharding import PartitionSpec as P
import pytest

from genfm.foundations import partitioning
from genfm.transformers import gpt, prefix_tuning, prompt_tuning

TINY = gpt.GPTConfig(vocab_size=16, context_len=8, num_layers=2, d_model=16, num_heads=4)
VARIANTS = {
    "gpt2_learned_tied_gelu": {},
    "rope_untied_swiglu_gqa_rms": dict(positions="rope", tie_embeddings=False, ffn="swiglu",
                                       num_kv_heads=2, norm="rmsnorm", use_bias=False),
    "mqa_alibi_post": dict(positions="alibi", num_kv_heads=1, norm_placement="post"),
    "moe_gelu_every2": dict(positions="sinusoidal", num_experts=4, moe_every=2),
    "moe_swiglu_nobias": dict(positions="none", num_experts=4, ffn="swiglu", use_bias=False),
}


def _abstract(cfg):
  return nnx.eval_shape(lambda: gpt.GPT(cfg, rngs=nnx.Rngs(0)))


def _shapes(model):
  return {partitioning.path_str(p): v.shape
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_param_matched_with_its_rank(name):
  model = _abstract(dataclasses.replace(TINY, **VARIANTS[name]))
  assert partitioning.unmatched(model) == []
  axes = partitioning.param_axes(model)  # raises on a rank mismatch or an unknown name
  shapes = _shapes(model)
  assert axes.keys() == shapes.keys()
  assert all(len(axes[p]) == len(shapes[p]) for p in axes)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_megatron_pairs_and_fsdp_on_every_matrix(name):
  cfg = dataclasses.replace(TINY, **VARIANTS[name])
  axes = partitioning.param_axes(_abstract(cfg))
  for path, a in axes.items():
    if path.endswith(("bias", "scale")) or path.startswith("prefix/"):
      assert set(a) == {None}, (path, a)                  # biases, norm scales: replicated
    else:                                                 # every weight matrix / table: FSDP
      assert len(a) >= 2 and a.count("embed") == 1, (path, a)
  for i in range(cfg.num_layers):
    pre = f"layers/{i}/"
    # Column-parallel output name == row-parallel input name: one all-reduce per sublayer.
    assert axes[pre + "attn/q_proj/kernel"][1] == axes[pre + "attn/o_proj/kernel"][0] == "heads"
    assert axes[pre + "attn/k_proj/kernel"][1] == "kv_heads"
    if cfg.is_moe_layer(i):
      assert axes[pre + "ffn/w_up"][2] == axes[pre + "ffn/w_down"][1] == "mlp"
    else:
      assert axes[pre + "ffn/up/kernel"][1] == axes[pre + "ffn/down/kernel"][0] == "mlp"


def test_specs_under_a_2d_mesh():
  cfg = dataclasses.replace(TINY, tie_embeddings=False)
  specs = partitioning.model_specs(_abstract(cfg), partitioning.DEFAULT_RULES,
                                   {"data": 1, "fsdp": 2, "model": 4})
  assert specs["embed/embedding"] == P("model", "fsdp")
  assert specs["pos_embed/embed/embedding"] == P(None, "fsdp")
  assert specs["lm_head/kernel"] == P("fsdp", "model")
  assert specs["layers/0/attn/q_proj/kernel"] == P("fsdp", "model")
  assert specs["layers/0/attn/v_proj/kernel"] == P("fsdp", "model")
  assert specs["layers/1/attn/o_proj/kernel"] == P("model", None, "fsdp")
  assert specs["layers/1/ffn/up/kernel"] == P("fsdp", "model")
  assert specs["layers/1/ffn/down/kernel"] == P("model", "fsdp")
  assert specs["layers/1/ffn/up/bias"] == P()
  assert specs["final_norm/scale"] == P()


def _per_device(cfg, mesh_shape):
  model = _abstract(cfg)
  specs = partitioning.model_specs(model, partitioning.DEFAULT_RULES, mesh_shape)
  return sum(math.prod(s) // math.prod(partitioning.shards(specs[p], mesh_shape))
             for p, s in _shapes(model).items())


def test_fsdp8_per_device_params_match_hand_formula():
  """fsdp = 8: every matrix and table is 1/8 per device, vectors whole:
  per device = (N_total − N_vec) / 8 + N_vec, N_vec = biases and norm parameters."""
  cfg = gpt.GPTConfig(vocab_size=64, context_len=32, num_layers=3, d_model=64, num_heads=4)
  D, F, L = cfg.d_model, cfg.ffn_dim, cfg.num_layers
  n_vec = L * (3 * D + D + F + D + 2 * 2 * D) + 2 * D  # qkv, o, up, down biases; 2 LNs; ln_f
  total = gpt.param_count(cfg)
  assert _per_device(cfg, {"fsdp": 8}) == (total - n_vec) // 8 + n_vec
  # TP = 4 splits heads and F but not the 64 × 32 position table nor the embed dim.
  tp = _per_device(cfg, {"model": 4})
  pos = cfg.context_len * D
  assert tp == (total - n_vec - pos) // 4 + n_vec + pos


def test_mqa_under_tensor_parallel_is_one_line_error():
  """K = 1 key/value head cannot be split over model = 2: the error names the parameter."""
  model = _abstract(dataclasses.replace(TINY, num_kv_heads=1))
  with pytest.raises(ValueError, match=r"layers/0/attn/k_proj/kernel has dimension 1 of size 1"):
    partitioning.model_specs(model, partitioning.DEFAULT_RULES, {"model": 2})


def test_peft_slots_are_matched():
  """A soft prompt or a (reparametrised) prefix installed in a GPT gets rows too."""
  for add in (lambda m: prompt_tuning.add_soft_prompt(m, 3, rngs=nnx.Rngs(1)),
              lambda m: prefix_tuning.add_prefix(m, 3, rngs=nnx.Rngs(1)),
              lambda m: prefix_tuning.add_prefix(m, 3, reparam=True, reparam_dim=8,
                                                 reparam_hidden=8, rngs=nnx.Rngs(1))):
    model = gpt.GPT(TINY, rngs=nnx.Rngs(jax.random.key(0)))
    add(model)
    assert partitioning.unmatched(model) == []
    partitioning.param_axes(model)
