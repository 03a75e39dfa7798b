"""LoRA (2106.09685) and QLoRA (2305.14314) on the repo's models: init, merge, counts, files."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import unet
from genfm.transformers import bert, gpt, lora, nf4, qlora, surgery, t5

CFG = gpt.GPTConfig(vocab_size=37, context_len=16, num_layers=2, d_model=32, num_heads=4)
TOKENS = jax.random.randint(jax.random.key(0), (3, 11), 0, 37)   # rows differ
FWD = nnx.jit(lambda m, t: m(t))   # compiled: eager op-by-op dispatch is slow on CPU


def randomize(model, seed=0, scale=0.2):
  """Every parameter redrawn, N(0, scale²) (zero-initialised layers become active)."""
  state = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(model, jax.tree.unflatten(
      tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
  return model


def set_b(model, seed=1, scale=0.3):
  for i, (_, layer) in enumerate(lora.lora_layers(model)):
    layer.lora_b[...] = scale * jax.random.normal(jax.random.key(seed + i), layer.lora_b.shape)


def gpt_model(seed=0):
  return gpt.GPT(CFG, rngs=nnx.Rngs(seed))


# -- the models of the repo: B = 0 is the base, exactly ------------------------------------------

MODELS = {
    "gpt": (lambda: gpt_model(), lambda m: m(TOKENS), "attn/(q|v)_proj|ffn"),
    "bert": (lambda: bert.Bert(bert.BertConfig(vocab_size=11, max_len=8, type_vocab_size=2,
                                               num_layers=2, d_model=16, num_heads=2, d_ff=32),
                               rngs=nnx.Rngs(0)),
             lambda m: m(TOKENS[:, :8] % 11), "attn/(q|v)_proj|head_dense"),
    "t5": (lambda: t5.T5(t5.T5Config(vocab_size=13, num_layers=2, num_decoder_layers=2,
                                     d_model=16, num_heads=4, head_dim=4, d_ff=32),
                         rngs=nnx.Rngs(0)),
           lambda m: m(TOKENS[:, :7] % 13, TOKENS[:, 3:9] % 13), "(q|v)_proj"),
    # The U-Net's projections sit in its attention block (qkv, proj: nnx.Linear over channels).
    "unet": (lambda: randomize(unet.AttnBlock(8, num_heads=2, num_groups=4, rngs=nnx.Rngs(0))),
             lambda m: m(jax.random.normal(jax.random.key(2), (2, 4, 4, 8))), "qkv|proj"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_b_zero_is_the_base_and_a_trained_b_is_not(name):
  make, run, targets = MODELS[name]
  base = make()
  base.eval()                                          # no dropout: outputs are deterministic
  run = nnx.jit(run)
  want = run(base)
  model = nnx.clone(base)
  paths = lora.apply_lora(model, targets, 2, 4.0, rngs=nnx.Rngs(5))
  assert paths and all(isinstance(m, lora._LoRA) for _, m in lora.lora_layers(model))
  # B = 0 ⇒ ΔW = 0. Compiled, XLA may fuse the (zero) extra term into other rounding orders,
  # so the whole model is held to 1e-6; one layer, eager, bit for bit (test below).
  np.testing.assert_allclose(run(model), want, rtol=1e-6, atol=1e-6)
  set_b(model)
  assert float(jnp.max(jnp.abs(run(model) - want))) > 1e-3
  # the base weights keep their names: a checkpoint of the base loads by path
  base_paths = {surgery.path_str(p) for p, _ in nnx.to_flat_state(nnx.state(base, nnx.Param))}
  ours = {surgery.path_str(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert ours - base_paths == {f"{p}/lora_{ab}" for p in paths for ab in "ab"}


def test_b_zero_layer_is_bit_identical_eager():
  model = gpt_model()
  x_BTD = jax.random.normal(jax.random.key(3), (2, 5, 32))
  want_q, want_up = model.layers[0].attn.q_proj(x_BTD), model.layers[0].ffn.up(x_BTD)
  lora.apply_lora(model, "layers/0/(attn/q_proj|ffn/up)", 3, rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(model.layers[0].attn.q_proj(x_BTD), want_q)
  np.testing.assert_array_equal(model.layers[0].ffn.up(x_BTD), want_up)


def test_forward_equals_the_explicit_matrix_form_of_eq3():
  """h = (W + (α/r) B A) x with W read as a [d_in, d_out] matrix, for Einsum kernels of either
  orientation (q: DNH, o: NHD) and a Linear."""
  model = gpt_model()
  lora.apply_lora(model, "layers/0/(attn/(q|o)_proj|ffn/up)", 3, 6.0, rngs=nnx.Rngs(1))
  set_b(model)
  x_BTD = jax.random.normal(jax.random.key(3), (2, 5, 32))
  layer0 = model.layers[0]
  for layer, x in ((layer0.attn.q_proj, x_BTD), (layer0.ffn.up, x_BTD),
                   (layer0.attn.o_proj, x_BTD.reshape(2, 5, 4, 8))):
    d_in, d_out = lora.matrix_dims(layer)
    a = np.asarray(layer.lora_a[...]).reshape(d_in, 3)
    b = np.asarray(layer.lora_b[...]).reshape(3, d_out)
    w = np.asarray(layer.kernel[...]).reshape(d_in, d_out)
    bias = np.asarray(layer.bias[...]).reshape(-1)
    want = np.asarray(x).reshape(-1, d_in) @ (w + 2.0 * a @ b) + bias       # α/r = 6/3
    got = np.asarray(layer(x)).reshape(-1, d_out)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_parameter_count_is_r_times_d_in_plus_d_out():
  model = gpt_model()
  r = 3
  lora.apply_lora(model, "proj|up|down", r, rngs=nnx.Rngs(0))
  D, F = CFG.d_model, CFG.ffn_dim
  per_layer = 4 * r * (D + D) + r * (D + F) + r * (F + D)
  assert lora.count(model) == CFG.num_layers * per_layer
  for where, layer in lora.lora_layers(model):
    d_in, d_out = lora.matrix_dims(layer)
    assert layer.lora_a.size + layer.lora_b.size == r * (d_in + d_out), where


def test_init_scales_and_rslora():
  model = gpt_model()
  lora.apply_lora(model, "ffn/up", 8, 16.0, rngs=nnx.Rngs(0))
  rs = gpt_model()
  lora.apply_lora(rs, "ffn/up", 8, 16.0, rslora=True, rngs=nnx.Rngs(0))
  layer, layer_rs = model.layers[0].ffn.up, rs.layers[0].ffn.up
  assert layer.lora_scale == 2.0 and layer_rs.lora_scale == pytest.approx(16 / math.sqrt(8))
  assert not np.any(np.asarray(layer.lora_b[...]))
  a = np.concatenate([np.asarray(m.layers[i].ffn.up.lora_a[...]).ravel()
                      for m in (model,) for i in range(2)])
  assert np.std(a) == pytest.approx(1 / math.sqrt(CFG.d_model), rel=0.1)   # A ~ N(0, 1/d_in)


def test_merge_equals_unmerged_and_unmerge_restores_w():
  model = gpt_model()
  lora.apply_lora(model, "proj|up|down", 4, 8.0, rngs=nnx.Rngs(2))
  set_b(model)
  before = {w: np.asarray(m.kernel[...]) for w, m in lora.lora_layers(model)}
  want = FWD(model, TOKENS)
  lora.merge(model)
  np.testing.assert_allclose(FWD(model, TOKENS), want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="already merged"):
    lora.merge(model)
  lora.unmerge(model)
  for w, m in lora.lora_layers(model):
    w_back = np.asarray(m.kernel[...])
    # (W + ΔW) − ΔW: one fp32 rounding of W + ΔW, at most half an ulp of it, per element
    merged = before[w] + np.asarray(m.lora_delta_w())
    assert np.all(np.abs(w_back - before[w]) <= np.spacing(np.abs(merged).astype(np.float32))), w
  np.testing.assert_allclose(FWD(model, TOKENS), want, rtol=1e-6, atol=1e-6)


def test_merged_forward_costs_what_the_base_costs():
  model = gpt_model()
  lora.apply_lora(model, "proj|up|down", 4, rngs=nnx.Rngs(2))
  flops = lambda m: jax.jit(lambda t: m(t)).lower(TOKENS).compile().cost_analysis()
  flops_of = lambda m: (flops(m)[0] if isinstance(flops(m), list) else flops(m))["flops"]
  base_flops = flops_of(gpt_model())
  assert flops_of(model) > base_flops
  lora.merge(model)
  assert flops_of(model) == base_flops


def test_switch_adapters_and_save_load(tmp_path):
  model = gpt_model()
  lora.apply_lora(model, "attn/(q|v)_proj", 2, rngs=nnx.Rngs(0))
  set_b(model, seed=10)
  first, out_first = lora.adapter_state(model), FWD(model, TOKENS)
  path = str(tmp_path / "first.npz")
  size = lora.save_adapter(model, path, task="add")
  set_b(model, seed=20)
  second, out_second = lora.adapter_state(model), FWD(model, TOKENS)
  assert float(jnp.max(jnp.abs(out_first - out_second))) > 1e-3
  lora.set_adapter(model, first)                      # switched, the base not reloaded
  np.testing.assert_array_equal(FWD(model, TOKENS), out_first)
  lora.set_adapter(model, second)
  np.testing.assert_array_equal(FWD(model, TOKENS), out_second)
  # the adapter alone, small: r (d_in + d_out) fp32 per matrix, plus a little metadata
  n = lora.count(model)
  assert n * 4 < size < n * 4 + 4096 and size < 0.1 * 4 * gpt.param_count(CFG)
  fresh = gpt_model()                                 # the same base, a new process say
  lora.apply_lora(fresh, "attn/(q|v)_proj", 2, rngs=nnx.Rngs(7))
  assert lora.load_adapter(fresh, path)["task"] == "add"
  np.testing.assert_array_equal(FWD(fresh, TOKENS), out_first)
  other = gpt_model(seed=1)                           # another base of the same shape
  lora.apply_lora(other, "attn/(q|v)_proj", 2, rngs=nnx.Rngs(7))
  with pytest.raises(ValueError, match="trained on another base model"):
    lora.load_adapter(other, path)
  wrong_rank = gpt_model()
  lora.apply_lora(wrong_rank, "attn/(q|v)_proj", 3, rngs=nnx.Rngs(7))
  with pytest.raises(ValueError, match=r"has shape \[32, 2\] but this model's is \[32, 3\]"):
    lora.load_adapter(wrong_rank, path)


@pytest.mark.parametrize("rank,match", [(0, r"r=0 must be an integer in 1\.\.min"),
                                        (33, r"r=33 must be an integer in 1\.\.min\(d_in, "
                                             r"d_out\)=32"),
                                        (2.5, "must be an integer")])
def test_bad_rank_is_one_line(rank, match):
  with pytest.raises(ValueError, match=match) as e:
    lora.apply_lora(gpt_model(), "q_proj", rank, rngs=nnx.Rngs(0))
  assert "\n" not in str(e.value)


def test_pattern_that_matches_nothing_lists_what_exists():
  with pytest.raises(ValueError) as e:
    lora.apply_lora(gpt_model(), "query", 2, rngs=nnx.Rngs(0))
  msg = str(e.value)
  assert "\n" not in msg and "layers/*/attn/q_proj" in msg and "layers/*/ffn/up" in msg


# -- QLoRA ----------------------------------------------------------------------------------------


def dequantized_base(base, model):
  """The base with every QLoRA layer's kernel replaced by its dequantized NF4 copy."""
  ref = nnx.clone(base)
  for where, layer in qlora.qlora_layers(model):
    mod = ref
    for k in where.split("/"):
      mod = mod[int(k)] if k.isdigit() else getattr(mod, k)
    mod.kernel[...] = layer.dequantized_kernel()
  return ref


def test_qlora_forward_is_the_dequantized_base_plus_lora():
  base = gpt_model()
  model = nnx.clone(base)
  qlora.apply_qlora(model, "proj|up|down", 4, 8.0, compute_dtype="float32", rngs=nnx.Rngs(3))
  ref = dequantized_base(base, model)
  np.testing.assert_allclose(FWD(model, TOKENS), FWD(ref, TOKENS), rtol=1e-5, atol=1e-5)   # B = 0
  assert float(jnp.max(jnp.abs(FWD(model, TOKENS) - FWD(base, TOKENS)))) > 1e-3            # 4-bit noise
  set_b(model)
  lora_ref = nnx.clone(ref)
  lora.apply_lora(lora_ref, "proj|up|down", 4, 8.0, rngs=nnx.Rngs(3))
  set_b(lora_ref)
  np.testing.assert_allclose(jax.jit(lambda t: model(t))(TOKENS), FWD(lora_ref, TOKENS),
                             rtol=1e-5, atol=1e-5)
  bf16 = nnx.clone(base)
  qlora.apply_qlora(bf16, "proj|up|down", 4, 8.0, compute_dtype="bfloat16", rngs=nnx.Rngs(3))
  np.testing.assert_allclose(FWD(bf16, TOKENS), FWD(ref, TOKENS), atol=0.05)   # bf16 matmuls


def test_qlora_stores_4_127_bits_and_trains_only_lora():
  cfg = gpt.GPTConfig(vocab_size=37, context_len=16, num_layers=1, d_model=128, num_heads=4)
  model = gpt.GPT(cfg, rngs=nnx.Rngs(0))
  qlora.apply_qlora(model, "ffn/(up|down)", 2, rngs=nnx.Rngs(0))   # 128·512 = 64·256·4 weights
  nbytes, n = qlora.storage_bytes(model)
  assert 8 * nbytes / n == pytest.approx(4 + nf4.constant_bits_per_param() + 32 / (128 * 512))
  assert not any(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(
      nnx.state(model, qlora.NF4Storage)))
  graph, trained, rest = nnx.split(model, nnx.LoRAParam, ...)
  grads = jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graph, p, rest)(TOKENS) ** 2)))(trained)
  assert {type(v) for _, v in nnx.to_flat_state(grads)} == {nnx.LoRAParam}


def test_quantize_arrays_loads_an_fp32_checkpoint_by_path():
  base = gpt_model()
  model = gpt_model(seed=3)                            # other values, same shape
  qlora.apply_qlora(model, "attn/v_proj", 2, compute_dtype="float32", rngs=nnx.Rngs(0))
  flat = {surgery.path_str(p): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(base, nnx.Param))}
  out = qlora.quantize_arrays(model, flat)
  assert "layers/0/attn/v_proj/kernel" not in out and "layers/0/attn/v_proj/nf4_codes" in out
  q = {k.split("nf4_")[1]: v for k, v in out.items() if k.startswith("layers/1/attn/v_proj/nf4")}
  np.testing.assert_array_equal(
      nf4.dequantize(q, (32, 4, 8)),
      nf4.dequantize(nf4.quantize(base.layers[1].attn.v_proj.kernel[...]), (32, 4, 8)))


def test_qlora_merge_is_lossy_and_says_so():
  model = gpt_model()
  qlora.apply_qlora(model, "proj|up|down", 4, 8.0, compute_dtype="float32", rngs=nnx.Rngs(1))
  set_b(model, scale=0.05)
  want = FWD(model, TOKENS)
  with pytest.warns(UserWarning, match="lossy"):
    err = qlora.merge(model)
  assert err > 0
  got = FWD(model, TOKENS)
  assert 0 < float(jnp.max(jnp.abs(got - want))) < 0.5


def test_qlora_block_size_that_does_not_divide_is_one_line():
  with pytest.raises(ValueError, match=r"layers/0/attn/q_proj: block_size=48") as e:
    qlora.apply_qlora(gpt_model(), "q_proj", 2, block_size=48, rngs=nnx.Rngs(0))
  assert "\n" not in str(e.value)
