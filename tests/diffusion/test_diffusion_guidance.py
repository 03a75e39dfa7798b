"""Tests for genfm.diffusion.guidance (classifier-free guidance, 2207.12598)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import guidance
from genfm.diffusion import mlp_denoiser
from genfm.diffusion import samplers
from genfm.diffusion import schedules

CFG = mlp_denoiser.MLPDenoiserConfig(hidden=32, num_layers=2, temb_dim=16, num_classes=3)


def materialize(make, seed: int = 0, scale: float = 0.3):
  """make() built abstractly with NumPy-drawn parameters (no per-initialiser XLA compiles);
  also makes the zero-initialised output layer active."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(seed)
  return nnx.merge(graphdef, jax.tree.unflatten(
      treedef, [jnp.asarray(rng.normal(0, scale, l.shape), jnp.float32) for l in leaves]))


def test_guidance_endpoints_exact_and_eq6():
  """s = 1 is the conditional model and s = 0 the unconditional one, bit for bit; other s
  follow eq. (6) of 2207.12598 with w = s − 1."""
  model = materialize(lambda: mlp_denoiser.MLPDenoiser(CFG, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  t = jnp.asarray([0, 10, 100, 500, 999])
  labels = jnp.asarray([0, 1, 2, 1, 0])
  null = jnp.full((5,), 3)

  @nnx.jit
  def run(m, x):
    apply = lambda x, t, c: m(x, t, c)
    g = lambda s: guidance.guided_model(apply, labels, 3, s)(x, t)
    return dict(cond=m(x, t, labels), uncond=m(x, t, null), s1=g(1.0), s0=g(0.0), s3=g(3.0),
                s1_traced=g(jnp.float32(1.0)))

  r = run(model, x)
  assert not np.allclose(r["cond"], r["uncond"], atol=1e-3)
  np.testing.assert_array_equal(r["s1"], r["cond"])
  np.testing.assert_allclose(r["s0"], r["uncond"], atol=1e-6)   # 2B batch vs B batch
  np.testing.assert_allclose(r["s1_traced"], r["cond"], atol=1e-6)
  w = 2.0
  np.testing.assert_allclose(r["s3"], (1 + w) * r["cond"] - w * r["uncond"], atol=1e-5)
  c, u = jnp.asarray(rng.normal(size=(64,))), jnp.asarray(rng.normal(size=(64,)))
  np.testing.assert_array_equal(guidance.combine(c, u, 1.0), c)
  np.testing.assert_array_equal(guidance.combine(c, u, 0.0), u)


def test_drop_labels():
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, 10_000))
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(guidance.drop_labels(key, labels, 0.0, 3), labels)
  np.testing.assert_array_equal(guidance.drop_labels(key, labels, 1.0, 3), 3)
  dropped = guidance.drop_labels(key, labels, 0.2, 3)
  frac = float(jnp.mean(dropped == 3))
  assert abs(frac - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 10_000)
  np.testing.assert_array_equal(jnp.where(dropped == 3, labels, dropped), labels)


def test_guided_sampler_shapes():
  model = materialize(lambda: mlp_denoiser.MLPDenoiser(CFG, rngs=nnx.Rngs(0)))
  sched = schedules.make_schedule("linear", 100)
  fn = guidance.guided_model(lambda x, t, c: model(x, t, c), jnp.zeros((4,), jnp.int32), 3, 2.0)
  out = jax.eval_shape(lambda k: samplers.ddim_sample(fn, sched, k, (4, 2), num_steps=10),
                       jax.random.PRNGKey(0))
  chex.assert_shape(out, (4, 2))


def test_bad_input():
  with pytest.raises(ValueError, match="needs a class-conditional model"):
    guidance.guided_model(None, jnp.zeros((2,), jnp.int32), 3, 2.0)
  with pytest.raises(ValueError, match="needs a class-conditional model"):
    guidance.guided_model(lambda x, t, c: x, jnp.zeros((2,), jnp.int32), None, 2.0)
  with pytest.raises(ValueError, match=r"p_uncond must be in \[0, 1\]"):
    guidance.drop_labels(jax.random.PRNGKey(0), jnp.zeros((2,), jnp.int32), 1.5, 3)
  uncond = nnx.eval_shape(lambda: mlp_denoiser.MLPDenoiser(
      mlp_denoiser.MLPDenoiserConfig(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="labels given to an unconditional MLPDenoiser"):
    uncond(jnp.zeros((2, 2)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match=r"expects x of shape \[B, 2\]"):
    uncond(jnp.zeros((2, 3)), jnp.zeros((2,)))
