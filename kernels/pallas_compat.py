"""Pallas portability shims: one place that knows how jax versions and backends differ.

The kernels in this folder (FlashAttention-2, arXiv 2307.08691; fused RMSNorm, arXiv 1910.07467)
are written once and launched on three targets:

* ``"gpu"``: Triton-lowered ``pallas_call``. On jax 0.10 a GPU ``pallas_call`` without compiler
  params lowers through Mosaic GPU (Hopper-only, warpgroup semantics); passing Triton compiler
  params selects the portable Triton lowering explicitly.
* ``"tpu"``: Mosaic TPU. Block shapes must have their last two dims divisible by (8, 128) or
  equal to the full array dims. Interpret mode does not check this; lowering for "tpu" does
  (``tests/kernels/test_kernels_lowering.py`` lowers every kernel for TPU on a CPU host).
* ``"interpret"``: the Pallas interpreter on CPU, the default when no accelerator is present.

Version differences handled by feature detection (never by parsing version strings):
``pl.load``/``pl.store`` are gone on newer jax, so kernels only index refs (``ref[...]``,
``ref[pl.ds(start, size), :]``), which every version supports; the compiler-params classes were
renamed (``TritonCompilerParams`` -> ``triton.CompilerParams``, ``TPUCompilerParams`` ->
``tpu.CompilerParams``), so ``compiler_params`` looks both names up.
"""

from __future__ import annotations

from typing import Any

import jax

BACKENDS = ("interpret", "gpu", "tpu")


def _first_attr(module: Any, names: tuple[str, ...]) -> Any:
  for name in names:
    cls = getattr(module, name, None)
    if cls is not None:
      return cls
  return None


def triton_params_class() -> Any:
  """The Triton compiler-params class of this jax, or None when it has none."""
  try:
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  except ImportError:
    plgpu = None
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  cls = _first_attr(plgpu, ("CompilerParams",)) if plgpu is not None else None
  return cls or _first_attr(pl, ("TritonCompilerParams",))


def tpu_params_class() -> Any:
  """The Mosaic TPU compiler-params class of this jax, or None when it has none."""
  try:
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  except ImportError:
    pltpu = None
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  cls = _first_attr(pltpu, ("CompilerParams", "TPUCompilerParams")) if pltpu else None
  return cls or _first_attr(pl, ("TPUCompilerParams",))


def default_backend() -> str:
  """Maps ``jax.default_backend()`` to a kernel backend: CPU runs the interpreter."""
  platform = jax.default_backend()
  if platform in ("gpu", "cuda", "rocm"):
    return "gpu"
  if platform == "tpu":
    return "tpu"
  return "interpret"


def check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")


def compiler_params(backend: str, *, num_dims: int, num_warps: int = 4,
                    num_stages: int = 2) -> Any:
  """Compiler params for ``pallas_call`` on ``backend`` (None in interpret mode).

  Args:
    backend: one of ``BACKENDS``.
    num_dims: number of grid dimensions (TPU wants one semantics entry per dim).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """
  check_backend(backend)
  if backend == "interpret":
    return None
  if backend == "gpu":
    cls = triton_params_class()
    if cls is None:
      raise ValueError("This jax has no Triton compiler params; the GPU Pallas path needs "
                       "jax.experimental.pallas.triton.")
    return cls(num_warps=num_warps, num_stages=num_stages)
  cls = tpu_params_class()
  if cls is None:
    raise ValueError("This jax has no Mosaic TPU compiler params (jax.experimental.pallas.tpu).")
  # Every grid axis of our kernels writes a disjoint output block, so all are "parallel"
  # (megacore TPUs may split any of them across cores).
  return cls(dimension_semantics=("parallel",) * num_dims)

