"""The GPU (Triton) and TPU (Mosaic) kernels lower on a CPU-only host, so breakage shows here.

``jax.jit(f).trace(...).lower(lowering_platforms=(...,))`` runs the Pallas -> Triton IR and
Pallas -> Mosaic MLIR lowerings (block-shape rules, unsupported primitives, dtype rules) without
hardware. Mosaic asks the device kind while lowering, so the TPU cases run under an abstract mesh
whose abstract device is a TPU. What lowering cannot catch: Triton/Mosaic *compilation* (register
pressure, VMEM limits) and numerics on the real chip.
"""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from genfm.kernels import flash_attention as fa
from genfm.kernels import flash_attention_kernels as fak
from genfm.kernels import pallas_compat
from genfm.kernels import rms_norm

TRITON_CALL = "__gpu$xla.gpu.triton"
MOSAIC_CALL = "tpu_custom_call"


def _tpu_context():
  """An abstract mesh on a TPU v5e device, so Mosaic lowering knows its target chip."""
  device_cls = getattr(jax.sharding, "AbstractDevice", None)
  if device_cls is None:
    pytest.fail("jax.sharding.AbstractDevice is missing: update _tpu_context for this jax.")
  device = device_cls(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


def _lower(fn, args, backend):
  platform = {"gpu": "cuda", "tpu": "tpu"}[backend]
  ctx = _tpu_context() if backend == "tpu" else contextlib.nullcontext()
  with ctx:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


# (T, S, N, K, H, causal, segments, dtype): the bench shape family, plus uneven lengths with
# segment ids and a head dim (80) that the GPU path pads to 128.
CASES = [(256, 256, 4, 2, 128, True, False, jnp.bfloat16),
         (200, 136, 4, 4, 64, False, True, jnp.float32),
         (100, 100, 2, 1, 80, True, True, jnp.bfloat16)]


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("t,s,n,k,h,causal,segments,dtype", CASES)
def test_flash_forward_and_backward_lower(backend, t, s, n, k, h, causal, segments, dtype):
  spec = jax.ShapeDtypeStruct
  args = (spec((2, t, n, h), dtype), spec((2, s, k, h), dtype), spec((2, s, k, h), dtype),
          spec((2, t), jnp.int32) if segments else None,
          spec((2, s), jnp.int32) if segments else None)

  def fwd(q, k_, v, qs, ks):
    return fa.flash_attention(q, k_, v, is_causal=causal, q_segment_ids=qs, kv_segment_ids=ks,
                              backend=backend)

  def grads(q, k_, v, qs, ks):
    def loss(*a):
      return jnp.sum(fwd(*a, qs, ks).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k_, v)

  call = TRITON_CALL if backend == "gpu" else MOSAIC_CALL
  assert _lower(fwd, args, backend).count(call) == 1  # the forward kernel
  text = _lower(grads, args, backend)
  assert text.count(call) == 3  # forward + dQ + dK/dV kernels
  # jax 0.10 lowers a GPU pallas_call without Triton params through Mosaic GPU (Hopper only).
  assert "mosaic_gpu" not in text


def test_gpu_layout_on_tpu_is_rejected_by_the_tiling_rule():
  """The TPU check is not vacuous: BTNH blocks (a squeezed head dim) break the (8, 128) rule."""
  cfg = fak.KernelConfig(backend="tpu", scale=1.0, is_causal=False, has_segments=False,
                         seq_q=128, seq_k=128, block_q=128, block_k=128, block_q_dkv=128,
                         block_k_dkv=128, groups=1, tpu_layout=False)
  q = jax.ShapeDtypeStruct((1, 128, 4, 128), jnp.float32)
  with pytest.raises(Exception, match="divisible by 8 and 128"):
    _lower(lambda q, k, v: fak.forward(q, k, v, None, None, cfg)[0], (q, q, q), "tpu")


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_rms_norm_forward_and_backward_lower(backend):
  x = jax.ShapeDtypeStruct((4, 100, 256), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((256,), jnp.bfloat16)

  def grads(x_, w_):
    def loss(a, b):
      return jnp.sum(rms_norm.rms_norm(a, b, backend=backend).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1))(x_, w_)

  call = TRITON_CALL if backend == "gpu" else MOSAIC_CALL
  assert _lower(grads, (x, w), backend).count(call) == 2  # forward + backward kernels


def test_compiler_params_pick_triton_and_mosaic():
  gpu = pallas_compat.compiler_params("gpu", num_dims=3, num_warps=8, num_stages=3)
  assert type(gpu) is pallas_compat.triton_params_class()
  assert (gpu.num_warps, gpu.num_stages) == (8, 3)
  tpu = pallas_compat.compiler_params("tpu", num_dims=3)
  assert type(tpu) is pallas_compat.tpu_params_class()
  assert len(tpu.dimension_semantics) == 3
  assert pallas_compat.compiler_params("interpret", num_dims=3) is None
  with pytest.raises(ValueError, match="backend must be one of"):
    pallas_compat.compiler_params("cuda", num_dims=1)
  assert pallas_compat.default_backend() == "interpret"  # this suite runs on CPU


def test_kernels_index_refs_instead_of_removed_load_store():
  """pl.load/pl.store (and triton's load/store) are gone or going on newer jax: index refs."""
  import inspect  # pylint: disable=g-import-not-at-top
  for module in (fak, rms_norm):
    source = inspect.getsource(module)
    for banned in ("pl.load(", "pl.store(", "plgpu.load(", "plgpu.store(", "pl.swap("):
      assert banned not in source, (module.__name__, banned)
