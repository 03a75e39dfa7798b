"""Text classifier-free guidance with negative prompts (`guidance.guided_context_model`,
eq. (6) of 2207.12598): equal to the class-label CFG on a model that reads labels from its
context, eq. (6) against separate passes, exact endpoints, a negative prompt equal to the empty
prompt reproducing plain CFG bit for bit through a sampler, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import guidance
from genfm.diffusion import mlp_denoiser
from genfm.diffusion import samplers
from genfm.diffusion import schedules
from genfm.diffusion import unet

CFG = mlp_denoiser.MLPDenoiserConfig(hidden=32, num_layers=2, temb_dim=16, num_classes=3)
TEXT_UNET = unet.UNetConfig(image_channels=1, base_channels=8, channel_mults=(1, 2),
                            num_res_blocks=1, attn_resolutions=(), num_heads=2, num_groups=4,
                            image_size=8, context_dim=6, cross_attn_resolutions=(8,))


def materialize(make, seed: int = 0, scale: float = 0.3):
  """make() built abstractly with NumPy-drawn parameters (no per-initialiser XLA compiles);
  the zero-initialised output layers become active."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(seed)
  return nnx.merge(graphdef, jax.tree.unflatten(
      treedef, [jnp.asarray(rng.normal(0, scale, l.shape), jnp.float32) for l in leaves]))


def test_equals_class_guidance_when_the_context_carries_the_label():
  """A model reading its label from context[:, 0, 0] is guided exactly as the class model under
  `guided_model`: the text form is the same eq. (6), uncond branch = the null label's context."""
  model = materialize(lambda: mlp_denoiser.MLPDenoiser(CFG, rngs=nnx.Rngs(0)))
  labels = jnp.array([0, 2, 1, 0])
  ctx = lambda lab: jnp.broadcast_to(jnp.asarray(lab, jnp.float32)[:, None, None], (4, 3, 2))
  apply_text = lambda x, t, c, m: model(x, t, c[:, 0, 0].astype(jnp.int32))
  x = jax.random.normal(jax.random.key(0), (4, 2))
  t = jnp.array([5, 100, 500, 999])
  for s in (0.0, 1.0, 2.5, jnp.float32(3.0)):
    ref = guidance.guided_model(model, labels, 3, s)(x, t)
    got = guidance.guided_context_model(apply_text, ctx(labels), None,
                                        ctx(jnp.full((4,), 3)), None, s)(x, t)
    np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def apply():
  """apply(x, t, context, mask) of a small text U-Net, jitted (one compile per batch size)."""
  graphdef, state = nnx.split(materialize(lambda: unet.UNet(TEXT_UNET, rngs=nnx.Rngs(0)),
                                          scale=0.2))
  # A pure function of the state: callable inside the sampler's own trace too.
  run = jax.jit(lambda st, x, t, c, mk: nnx.merge(graphdef, st)(x, t, context_BSD=c,
                                                                context_mask_BS=mk))
  return lambda x, t, c, mk: run(state, x, t, c, mk)


def _contexts(B=3, S=5, seed=1):
  rng = np.random.default_rng(seed)
  c = lambda: jnp.asarray(rng.normal(size=(B, S, 6)), jnp.float32)
  prompt, empty, negative = c(), c()[:1], c()
  mask = jnp.asarray(np.arange(S)[None] < np.array([[5], [3], [2]])[:B])   # lengths differ
  return prompt, mask, empty, jnp.asarray(np.arange(S)[None] < 2), negative, mask


def test_eq6_endpoints_and_negative_prompt(apply):
  prompt, mask, empty, empty_mask, negative, neg_mask = _contexts()
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
  t = jnp.array([10, 400, 900])
  cond = apply(x, t, prompt, mask)
  uncond = apply(x, t, jnp.broadcast_to(empty, prompt.shape),
                 jnp.broadcast_to(empty_mask, mask.shape))
  neg = apply(x, t, negative, neg_mask)
  plain = lambda s: guidance.guided_context_model(apply, prompt, mask, empty, empty_mask, s)
  negf = lambda s: guidance.guided_context_model(apply, prompt, mask, negative, neg_mask, s)
  np.testing.assert_array_equal(plain(1.0)(x, t), cond)         # s = 1: the prompt alone
  np.testing.assert_allclose(plain(0.0)(x, t), uncond, atol=1e-6)   # s = 0: the empty prompt
  np.testing.assert_allclose(negf(0.0)(x, t), neg, atol=1e-6)       # s = 0: the negative
  for s in (2.0, 4.0):                                          # (1 + w) ε(c) − w ε(u), w = s − 1
    np.testing.assert_allclose(plain(s)(x, t), s * cond - (s - 1) * uncond, atol=1e-5)
    np.testing.assert_allclose(negf(s)(x, t), s * cond - (s - 1) * neg, atol=1e-5)
  assert np.abs(np.asarray(negf(3.0)(x, t) - plain(3.0)(x, t))).max() > 1e-3


def test_negative_prompt_equal_to_the_empty_prompt_is_plain_cfg_bit_for_bit(apply):
  """Through a whole DDIM run: the negative given per sample ([B, S, D] copies of the empty
  prompt's states) and plain CFG (the empty prompt broadcast from [1, S, D]) agree exactly."""
  prompt, mask, empty, empty_mask, negative, neg_mask = _contexts()
  sched = schedules.make_schedule("linear", 1000)
  run = lambda un, um: samplers.sample(
      "ddim", guidance.guided_context_model(apply, prompt, mask, un, um, 3.0), sched,
      jax.random.key(3), (3, 8, 8, 1), num_steps=4)
  plain = run(empty, empty_mask)
  as_negative = run(jnp.broadcast_to(empty, prompt.shape), jnp.broadcast_to(empty_mask, (3, 5)))
  np.testing.assert_array_equal(as_negative, plain)
  assert np.abs(np.asarray(run(negative, neg_mask) - plain)).max() > 1e-3


def test_bad_input_is_one_line():
  f = lambda *a: a[0]
  ctx, ctx4 = jnp.zeros((2, 5, 6)), jnp.zeros((2, 4, 6))
  for args, match in [((ctx, None, ctx4, None), r"differ in \[S, D\]"),
                      ((ctx, jnp.ones((2, 5)), ctx, None), "masks for both"),
                      ((ctx, None, None, None), "unconditional context"),
                      ((ctx[0], None, ctx, None), r"must be \[B, S, D\]")]:
    with pytest.raises(ValueError, match=match) as e:
      guidance.guided_context_model(f, *args, scale=2.0)
    assert "\n" not in str(e.value)
  fn = guidance.guided_context_model(f, jnp.zeros((3, 5, 6)), None, ctx, None, 2.0)
  with pytest.raises(ValueError, match="batch 3; expected 2"):
    fn(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,)))
