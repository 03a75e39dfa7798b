"""Cross-attention (eq. (3) of 2112.10752; genfm.diffusion.cross_attention): parameter counts by
hand, the identity at init (zero-initialised output projection), an independent NumPy float64
reference with PAD masking, pad invariance for rows with different prompt lengths, the text
reaching the output, the recorded weights, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import cross_attention as xa

RBG = lambda seed=0: nnx.Rngs(jax.random.key(seed, impl="rbg"))   # fast CPU initialisers


def n_params(module) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def perturb(module, seed=1, scale=0.3):
  """Every parameter + N(0, scale²) from NumPy: the zero output projection becomes active."""
  params = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  nnx.update(module, jax.tree.unflatten(treedef, [
      p + jnp.asarray(scale * rng.normal(size=p.shape), p.dtype) for p in leaves]))
  return module


@pytest.mark.parametrize("norm, D, C", [("group", 16, 12), ("layer", 8, 20), ("none", 24, 6)])
def test_param_count_by_hand(norm, D, C):
  m = nnx.eval_shape(lambda: xa.CrossAttention(D, C, num_heads=2, num_groups=4, norm=norm,
                                               rngs=nnx.Rngs(0)))
  # W_Q D×D, W_K and W_V C×D (no biases), W_O D×D + D, the norm's scale and bias.
  hand = D * D + C * D + C * D + D * D + D + {"group": 2 * D, "layer": 2 * D, "none": 0}[norm]
  assert n_params(m) == hand == xa.param_count(D, C, norm)


def test_identity_at_init_for_any_text():
  """W_O = 0, b_O = 0 at init: x + W_O·Attn(…) is x bit for bit, image [B, H, W, D] or tokens
  [B, T, D], whatever the context and mask."""
  rng = np.random.default_rng(0)
  m = xa.CrossAttention(8, 6, num_heads=2, num_groups=4, rngs=RBG())
  assert not np.any(np.asarray(m.out.kernel[...])) and not np.any(np.asarray(m.out.bias[...]))
  ctx = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
  mask = jnp.asarray([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  for shape in ((3, 4, 4, 8), (3, 7, 8)):
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(m(x, ctx, mask), x)
    np.testing.assert_array_equal(m(x, 10.0 * ctx), x)


def _reference(m, x_BTD, ctx_BSC, mask_BS, num_heads):
  """NumPy float64: eq. (3) per head with PAD logits removed, then W_O and the residual."""
  p = {k: np.asarray(v, np.float64) for k, v in (
      ("q", m.q.kernel[...]), ("k", m.k.kernel[...]), ("v", m.v.kernel[...]),
      ("o", m.out.kernel[...]), ("ob", m.out.bias[...]), ("s", m.norm.scale[...]),
      ("b", m.norm.bias[...]))}
  x = np.asarray(x_BTD, np.float64)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  h = (x - mu) / np.sqrt(var + 1e-6) * p["s"] + p["b"]              # LayerNorm
  c = np.asarray(ctx_BSC, np.float64)
  B, T, D = x.shape
  K = D // num_heads
  out = np.zeros_like(x)
  for b in range(B):
    keep = np.asarray(mask_BS[b], bool)
    q, k, v = h[b] @ p["q"], c[b][keep] @ p["k"], c[b][keep] @ p["v"]   # PAD keys dropped
    for n in range(num_heads):
      sl = slice(n * K, (n + 1) * K)
      logits = q[:, sl] @ k[:, sl].T / np.sqrt(K)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out[b, :, sl] = (w / w.sum(-1, keepdims=True)) @ v[:, sl]
  return x + out @ p["o"] + p["ob"]


def test_matches_numpy_reference_with_pad_masking():
  rng = np.random.default_rng(1)
  m = perturb(xa.CrossAttention(8, 5, num_heads=2, norm="layer", rngs=RBG()))
  x = jnp.asarray(rng.normal(size=(3, 6, 8)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)   # 3 prompt lengths
  got = jax.jit(lambda x, c, mk: m(x, c, mk))(x, ctx, jnp.asarray(mask))
  np.testing.assert_allclose(got, _reference(m, x, ctx, mask, 2), rtol=1e-5, atol=1e-5)


def test_pad_keys_get_zero_weight_and_padding_length_does_not_matter():
  """Rows with different prompt lengths: PAD keys weigh exactly 0, rows sum to 1; a row's output
  does not change when its PAD states change or when more PAD slots are appended."""
  rng = np.random.default_rng(2)
  m = perturb(xa.CrossAttention(8, 6, num_heads=2, num_groups=4, rngs=RBG()))
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  ctx = rng.normal(size=(2, 5, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
  p = np.asarray(m.probs(x, jnp.asarray(ctx), jnp.asarray(mask)))          # [B, N, T, S]
  assert p.shape == (2, 2, 16, 5)
  assert np.all(p[0, :, :, 3:] == 0.0) and np.all(p[1, :, :, 2:] == 0.0)
  assert np.all(p[0, :, :, :3] > 0.0)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  out = m(x, jnp.asarray(ctx), jnp.asarray(mask))
  junk = np.where(mask[..., None], ctx, 100.0 * rng.normal(size=ctx.shape)).astype(np.float32)
  np.testing.assert_array_equal(m(x, jnp.asarray(junk), jnp.asarray(mask)), out)
  longer = np.concatenate([ctx, rng.normal(size=(2, 3, 6)).astype(np.float32)], axis=1)
  np.testing.assert_allclose(
      m(x, jnp.asarray(longer), jnp.asarray(np.pad(mask, ((0, 0), (0, 3))))), out, atol=1e-6)
  # Row 1 alone on its real tokens (S = 2) gives its row of the batch.
  np.testing.assert_allclose(m(x[1:], jnp.asarray(ctx[1:, :2]), None), out[1:], atol=1e-5)


def test_the_text_reaches_the_output_after_a_nonzero_out_proj():
  rng = np.random.default_rng(3)
  m = xa.CrossAttention(8, 6, num_heads=1, num_groups=4, rngs=RBG())
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  ctx_a = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  ctx_b = ctx_a.at[1].set(jnp.asarray(rng.normal(size=(3, 6)), jnp.float32))   # row 1 differs
  np.testing.assert_array_equal(m(x, ctx_a), m(x, ctx_b))      # at init: text ignored
  perturb(m)
  ya, yb = np.asarray(m(x, ctx_a)), np.asarray(m(x, ctx_b))
  np.testing.assert_array_equal(ya[0], yb[0])                 # row 0's text is the same
  assert np.abs(ya[1] - yb[1]).max() > 1e-3                   # row 1's text changed its output


def test_recorded_weights_are_the_probs():
  rng = np.random.default_rng(4)
  m = perturb(xa.CrossAttention(8, 6, num_heads=2, num_groups=4, rngs=RBG()))
  x = jnp.asarray(rng.normal(size=(2, 2, 2, 8)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  capture = nnx.capture(lambda m, x, c: m(x, c), nnx.Intermediate)
  out, sown = capture(m, x, ctx)
  assert not jax.tree.leaves(sown)                            # nothing sown unless asked
  m.record = True
  out2, sown = capture(m, x, ctx)
  (w,) = sown["weights"].get_value()
  np.testing.assert_array_equal(w, m.probs(x, ctx))
  np.testing.assert_array_equal(out2, out)
  assert not jax.tree.leaves(nnx.state(m, nnx.Intermediate))  # the module keeps params only


@pytest.mark.parametrize("call, match", [
    (lambda m: m(jnp.zeros((2, 4, 4, 8)), jnp.zeros((2, 3, 5))), r"context must be \[B=2, S, 6\]"),
    (lambda m: m(jnp.zeros((2, 4, 4, 8)), jnp.zeros((1, 3, 6))), r"context must be \[B=2"),
    (lambda m: m(jnp.zeros((2, 4, 4, 7)), jnp.zeros((2, 3, 6))), "queries must be"),
    (lambda m: m(jnp.zeros((2, 4, 8)), jnp.zeros((2, 3, 6)), jnp.ones((2, 4), bool)),
     r"mask must be \[B, S\] = \(2, 3\)"),
])
def test_bad_input_is_one_line(call, match):
  m = nnx.eval_shape(lambda: xa.CrossAttention(8, 6, num_heads=2, num_groups=4,
                                               rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=match) as e:
    call(m)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="divisible by num_heads=3"):
    xa.CrossAttention(8, 6, num_heads=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="valid choices: group, layer, none"):
    xa.CrossAttention(8, 6, norm="batch", rngs=nnx.Rngs(0))
