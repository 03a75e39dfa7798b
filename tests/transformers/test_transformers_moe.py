"""Tests for genfm.transformers.moe against a per-token loop, closed-form losses, 4 CPU devices."""

import functools
import math
import os
import subprocess
import sys
import textwrap

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.transformers import ffn, moe

# Keys use the "rbg" generator: compiling threefry on CPU (seconds for every new shape) was most
# of this file's run time; the tests need fixed seeds, not a particular generator.
KEY = functools.partial(jax.random.key, impl="rbg")


B, T, D, F = 2, 6, 8, 12


def _gelu(h):
  return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))


def _loop_reference(layer, x_BTD):
  """Token-by-token MoE: route, fill expert slots in priority order, sum kept gated outputs."""
  x = np.asarray(x_BTD, np.float64).reshape(-1, D)
  M, E, k = x.shape[0], layer.num_experts, layer.top_k
  C = math.ceil(layer.capacity_factor * M * k / E)
  Wr = np.asarray(layer.router.kernel[...], np.float64)
  up, down = np.asarray(layer.w_up[...], np.float64), np.asarray(layer.w_down[...], np.float64)
  gate_w = None if layer.w_gate is None else np.asarray(layer.w_gate[...], np.float64)

  def expert(e, v):
    if gate_w is None:
      return _gelu(v @ up[e]) @ down[e]
    a = v @ gate_w[e]
    return (a / (1 + np.exp(-a)) * (v @ up[e])) @ down[e]

  logits = x @ Wr
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  choices = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  y, used, dropped = np.zeros_like(x), np.zeros(E, int), 0
  for rank in range(k):  # all first choices, then all second choices
    for m in range(M):
      e = choices[m, rank]
      g = probs[m, e] / probs[m, choices[m]].sum() if layer.renormalize else probs[m, e]
      if used[e] < C:
        used[e] += 1
        y[m] += g * expert(e, x[m])
      else:
        dropped += 1
  return y.reshape(x_BTD.shape), dropped / (M * k)


@pytest.mark.parametrize("kind,k,cf", [("gelu", 1, 0.5), ("swiglu", 2, 0.75), ("gelu", 2, 4.0)])
def test_moe_equals_per_token_loop(kind, k, cf):
  layer = moe.MoE(D, F, 4, top_k=k, capacity_factor=cf, ffn=kind, rngs=nnx.Rngs(KEY(0)))
  # A larger router so that the routing is uneven and some experts overflow.
  layer.router.kernel[...] = 3.0 * layer.router.kernel[...]
  x = jax.random.normal(KEY(1), (B, T, D))
  y, aux = layer(x)
  want, dropped = _loop_reference(layer, x)
  np.testing.assert_allclose(y, want, atol=1e-5)
  np.testing.assert_allclose(aux["dropped_fraction"], dropped, atol=1e-6)
  if cf < 1:
    assert dropped > 0  # the capacity path is exercised
  else:
    assert dropped == 0


def test_single_expert_equals_dense_ffn():
  layer = moe.MoE(D, F, 1, top_k=1, capacity_factor=1.0, ffn="swiglu", rngs=nnx.Rngs(KEY(0)))
  dense = ffn.SwiGLU(D, F, rngs=nnx.Rngs(KEY(1)))
  dense.gate.kernel[...] = layer.w_gate[...][0]
  dense.up.kernel[...] = layer.w_up[...][0]
  dense.down.kernel[...] = layer.w_down[...][0]
  x = jax.random.normal(KEY(2), (B, T, D))
  np.testing.assert_allclose(layer(x)[0], dense(x), atol=1e-5)


def test_load_balancing_loss_convention():
  E, M = 4, 8
  big = 30.0  # softmax(±30) is one-hot to fp32 precision
  balanced = big * jax.nn.one_hot(jnp.arange(M) % E, E)
  collapsed = big * jax.nn.one_hot(jnp.zeros(M, jnp.int32), E)
  for k in (1, 2):
    _, _, aux = moe.route(balanced, top_k=k, capacity=M)
    np.testing.assert_allclose(aux["load_balance"], 1.0, atol=1e-6)
  _, _, aux = moe.route(collapsed, top_k=1, capacity=M)
  np.testing.assert_allclose(aux["load_balance"], E, atol=1e-5)
  # Uniform probabilities are balanced in P whatever f is: E · Σ f_i / E = 1.
  probs = jnp.full((M, E), 1.0 / E)
  np.testing.assert_allclose(moe.load_balancing_loss(probs, jnp.zeros((M, 1), jnp.int32)), 1.0)


def test_router_z_loss_formula():
  logits = jax.random.normal(KEY(3), (10, 4)) * 3
  lg = np.asarray(logits, np.float64)
  want = np.mean(np.log(np.exp(lg).sum(-1)) ** 2)
  np.testing.assert_allclose(moe.router_z_loss(logits), want, rtol=1e-5)
  np.testing.assert_allclose(moe.router_z_loss(jnp.zeros((3, 8))), math.log(8) ** 2, rtol=1e-6)


def test_shapes_param_count_and_errors():
  E = 4
  params = jax.eval_shape(
      lambda: nnx.state(moe.MoE(D, F, E, ffn="swiglu", rngs=nnx.Rngs(KEY(0))), nnx.Param))
  assert sum(p.size for p in jax.tree.leaves(params)) == D * E + E * 3 * D * F
  out, aux = jax.eval_shape(lambda x: moe.MoE(D, F, E, rngs=nnx.Rngs(KEY(0)))(x),
                            jax.ShapeDtypeStruct((B, T, D), jnp.float32))
  assert out.shape == (B, T, D) and aux["load_balance"].shape == ()
  assert moe.capacity(12, 4, 2, 1.25) == 8
  with pytest.raises(ValueError, match="top_k must be in 1..4"):
    moe.MoE(D, F, 4, top_k=5, rngs=nnx.Rngs(KEY(0)))
  with pytest.raises(ValueError, match="capacity_factor must be > 0"):
    moe.MoE(D, F, 4, capacity_factor=0.0, rngs=nnx.Rngs(KEY(0)))
  with pytest.raises(ValueError, match="valid choices"):
    moe.MoE(D, F, 4, ffn="relu", rngs=nnx.Rngs(KEY(0)))


_SHARDED = textwrap.dedent("""
    import functools
    import jax, numpy as np
    from flax import nnx
    from genfm.transformers import moe
    KEY = functools.partial(jax.random.key, impl="rbg")
    assert jax.device_count() == 4, jax.devices()
    layer = moe.MoE(8, 12, 4, top_k=2, rngs=nnx.Rngs(KEY(0)))
    x = jax.random.normal(KEY(1), (2, 6, 8))
    want = layer(x)[0]
    mesh = jax.make_mesh((4,), ("expert",))
    moe.shard_experts(layer, mesh)
    spec = layer.w_up[...].sharding.spec
    assert tuple(spec)[:1] == ("expert",), spec
    assert len(layer.w_up[...].addressable_shards) == 4
    got = nnx.jit(lambda m, x: m(x)[0])(layer, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    print("OK")
""")


def test_experts_shard_along_a_mesh_axis():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
