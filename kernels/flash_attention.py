"""Flash attention with a ``jax.nn.dot_product_attention``-style API (FlashAttention-2, 2307.08691).

``dot_product_attention(query, key, value, *, scale, is_causal, segment_ids, implementation)``:

* layout of ``jax.nn.dot_product_attention``: query [B, T, N, H], key/value [B, S, K, H];
  K < N is grouped-query / multi-query attention (query head n reads key/value head n // G).
* ``implementation``: ``"pallas"`` (this folder's kernels; Triton on GPU, Mosaic on TPU, the
  Pallas interpreter on CPU), ``"xla"`` (jax's reference), ``"cudnn"`` (jax's cuDNN fused
  attention, CUDA GPUs only) or ``None`` = ``"pallas"``. An unsupported choice, backend or shape
  raises ``ValueError``; nothing falls back silently.
* ``segment_ids``: int [B, T] when T == S, or a pair (q_ids [B, T], kv_ids [B, S]); query t sees
  key s only when their ids match. A query that sees no key returns zeros (all implementations).

The Pallas path pads T and S up to whole tiles (padded keys are masked, padded queries are
dropped) and, on GPU, the head dim up to a power of two >= 16 (Triton's ``dot`` needs it); the
kernels themselves live in ``flash_attention_kernels.py`` behind one ``jax.custom_vjp``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from genfm.kernels import attention_reference
from genfm.kernels import flash_attention_kernels as fak
from genfm.kernels import pallas_compat

IMPLEMENTATIONS = ("pallas", "xla", "cudnn", None)
_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (rows). ``None`` fields take the backend default from ``default_blocks``."""
  block_q: int | None = None
  block_k: int | None = None
  block_q_dkv: int | None = None
  block_k_dkv: int | None = None


def default_blocks(backend: str) -> BlockSizes:
  """Untuned starting points: TPU needs key tiles of 128 lanes; Triton likes 64-128 rows."""
  if backend == "tpu":
    return BlockSizes(128, 128, 128, 128)
  if backend == "gpu":
    return BlockSizes(128, 64, 64, 64)
  return BlockSizes(64, 64, 64, 64)


def _clamp(block: int, length: int, backend: str, lane: bool) -> int:
  """Shrinks a tile for short sequences while keeping the backend's tiling rules."""
  if block <= 0:
    raise ValueError(f"block sizes must be positive, got {block}.")
  if backend == "gpu":  # Triton: power-of-two tiles, dot operands >= 16 rows
    if block & (block - 1):
      raise ValueError(f"GPU (Triton) block sizes must be powers of two, got {block}.")
    return min(block, max(16, 1 << (length - 1).bit_length()))
  tile = 128 if (backend == "tpu" and lane) else 8
  if backend == "tpu" and block % tile:
    raise ValueError(f"TPU block size {block} must be a multiple of {tile} "
                     "(key tiles are lanes: 128; query tiles are sublanes: 8).")
  return min(block, -(-length // tile) * tile)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, qseg, kseg, cfg: fak.KernelConfig):
  return fak.forward(q, k, v, qseg, kseg, cfg)[0]


def _flash_fwd(q, k, v, qseg, kseg, cfg):
  out, lse = fak.forward(q, k, v, qseg, kseg, cfg)
  return out, (q, k, v, qseg, kseg, out, lse)


def _flash_bwd(cfg, residuals, do):
  q, k, v, qseg, kseg, out, lse = residuals
  # D_i = rowsum(dO ∘ O), Algorithm 2 of 2307.08691 (a cheap elementwise XLA fusion).
  delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
  delta = delta[..., None] if cfg.tpu_layout else jnp.swapaxes(delta, 1, 2)  # like lse
  dq, dk, dv = fak.backward(q, k, v, qseg, kseg, do, lse, delta, cfg)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- Pallas entry


def flash_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                    scale: float | None = None, is_causal: bool = False,
                    q_segment_ids: jax.Array | None = None,
                    kv_segment_ids: jax.Array | None = None,
                    block_sizes: BlockSizes | None = None,
                    backend: str | None = None, tpu_layout: bool | None = None,
                    num_warps: int | None = None, num_stages: int = 2) -> jax.Array:
  """Pallas flash attention; query [B, T, N, H], key/value [B, S, K, H] -> [B, T, N, H].

  Args:
    query, key, value: as in ``dot_product_attention`` (already validated there).
    scale: logit scale, 1/sqrt(H) when None.
    is_causal: top-left aligned causal mask.
    q_segment_ids, kv_segment_ids: int [B, T] and [B, S], both or neither.
    block_sizes: tile sizes; missing fields take ``default_blocks(backend)``.
    backend: "interpret", "gpu" or "tpu"; None picks from ``jax.default_backend()``. Passing
      "gpu"/"tpu" on a CPU host is how the lowering tests build those kernels without hardware.
    tpu_layout: BNTH arrays and [.., 1] statistics; None means ``backend == "tpu"``. True with
      the interpreter runs the TPU-structured kernels on CPU (how the tests check them).
    num_warps, num_stages: Triton launch parameters (GPU only).
  """
  backend = backend or pallas_compat.default_backend()
  pallas_compat.check_backend(backend)
  b, t, n, h = query.shape
  s, kh = key.shape[1], key.shape[2]
  scale = 1.0 / math.sqrt(h) if scale is None else float(scale)
  blocks = dataclasses.replace(default_blocks(backend), **{
      f.name: getattr(block_sizes, f.name) for f in dataclasses.fields(BlockSizes)
      if block_sizes is not None and getattr(block_sizes, f.name) is not None})
  bq = _clamp(blocks.block_q, t, backend, lane=False)
  bk = _clamp(blocks.block_k, s, backend, lane=True)
  bq_dkv = _clamp(blocks.block_q_dkv, t, backend, lane=False)
  bk_dkv = _clamp(blocks.block_k_dkv, s, backend, lane=True)
  t_pad = _round_up(t, math.lcm(bq, bq_dkv))
  s_pad = _round_up(s, math.lcm(bk, bk_dkv))
  h_pad = max(16, 1 << (h - 1).bit_length()) if backend == "gpu" else h
  has_segments = q_segment_ids is not None
  cfg = fak.KernelConfig(
      backend=backend, scale=scale, is_causal=bool(is_causal), has_segments=has_segments,
      seq_q=t, seq_k=s, block_q=bq, block_k=bk, block_q_dkv=bq_dkv, block_k_dkv=bk_dkv,
      groups=n // kh, tpu_layout=backend == "tpu" if tpu_layout is None else bool(tpu_layout),
      num_warps=num_warps or (4 if h_pad <= 64 else 8), num_stages=num_stages)

  # Zero padding: zero head-dim columns leave q·k unchanged; padded keys are masked in-kernel.
  q = jnp.pad(query, ((0, 0), (0, t_pad - t), (0, 0), (0, h_pad - h)))
  k = jnp.pad(key, ((0, 0), (0, s_pad - s), (0, 0), (0, h_pad - h)))
  v = jnp.pad(value, ((0, 0), (0, s_pad - s), (0, 0), (0, h_pad - h)))
  qseg = kseg = None
  if has_segments:
    qseg = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, t_pad - t)))
    kseg = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, s_pad - s)))
  if cfg.tpu_layout:  # [B, T, N, H] -> [B, N, T, H]: (rows, H) are the tiled last two dims
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    if has_segments:
      qseg, kseg = qseg[:, :, None], kseg[:, None, :]  # [B, T, 1], [B, 1, S]
  out = _flash(q, k, v, qseg, kseg, cfg)
  if cfg.tpu_layout:
    out = jnp.swapaxes(out, 1, 2)
  return out[:, :t, :, :h]


# ----------------------------------------------------------------------------- public API


def _check_inputs(query, key, value, segment_ids) -> tuple[Any, Any]:
  """Validates shapes/dtypes; returns (q_segment_ids, kv_segment_ids) or (None, None)."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if getattr(x, "ndim", None) != 4:
      raise ValueError(f"{name} must be rank 4 ([B, T, N, H] for query, [B, S, K, H] for "
                       f"key/value), got shape {getattr(x, 'shape', None)}.")
  b, t, n, h = query.shape
  if key.shape != value.shape:
    raise ValueError(f"key and value must have the same shape [B, S, K, H], got {key.shape} "
                     f"and {value.shape}.")
  if key.shape[0] != b or key.shape[3] != h:
    raise ValueError(f"key/value [B, S, K, H] = {key.shape} must share B={b} and H={h} with "
                     f"query {query.shape}.")
  kh = key.shape[2]
  if n % kh:
    raise ValueError(f"query heads N={n} must be a multiple of key/value heads K={kh} "
                     "(GQA/MQA groups N // K query heads per KV head).")
  if not query.dtype == key.dtype == value.dtype:
    raise ValueError(f"query/key/value dtypes must match, got {query.dtype}, {key.dtype}, "
                     f"{value.dtype}.")
  if query.dtype not in _FLOAT_DTYPES:
    raise ValueError(f"dtype must be one of float32/bfloat16/float16, got {query.dtype}.")
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("segment_ids must be an int [B, T] array or a pair "
                       f"(q_ids [B, T], kv_ids [B, S]); got a sequence of {len(segment_ids)}.")
    q_ids, kv_ids = segment_ids
  else:
    if t != key.shape[1]:
      raise ValueError(f"a single segment_ids array needs T == S (got T={t}, S={key.shape[1]});"
                       " pass a pair (q_ids [B, T], kv_ids [B, S]).")
    q_ids = kv_ids = segment_ids
  for name, ids, want in (("q", q_ids, (b, t)), ("kv", kv_ids, (b, key.shape[1]))):
    if tuple(getattr(ids, "shape", ())) != want:
      raise ValueError(f"{name} segment ids must have shape {want}, got "
                       f"{getattr(ids, 'shape', None)}.")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"{name} segment ids must be integers, got {ids.dtype}.")
  return q_ids, kv_ids


def _xla_attention(query, key, value, scale, is_causal, q_ids, kv_ids) -> jax.Array:
  """jax.nn's XLA attention; rows with no visible key are zeroed (jax.nn returns mean(V))."""
  t, s = query.shape[1], key.shape[1]
  mask_BTS = attention_reference.attention_mask(
      t, s, is_causal=False, q_segment_ids=q_ids, kv_segment_ids=kv_ids)
  mask = None if mask_BTS is None else mask_BTS[:, None]  # [B, 1, T, S]
  out = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale,
                                     is_causal=is_causal, implementation="xla")
  full = attention_reference.attention_mask(t, s, is_causal=is_causal, q_segment_ids=q_ids,
                                            kv_segment_ids=kv_ids)
  if full is None:
    return out
  seen_BT = jnp.broadcast_to(jnp.any(full, axis=-1), (query.shape[0], t))
  return jnp.where(seen_BT[:, :, None, None], out, 0).astype(out.dtype)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          scale: float | None = None, is_causal: bool = False,
                          segment_ids: Any = None,
                          implementation: str | None = None) -> jax.Array:
  """Scaled dot-product attention, [B, T, N, H] x [B, S, K, H]^2 -> [B, T, N, H].

  Args:
    query: [B, T, N, H].
    key: [B, S, K, H], N % K == 0.
    value: [B, S, K, H].
    scale: logit scale; 1/sqrt(H) when None.
    is_causal: query t sees keys s <= t (top-left aligned, as in jax.nn).
    segment_ids: None, int [B, T] (T == S), or a pair (q_ids [B, T], kv_ids [B, S]).
    implementation: "pallas", "xla", "cudnn", or None (= "pallas"; interpreter on CPU).

  Returns:
    [B, T, N, H] in query's dtype.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}.")
  q_ids, kv_ids = _check_inputs(query, key, value, segment_ids)
  if implementation in (None, "pallas"):
    return flash_attention(query, key, value, scale=scale, is_causal=is_causal,
                           q_segment_ids=q_ids, kv_segment_ids=kv_ids)
  if implementation == "xla":
    return _xla_attention(query, key, value, scale, is_causal, q_ids, kv_ids)
  # cuDNN: jax's fused kernel; state its limits here instead of failing deep inside XLA.
  if pallas_compat.default_backend() != "gpu":
    raise ValueError("implementation='cudnn' needs a CUDA GPU; this process runs on "
                     f"{jax.default_backend()!r}. Use 'pallas' or 'xla'.")
  if q_ids is not None:
    raise ValueError("implementation='cudnn' does not take segment_ids here; use 'pallas' or "
                     "'xla'.")
  if query.dtype == jnp.float32:
    raise ValueError("implementation='cudnn' needs bfloat16 or float16 inputs, got float32.")
  return jax.nn.dot_product_attention(query, key, value, scale=scale, is_causal=is_causal,
                                      implementation="cudnn")
