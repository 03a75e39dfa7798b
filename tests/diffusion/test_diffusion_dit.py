"""DiT with adaLN-Zero (arXiv:2212.09748): identity blocks and zero output at init, parameter
counts against the hand formula and the paper's table, an independent NumPy forward, the null
label, the flash-attention switch, and bad input."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import dit
from genfm.transformers import vit

# Table 4 of 2212.09748 (params, millions) for the /2 models at 256×256 (32×32×4 latents).
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


def tiny(**kw) -> dit.DiTConfig:
  base = dict(image_size=8, in_channels=3, num_classes=5, patch_size=2, hidden=32, depth=2,
              num_heads=4, freq_dim=16)
  return dit.DiTConfig(**{**base, **kw})


@nnx.jit
def apply(model, x, t, labels):
  return model(x, t, labels)


def perturb(model: nnx.Module, seed: int = 1, scale: float = 0.1) -> None:
  """Adds N(0, scale²) to every parameter, so zero-initialised gates and the final layer are
  no longer 0 and every path of the network reaches the output."""
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)          # host-side draws: no compile per parameter shape
  nnx.update(model, jax.tree.unflatten(treedef, [
      p + jnp.asarray(scale * rng.normal(size=p.shape), p.dtype) for p in leaves]))


def inputs(cfg, B=4, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, cfg.image_size, cfg.image_size, cfg.in_channels)),
                  jnp.float32)
  t = jnp.asarray(rng.uniform(0, 999, size=B), jnp.float32)      # a different t per row
  labels = jnp.asarray(np.arange(B) % (cfg.num_classes + 1), jnp.int32)   # incl. the null label
  return x, t, labels


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_param_counts_match_formula_and_paper_table(size):
  cfg = dit.dit_config(f"{size}/2")
  assert (cfg.hidden, cfg.depth, cfg.num_heads) == dit.DIT_SIZES[size]
  assert (cfg.image_size, cfg.in_channels, cfg.num_classes, cfg.learn_sigma) == (32, 4, 1000, True)
  shapes = nnx.state(nnx.eval_shape(lambda: dit.DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert n == dit.param_count(cfg)
  assert round(n / 1e6) == PAPER_PARAMS_M[size], n


def test_param_formula_off_the_paper_setting():
  """Unconditional, no learn_sigma, patch 4, mlp_ratio 2, another freq_dim: still exact."""
  cfg = tiny(num_classes=None, patch_size=4, mlp_ratio=2.0, freq_dim=8, depth=3)
  shapes = nnx.state(nnx.eval_shape(lambda: dit.DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == dit.param_count(cfg)


def test_every_block_is_the_identity_at_init_for_any_conditioning():
  """adaLN-Zero: with the regressor of (β, γ, α) zero, x + 0 · Attn(…) + 0 · MLP(…) = x bit
  for bit — for random tokens and a different random c per row, however large. Perturbing only
  the regressor breaks it (the check can fail)."""
  cfg = tiny()
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x_BTD = jnp.asarray(rng.normal(size=(3, cfg.num_patches, cfg.hidden)), jnp.float32)
  run = nnx.jit(lambda blk, x, c: blk(x, c))
  for c_scale in (0.0, 1.0, 1e3):
    c_BD = jnp.asarray(c_scale * rng.normal(size=(3, cfg.hidden)), jnp.float32)
    for blk in model.blocks:
      np.testing.assert_array_equal(np.asarray(run(blk, x_BTD, c_BD)), np.asarray(x_BTD))
  blk = model.blocks[0]
  blk.ada.bias[...] = 0.1 * jnp.ones_like(blk.ada.bias[...])
  assert not np.allclose(np.asarray(run(blk, x_BTD, c_BD)), np.asarray(x_BTD))


def test_dit_outputs_exactly_zero_at_init_and_learns_from_its_final_layer():
  cfg = tiny(learn_sigma=True)
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  x, t, labels = inputs(cfg)
  out = apply(model, x, t, labels)
  assert out.shape == (4, 8, 8, 6)                     # C_out = 2C with learn_sigma
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  np.testing.assert_array_equal(np.asarray(apply(model, 100.0 * x, t, None)), 0.0)
  # The zero final linear map still gets a gradient: the network is not stuck at 0.
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum((m(x, t, labels) - x.repeat(2, -1)) ** 2)))(model)
  assert float(jnp.abs(grads.final.linear.kernel[...]).max()) > 0.0


def test_patchify_unpatchify_roundtrip_and_order():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 12, 3)), jnp.float32)
  p_BTQ = vit.patchify(x, 4)
  assert p_BTQ.shape == (2, 6, 48)
  np.testing.assert_array_equal(np.asarray(vit.unpatchify(p_BTQ, 4, 8, 12, 3)), np.asarray(x))
  # Patch t = i·(W/p) + j holds rows i·p.., columns j·p.. (row-major, (p, q, c) inside).
  np.testing.assert_array_equal(np.asarray(p_BTQ[:, 1 * 3 + 2]),
                                np.asarray(x[:, 4:8, 8:12, :]).reshape(2, -1))


def _np_layernorm(x):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6)


def _np_gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_silu(x):
  return x / (1 + np.exp(-x))


def np_dit(model: dit.DiT, x, t, labels):
  """An independent float64 NumPy forward from the parameters, loops where the model reshapes:
  patch loop, per-head attention, eqs. of sec. 3.2 of 2212.09748."""
  cfg, g = model.cfg, lambda a: np.asarray(a[...], np.float64)
  x, p, D, N = np.asarray(x, np.float64), cfg.patch_size, cfg.hidden, cfg.num_heads
  B, G = x.shape[0], cfg.grid
  tokens = np.stack([x[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(B, -1)
                     for i in range(G) for j in range(G)], axis=1)          # [B, T, Q]
  h = tokens @ g(model.embed.kernel) + g(model.embed.bias)
  h = h + vit.sincos_2d(G, G, D).astype(np.float64)[None]
  half = cfg.freq_dim // 2
  freqs = np.exp(-np.log(10_000.0) * np.arange(half) / (half - 1))
  arg = np.asarray(t, np.float64)[:, None] * freqs[None]
  temb = np.concatenate([np.sin(arg), np.cos(arg)], -1)
  c = _np_silu(temb @ g(model.t_mlp1.kernel) + g(model.t_mlp1.bias))
  c = c @ g(model.t_mlp2.kernel) + g(model.t_mlp2.bias)
  c = c + g(model.label_emb.embedding)[np.asarray(labels)]
  for blk in model.blocks:
    mod = _np_silu(c) @ g(blk.ada.kernel) + g(blk.ada.bias)
    b1, s1, a1, b2, s2, a2 = (mod[:, k * D:(k + 1) * D][:, None] for k in range(6))
    u = _np_layernorm(h) * (1 + s1) + b1
    q = np.einsum("btd,dnh->btnh", u, g(blk.attn.q_proj.kernel)) + g(blk.attn.q_proj.bias)
    k = np.einsum("btd,dnh->btnh", u, g(blk.attn.k_proj.kernel)) + g(blk.attn.k_proj.bias)
    v = np.einsum("btd,dnh->btnh", u, g(blk.attn.v_proj.kernel)) + g(blk.attn.v_proj.bias)
    heads = []
    for n in range(N):
      logits = q[:, :, n] @ k[:, :, n].transpose(0, 2, 1) / math.sqrt(D // N)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      heads.append((w / w.sum(-1, keepdims=True)) @ v[:, :, n])
    att = np.einsum("btnh,nhd->btd", np.stack(heads, 2), g(blk.attn.o_proj.kernel))
    h = h + a1 * (att + g(blk.attn.o_proj.bias))
    u = _np_layernorm(h) * (1 + s2) + b2
    m = _np_gelu(u @ g(blk.mlp.up.kernel) + g(blk.mlp.up.bias))
    h = h + a2 * (m @ g(blk.mlp.down.kernel) + g(blk.mlp.down.bias))
  mod = _np_silu(c) @ g(model.final.ada.kernel) + g(model.final.ada.bias)
  u = _np_layernorm(h) * (1 + mod[:, None, D:]) + mod[:, None, :D]
  out = u @ g(model.final.linear.kernel) + g(model.final.linear.bias)     # [B, T, p·p·C_out]
  img = np.zeros((B, cfg.image_size, cfg.image_size, cfg.out_channels))
  for i in range(G):
    for j in range(G):
      img[:, i * p:(i + 1) * p, j * p:(j + 1) * p] = out[:, i * G + j].reshape(B, p, p, -1)
  return img


def test_forward_matches_an_independent_numpy_dit():
  cfg = tiny()
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  perturb(model)
  x, t, labels = inputs(cfg)
  got = np.asarray(apply(model, x, t, labels))
  want = np_dit(model, x, t, labels)
  assert np.abs(want).max() > 0.1                     # a non-trivial output
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_labels_reach_the_output_and_none_is_the_null_label():
  cfg = tiny()
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  perturb(model)
  x, t, _ = inputs(cfg)
  null = jnp.full((4,), cfg.num_classes, jnp.int32)
  np.testing.assert_array_equal(np.asarray(apply(model, x, t, None)),
                                np.asarray(apply(model, x, t, null)))
  a, b = apply(model, x, t, jnp.zeros(4, jnp.int32)), apply(model, x, t, jnp.ones(4, jnp.int32))
  assert float(jnp.abs(a - b).max()) > 1e-3
  # Rows are independent: changing row 0's label leaves rows 1..3 unchanged.
  c = apply(model, x, t, jnp.asarray([1, 0, 0, 0], jnp.int32))
  np.testing.assert_array_equal(np.asarray(c[1:]), np.asarray(a[1:]))


def test_pallas_flash_attention_matches_xla():
  """attention_impl="pallas" (the genfm.kernels flash kernel; interpreter on CPU) gives the
  XLA attention's output on the same parameters."""
  cfg = tiny(depth=1)
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  perturb(model)
  flash = dit.DiT(tiny(depth=1, attention_impl="pallas"), rngs=nnx.Rngs(0))
  nnx.update(flash, nnx.state(model, nnx.Param))
  x, t, labels = inputs(cfg)
  np.testing.assert_allclose(np.asarray(apply(flash, x, t, labels)),
                             np.asarray(apply(model, x, t, labels)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: tiny(image_size=28, patch_size=3), "patch size 3 does not divide the image size 28"),
    (lambda: tiny(hidden=30, num_heads=4), "not divisible by num_heads"),
    (lambda: tiny(attention_impl="flash"), "valid choices"),
    (lambda: dit.dit_config("M/2"), "unknown DiT 'M/2'"),
    (lambda: dit.dit_config("S"), "unknown DiT 'S'"),
    (lambda: dit.dit_config("XL/2", image_size=31), "patch size 2 does not divide"),
])
def test_bad_config_is_one_line(make, match):
  with pytest.raises(ValueError, match=match) as e:
    make()
  assert "\n" not in str(e.value)


def test_wrong_input_shape_is_one_line():
  model = dit.DiT(tiny(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\(H, W, C\) = \(8, 8, 3\)"):
    model(jnp.zeros((2, 8, 8, 1)), jnp.zeros(2), None)
  with pytest.raises(ValueError, match="unconditional DiT"):
    dit.DiT(tiny(num_classes=None), rngs=nnx.Rngs(0))(jnp.zeros((2, 8, 8, 3)), jnp.zeros(2),
                                                       jnp.zeros(2, jnp.int32))


# --- text conditioning: PixArt-α cross-attention after self-attention (2310.00426) -------------


def test_text_dit_param_count_by_hand():
  """Per block: W_Q D², W_K and W_V C·D (no biases), W_O D² + D, no norm (PixArt-α's)."""
  for cfg in (tiny(context_dim=12), tiny(num_classes=None, context_dim=5, depth=3)):
    plain = dataclasses.replace(cfg, context_dim=None)
    shapes = nnx.state(nnx.eval_shape(lambda: dit.DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    n = sum(x.size for x in jax.tree.leaves(shapes))
    D, C = cfg.hidden, cfg.context_dim
    assert n == dit.param_count(cfg) == dit.param_count(plain) + cfg.depth * (
        2 * D * D + 2 * C * D + D)


def test_text_dit_blocks_are_the_identity_at_init_and_the_text_reaches_after():
  cfg = tiny(num_classes=None, context_dim=6)
  model = dit.DiT(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  rng = np.random.default_rng(1)
  x, t, _ = inputs(tiny(), B=2)
  ctx = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  x_BTD = jnp.asarray(rng.normal(size=(2, cfg.num_patches, cfg.hidden)), jnp.float32)
  c_BD = jnp.asarray(rng.normal(size=(2, cfg.hidden)), jnp.float32)
  blk_run = nnx.jit(lambda blk, x, c, ctx, m: blk(x, c, ctx, m))
  for blk in model.blocks:
    np.testing.assert_array_equal(np.asarray(blk_run(blk, x_BTD, c_BD, ctx, mask)),
                                  np.asarray(x_BTD))
  run = nnx.jit(lambda m, x, t, ctx, mask: m(x, t, context_BSD=ctx, context_mask_BS=mask))
  perturb(model)
  ctx_b = ctx.at[1].set(jnp.asarray(rng.normal(size=(4, 6)), jnp.float32))
  a, b = np.asarray(run(model, x, t, ctx, mask)), np.asarray(run(model, x, t, ctx_b, mask))
  np.testing.assert_array_equal(a[0], b[0])              # row 0's text unchanged
  assert np.abs(a[1] - b[1]).max() > 1e-3                # row 1's text reaches its output
  junk = jnp.where(mask[..., None], ctx, 50.0)           # PAD states do not matter
  np.testing.assert_array_equal(np.asarray(run(model, x, t, junk, mask)), a)


def test_text_dit_bad_input_is_one_line():
  text = nnx.eval_shape(lambda: dit.DiT(tiny(context_dim=6), rngs=nnx.Rngs(0)))
  plain = nnx.eval_shape(lambda: dit.DiT(tiny(), rngs=nnx.Rngs(0)))
  x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros(2)
  for call, match in [(lambda: plain(x, t, context_BSD=jnp.zeros((2, 4, 6))),
                       "without cross-attention"),
                      (lambda: text(x, t), r"context_BSD must be \[B=2, S, 6\], got None"),
                      (lambda: text(x, t, context_BSD=jnp.zeros((2, 4, 5))), r"got \(2, 4, 5\)")]:
    with pytest.raises(ValueError, match=match) as e:
      jax.eval_shape(call)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="context_dim must be a positive width"):
    tiny(context_dim=0)
