"""Flash attention bench: Pallas vs XLA vs cuDNN TFLOP/s and memory (FlashAttention-2, 2307.08691).

``run(emit)`` calls ``emit(dict)`` once per measurement (the launcher prints each as a JSON line;
``python -m genfm.experiments.bench flash_attention`` once registered there). On a GPU it sweeps
head dim 64/128, T = S = 1k..16k, causal and not, bf16, with B·T = 16k tokens and N·H = 2048 (the
FlashAttention-2 paper's setup, section 4.1), for forward and forward+backward:

    forward FLOPs = 4·B·N·T·S·H (half when causal); backward = 2.5 × forward

so fwd+bwd counts 3.5 × forward. Memory is XLA's compiled temp allocation of the fwd+bwd step
(``memory_analysis().temp_size_in_bytes``), side by side with the XLA reference: flash keeps it
linear in T, the reference materialises [B, N, T, S] logits. On CPU it runs one tiny
interpret-mode case, labelled ``"note": "interpret mode, not a speed figure"``.

Measured on an H200 (jax 0.11.2, default tiles): H 128, T 16k: forward 299 TFLOP/s = 0.51x cuDNN,
fwd+bwd 209 = 0.37x (WORKSPACE.md, *GPU benchmarks*). ``tune`` sweeps tiles, warps and
pipelining stages for the next GPU session (``experiments/gpu_check.sh OUT tune``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from genfm.kernels import flash_attention as fa
from genfm.kernels import pallas_compat

TOKENS = 16384  # B·T per step
WIDTH = 2048  # N·H


def attention_flops(b: int, n: int, t: int, s: int, h: int, causal: bool,
                    backward: bool = False) -> float:
  """4·B·N·T·S·H forward (half if causal); fwd+bwd is 3.5× that (backward = 2.5× forward)."""
  fwd = 4.0 * b * n * t * s * h / (2.0 if causal else 1.0)
  return fwd * 3.5 if backward else fwd


def _median_seconds(fn: Callable[[], Any], iters: int, warmup: int = 1) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _temp_bytes(compiled) -> int | None:
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None


def _options_record(options: dict) -> dict:
  """`flash_attention` keyword arguments as JSON (BlockSizes as a dict)."""
  return {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
          for k, v in options.items()}


def _error_record(impl: str, t: int, h: int, causal: bool, error: Exception, **extra) -> dict:
  """A bench row for a setting that failed (e.g. XLA out of memory, too much shared memory)."""
  return {"name": "flash_attention", "impl": impl, "T": t, "H": h, "causal": causal, **extra,
          "error": f"{type(error).__name__}: {str(error)[:300]}"}


def measure(impl: str, b: int, t: int, n: int, h: int, causal: bool, *, dtype=jnp.bfloat16,
            iters: int = 10, pallas_options: dict | None = None) -> list[dict]:
  """Forward and fwd+bwd records for one implementation and shape (K = N, T = S).

  ``pallas_options``: keyword arguments of ``flash_attention`` (``block_sizes``, ``num_warps``,
  ``num_stages``) for ``impl="pallas"``; they are recorded in each row.
  """
  if pallas_options and impl != "pallas":
    raise ValueError(f"pallas_options apply to impl='pallas' only, got impl={impl!r}.")
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (b, t, n, h), dtype)
  k = jax.random.normal(kk, (b, t, n, h), dtype)
  v = jax.random.normal(kv, (b, t, n, h), dtype)

  def attend(q_, k_, v_):
    if pallas_options:
      return fa.flash_attention(q_, k_, v_, is_causal=causal, **pallas_options)
    return fa.dot_product_attention(q_, k_, v_, is_causal=causal, implementation=impl)

  def loss(q_, k_, v_):
    return jnp.sum(attend(q_, k_, v_).astype(jnp.float32))

  fwd = jax.jit(attend).lower(q, k, v).compile()
  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
  base = {"name": "flash_attention", "impl": impl, "B": b, "T": t, "S": t, "N": n, "K": n,
          "H": h, "causal": causal, "dtype": jnp.dtype(dtype).name,
          "device": jax.devices()[0].device_kind, "backend": jax.default_backend()}
  if pallas_options:
    base["pallas_options"] = _options_record(pallas_options)
  records = []
  for label, fn, backward in (("fwd", fwd, False), ("fwd+bwd", step, True)):
    seconds = _median_seconds(lambda fn=fn: fn(q, k, v), iters)
    flops = attention_flops(b, n, t, t, h, causal, backward)
    records.append({**base, "pass": label, "seconds": seconds, "flops": flops,
                    "tflops_per_sec": flops / seconds / 1e12,
                    "temp_bytes": _temp_bytes(fn)})
  return records


def run(emit: Callable[[dict], None], *, head_dims=(64, 128),
        seq_lens=(1024, 2048, 4096, 8192, 16384), impls=("pallas", "xla", "cudnn")) -> None:
  """Emits one dict per (impl, head dim, T, causal, pass); errors are emitted, not raised."""
  if pallas_compat.default_backend() == "interpret":
    notes = {"pallas": "interpret mode, not a speed figure",
             "xla": "CPU reference, not a speed figure"}
    for impl, note in notes.items():
      for record in measure(impl, 1, 128, 2, 64, True, iters=2):
        emit({**record, "note": note})
    emit({"name": "flash_attention", "impl": "cudnn", "skipped": "needs a CUDA GPU",
          "backend": jax.default_backend()})
    return
  for h in head_dims:
    for t in seq_lens:
      for causal in (False, True):
        for impl in impls:
          b, n = max(1, TOKENS // t), WIDTH // h
          try:
            for record in measure(impl, b, t, n, h, causal):
              emit(record)
          except Exception as e:  # pylint: disable=broad-except  # e.g. XLA OOM at 16k
            emit(_error_record(impl, t, h, causal, e, B=b, N=n))


# Tile / launch settings for `tune` (the defaults of `fa.default_blocks("gpu")` are the first):
# (block_q, block_k) of the forward and dQ kernels, (block_q_dkv, block_k_dkv) of dK/dV, warps,
# software-pipelining stages. Untuned defaults measured 0.51x cuDNN forward on an H200.
TUNE_CONFIGS = tuple(
    (fa.BlockSizes(bq, bk, bq2, bk2), warps, stages)
    for bq, bk in ((128, 64), (128, 128), (64, 64))
    for bq2, bk2 in ((64, 64), (64, 128))
    for warps in (4, 8)
    for stages in (2, 3))


def tune(emit: Callable[[dict], None], *, t: int = 16384, h: int = 128, causal: bool = False,
         configs=TUNE_CONFIGS, iters: int = 10, b: int | None = None,
         n: int | None = None) -> None:
  """Pallas fwd and fwd+bwd TFLOP/s per tile/launch setting at one shape (by default the
  bench's B·T = 16k tokens and N·H = 2048; `b`, `n` override them).

  A sweep for a lent GPU: a failing setting (e.g. too much shared memory) is emitted as an
  error row, not raised.
  """
  b = max(1, TOKENS // t) if b is None else b
  n = WIDTH // h if n is None else n
  for blocks, warps, stages in configs:
    options = {"block_sizes": blocks, "num_warps": warps, "num_stages": stages}
    try:
      for record in measure("pallas", b, t, n, h, causal, iters=iters, pallas_options=options):
        emit(record)
    except Exception as e:  # pylint: disable=broad-except
      emit(_error_record("pallas", t, h, causal, e, pallas_options=_options_record(options)))


if __name__ == "__main__":
  import json  # pylint: disable=g-import-not-at-top
  run(lambda record: print(json.dumps(record), flush=True))
