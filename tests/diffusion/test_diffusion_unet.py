"""Tests for genfm.diffusion.unet: shapes, parameter counts by hand, block properties.

CPU cost note: on CPU every initialiser of a new shape is its own XLA compile, which makes
building even a tiny U-Net cost ~10 s. Property tests therefore build it abstractly
(nnx.eval_shape) and fill the parameters from NumPy (`materialize`); the real initialisers are
tested on single blocks.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import unet

TINY = unet.UNetConfig(image_channels=3, base_channels=8, channel_mults=(1, 2),
                       num_res_blocks=1, attn_resolutions=(4,), num_heads=2, num_groups=4,
                       image_size=8, num_classes=3)


def n_params(module) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def materialize(make, seed: int = 0, scale: float = 0.1):
  """make() built abstractly, every parameter drawn from NumPy: N(0, scale²), norm scales
  1 + N(0, scale²). No XLA compile; all layers (zero-initialised ones too) are active."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  rng = np.random.default_rng(seed)
  vals = []
  for path, leaf in paths_leaves:
    v = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
    is_norm_scale = "norm" in jax.tree_util.keystr(path) and "scale" in jax.tree_util.keystr(path)
    vals.append(jnp.asarray(v + 1.0 if is_norm_scale else v))
  return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, vals))



def test_default_unet_shapes_and_param_count():
  cfg = unet.UNetConfig()
  abstract = nnx.eval_shape(lambda: unet.UNet(cfg, rngs=nnx.Rngs(0)))
  assert n_params(abstract) == 1_112_801     # golden: 32×32×1, channels 32/64/64, attn at 8×8
  out = jax.eval_shape(lambda: unet.UNet(cfg, rngs=nnx.Rngs(0))(
      jnp.zeros((2, 32, 32, 1)), jnp.array([0, 999])))
  chex.assert_shape(out, (2, 32, 32, 1))


def test_block_param_counts_by_hand():
  c_in, c_out, temb, c = 8, 16, 32, 16
  res = nnx.eval_shape(lambda: unet.ResBlock(c_in, c_out, temb, num_groups=4, rngs=nnx.Rngs(0)))
  # GN(c_in) + conv3×3 + temb Linear + GN(c_out) + conv3×3 + 1×1 skip (weights + biases).
  expect = (2 * c_in + 9 * c_in * c_out + c_out + temb * c_out + c_out + 2 * c_out
            + 9 * c_out * c_out + c_out + c_in * c_out + c_out)
  assert n_params(res) == expect
  attn = nnx.eval_shape(lambda: unet.AttnBlock(c, num_heads=2, num_groups=4, rngs=nnx.Rngs(0)))
  assert n_params(attn) == 2 * c + (c * 3 * c + 3 * c) + (c * c + c)


def test_timestep_embedding_formula():
  t = jnp.array([0.0, 1.0, 17.0, 999.0])
  emb = unet.timestep_embedding(t, 8)
  freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 3)
  ref = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], axis=1)
  np.testing.assert_allclose(emb, ref, atol=1e-4)
  with pytest.raises(ValueError, match="even and ≥ 4"):
    unet.timestep_embedding(t, 7)


def test_resblock_starts_as_identity():
  """Zero-initialised last conv (DDPM code): a same-width ResBlock is the identity at init."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  # rbg keys: the initialisers compile several times faster on CPU than threefry's.
  res = unet.ResBlock(8, 8, 16, num_groups=4, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  np.testing.assert_array_equal(jax.jit(lambda x: res(x, jnp.ones((2, 16))))(x), x)
  assert not np.any(np.asarray(res.conv2.kernel[...]))


def test_attention_matches_reference_and_is_permutation_equivariant():
  attn = materialize(lambda: unet.AttnBlock(16, num_heads=2, num_groups=4, rngs=nnx.Rngs(0)),
                     seed=1, scale=0.3)                      # 16 channels, 2 heads of 8
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 16))
  out = attn(x)
  # Reference: per example, per head, softmax(q kᵀ/√h) v in float64 NumPy.
  h = np.asarray(attn.norm(x), np.float64).reshape(2, 16, 16)
  w, b = np.asarray(attn.qkv.kernel[...]), np.asarray(attn.qkv.bias[...])
  q, k, v = (a.reshape(2, 16, 2, 8) for a in np.split(h @ w + b, 3, axis=-1))
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  o = np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v).reshape(2, 16, 16)
  o = o @ np.asarray(attn.proj.kernel[...]) + np.asarray(attn.proj.bias[...])
  np.testing.assert_allclose(out, np.asarray(x) + o.reshape(x.shape), atol=1e-5)
  # No positional information: permuting the 16 positions permutes the output.
  perm = np.random.default_rng(0).permutation(16)
  xp = x.reshape(2, 16, 16)[:, perm].reshape(x.shape)
  np.testing.assert_allclose(attn(xp).reshape(2, 16, 16), out.reshape(2, 16, 16)[:, perm],
                             atol=1e-5)


@pytest.mark.slow   # ~16 s CPU: one compile of six U-Net passes and a gradient
def test_unet_examples_independent_and_labels_used():
  model = materialize(lambda: unet.UNet(TINY, rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
  t = jnp.array([10, 500])
  lab = jnp.array([0, 1])

  @nnx.jit   # one compile for every forward pass and the gradient below
  def run(m, x):
    return dict(
        out=m(x, t, lab),
        other_ex1=m(x.at[1].set(5.0), t, jnp.array([0, 2])),
        other_label=m(x, t, jnp.array([2, 1])),
        later_t=m(x, t + 100, lab),
        null=m(x, t, jnp.array([3, 3])),
        no_labels=m(x, t),
        grad=jax.grad(lambda x: m(x, t, lab)[0, 0, 0, 0])(x))

  r = run(model, x)
  chex.assert_shape(r["out"], x.shape)
  # Example 0 ignores example 1 (GroupNorm is per example): needed by CFG batching and the
  # exact-divergence likelihood.
  np.testing.assert_allclose(r["other_ex1"][0], r["out"][0], atol=1e-5)
  # Labels and time change the prediction; no labels = the null label (index num_classes).
  assert not np.allclose(r["other_label"][0], r["out"][0], atol=1e-4)
  assert not np.allclose(r["later_t"], r["out"], atol=1e-4)
  np.testing.assert_allclose(r["no_labels"], r["null"], atol=1e-6)
  # Gradient of one output pixel reaches the far corner of the input (attention + depth),
  # and never another example.
  assert float(jnp.abs(r["grad"][0, 7, 7]).sum()) > 0
  assert float(jnp.abs(r["grad"][1]).sum()) == 0


def test_bad_input():
  tiny = nnx.eval_shape(lambda: unet.UNet(TINY, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"UNet expects \[B, H, W, 3\] with H, W divisible by 2"):
    jax.eval_shape(lambda: tiny(jnp.zeros((1, 7, 8, 3)), jnp.zeros((1,))))
  uncond = nnx.eval_shape(lambda: unet.UNet(unet.UNetConfig(
      base_channels=8, channel_mults=(1,), num_groups=4, attn_resolutions=(), image_size=4),
      rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="labels given to an unconditional UNet"):
    jax.eval_shape(lambda: uncond(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,)),
                                  jnp.zeros((1,), jnp.int32)))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    nnx.eval_shape(lambda: unet.AttnBlock(8, num_heads=3, num_groups=4, rngs=nnx.Rngs(0)))


# --- text conditioning: cross-attention (2112.10752 sec. 3.3) -----------------------------------

TEXT = dataclasses.replace(TINY, num_classes=None, context_dim=6, cross_attn_resolutions=(8,))
PLAIN = dataclasses.replace(TINY, num_classes=None)


def test_text_unet_adds_exactly_the_cross_attention_blocks():
  """context_dim None leaves the U-Net as it was (TINY's count is the golden above); with text,
  the extra parameters are the cross-attention blocks at 8×8 (one down, two up, 8 channels) and
  in the middle (16 channels), each W_Q D², W_K, W_V C·D, W_O D² + D, GroupNorm 2D."""
  text = nnx.eval_shape(lambda: unet.UNet(TEXT, rngs=nnx.Rngs(0)))
  plain = nnx.eval_shape(lambda: unet.UNet(PLAIN, rngs=nnx.Rngs(0)))
  xa = lambda D, C=6: D * D + 2 * C * D + D * D + D + 2 * D
  assert n_params(text) == n_params(plain) + 3 * xa(8) + xa(16)
  paths = lambda m: {p for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  extra = paths(text) - paths(plain)
  assert paths(plain) <= paths(text)                      # every old path kept, same place
  assert {p[:2] if p[0] != "mid_xattn" else p[:1] for p in extra} == {
      ("down", 0), ("up", 3), ("up", 4), ("mid_xattn",)}


def _copy_shared(src, dst):
  """dst's parameters set to src's at the same paths."""
  src_flat = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
  dst_flat = nnx.to_flat_state(nnx.state(dst, nnx.Param))
  nnx.update(dst, nnx.from_flat_state([(p, src_flat[p]) for p, _ in dst_flat]))


@pytest.mark.slow   # ~15 s CPU: one compile of several U-Net passes
def test_text_unet_is_the_plain_unet_at_zero_out_proj_and_reads_the_text_after():
  text = materialize(lambda: unet.UNet(TEXT, rngs=nnx.Rngs(0)))
  plain = materialize(lambda: unet.UNet(PLAIN, rngs=nnx.Rngs(0)))
  _copy_shared(text, plain)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  t = jnp.array([10, 700])
  ctx = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)           # two prompt lengths
  ctx_b = ctx.at[1].set(jnp.asarray(rng.normal(size=(4, 6)), jnp.float32))
  ctx_long = jnp.concatenate([ctx, jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)], 1)
  mask_long = jnp.pad(mask, ((0, 0), (0, 3)))

  @nnx.jit
  def run(text, plain):
    h, hs, temb = text.encode(x, t, context_BSD=ctx, context_mask_BS=mask)
    return dict(out=text(x, t, context_BSD=ctx, context_mask_BS=mask),
                split=text.decode(h, hs, temb, context_BSD=ctx, context_mask_BS=mask),
                other=text(x, t, context_BSD=ctx_b, context_mask_BS=mask),
                longer=text(x, t, context_BSD=ctx_long, context_mask_BS=mask_long),
                plain=plain(x, t))

  for _, m in nnx.iter_graph(text):           # zero every cross-attention output projection
    if isinstance(m, unet.CrossAttention):
      m.out.kernel[...] = jnp.zeros_like(m.out.kernel[...])
      m.out.bias[...] = jnp.zeros_like(m.out.bias[...])
  r = run(text, plain)
  np.testing.assert_array_equal(r["out"], r["plain"])       # identity blocks: the plain U-Net
  np.testing.assert_array_equal(r["other"], r["out"])       # … whatever the text
  text2 = materialize(lambda: unet.UNet(TEXT, rngs=nnx.Rngs(0)))   # nonzero out-proj
  r = run(text2, plain)
  np.testing.assert_array_equal(r["split"], r["out"])       # __call__ = decode ∘ encode
  np.testing.assert_allclose(r["other"][0], r["out"][0], atol=1e-5)   # row 0's text unchanged
  assert np.abs(np.asarray(r["other"][1] - r["out"][1])).max() > 1e-3   # row 1's text reaches
  np.testing.assert_allclose(r["longer"], r["out"], atol=1e-5)  # extra PAD slots change nothing
  assert np.abs(np.asarray(r["out"] - r["plain"])).max() > 1e-3


def test_text_unet_bad_input():
  text = nnx.eval_shape(lambda: unet.UNet(TEXT, rngs=nnx.Rngs(0)))
  plain = nnx.eval_shape(lambda: unet.UNet(PLAIN, rngs=nnx.Rngs(0)))
  x, t, ctx = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)), jnp.zeros((2, 4, 6))
  for call, match in [(lambda: plain(x, t, context_BSD=ctx), "without cross-attention"),
                      (lambda: text(x, t), r"reads text \(context_dim=6\)"),
                      (lambda: text(x, t, context_BSD=ctx[..., :5]), r"\[B=2, S, 6\]"),
                      (lambda: text(x, t, context_BSD=ctx[:1]), r"\[B=2, S, 6\]")]:
    with pytest.raises(ValueError, match=match) as e:
      jax.eval_shape(call)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="set context_dim"):
    unet.UNetConfig(cross_attn_resolutions=(8,))
