"""FlashAttention-2 Pallas kernels: forward, dK/dV and dQ (arXiv 2307.08691, Algorithms 1-2).

Grids: the forward and dQ kernels run one program per (batch, query head, query tile) and loop
over key tiles; the dK/dV kernel runs one per (batch, KV head, key tile) and loops over the G
query heads of that KV head and their query tiles, so GQA/MQA gradients are summed in-kernel.
The public wrapper in ``flash_attention.py`` pads, lays out and differentiates them. Each body is shared by the three
backends of ``pallas_compat``; only the BlockSpecs differ:

* ``tpu_layout=False`` (GPU/Triton and the default interpreter): arrays stay in the
  ``jax.nn.dot_product_attention`` layout q/o [B, T, N, H], k/v [B, S, K, H] (no transposes);
  per-row statistics (log-sum-exp, delta) are [B, N, T] and are 1-D [bq] inside the kernel.
* ``tpu_layout=True`` (Mosaic TPU): q/o [B, N, T, H], k/v [B, K, S, H], statistics [B, N, T, 1]
  so that every block's last two dims obey the (8, 128)-or-full rule and the statistics stay
  [bq, 1] columns inside the kernel (TPU vregs have no 1-D layout worth using).

Numerics: logits, the running max m, the running sum l and the accumulator are fp32; the
softmax runs in base 2 (``exp2``, logits pre-multiplied by scale·log2 e), which is what GPUs
evaluate natively. Masked logits are set to -1e30, never -inf: -inf - -inf is NaN in the
online-softmax rescale exp2(m_old - m_new) of a row whose first tiles are all masked.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from genfm.kernels import pallas_compat

MASK_VALUE = -1e30  # finite "minus infinity" for masked logits (see module docstring)
LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static description of one attention call (hashable: it is a custom_vjp nondiff arg).

  Attributes:
    backend: "interpret", "gpu" or "tpu" (see ``pallas_compat``).
    scale: softmax scale on the natural-log logits (1/sqrt(H) by default).
    is_causal: top-left aligned causal mask (query t sees keys s <= t).
    has_segments: whether q/kv segment ids are passed.
    seq_q: true query length T (rows at and past it are padding).
    seq_k: true key length S (keys at and past it are masked).
    block_q: query rows per tile (forward and dQ).
    block_k: key rows per tile (forward and dQ).
    block_q_dkv: query rows per tile in the dK/dV kernel.
    block_k_dkv: key rows per tile in the dK/dV kernel.
    groups: G, query heads per key/value head.
    tpu_layout: BNTH arrays and [.., 1] statistics (see module docstring).
    num_warps: Triton warps per program (GPU only).
    num_stages: Triton pipeline stages (GPU only).
  """
  backend: str
  scale: float
  is_causal: bool
  has_segments: bool
  seq_q: int
  seq_k: int
  block_q: int
  block_k: int
  block_q_dkv: int
  block_k_dkv: int
  groups: int
  tpu_layout: bool
  num_warps: int = 4
  num_stages: int = 2


# ----------------------------------------------------------------------------- in-kernel helpers


def _col(x: jax.Array, cfg: KernelConfig) -> jax.Array:
  """A per-row vector as a [rows, 1] column ([rows] on GPU, already [rows, 1] on TPU)."""
  return x if cfg.tpu_layout else x[:, None]


def _row_reduce(fn, x: jax.Array, cfg: KernelConfig) -> jax.Array:
  return fn(x, axis=1, keepdims=cfg.tpu_layout)


def _key_row(ref, start, size: int, cfg: KernelConfig) -> jax.Array:
  """Key segment ids of one key tile as a [1, size] row."""
  if cfg.tpu_layout:
    return ref[:, pl.ds(start, size)]  # ref [1, S]
  return ref[pl.ds(start, size)][None, :]  # ref [S]


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
  """a·b contracting a's dim contract[0] with b's dim contract[1], accumulated in fp32."""
  # fp32 inputs ask for full fp32 passes (TF32 on GPU / bf16 passes on TPU would miss 1e-5).
  prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         precision=prec, preferred_element_type=jnp.float32)


def _logits(q, k, q_start, k_start, qseg, kseg, masked: bool, cfg: KernelConfig):
  """Base-2 logits s = (q kᵀ)·scale·log2 e of one [bq, bk] tile, masked when asked."""
  s = _dot(q, k, (1, 1)) * (cfg.scale * LOG2E)  # [bq, bk]
  if not masked:
    return s
  bq, bk = s.shape
  k_pos = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  mask = k_pos < cfg.seq_k  # padded keys
  if cfg.is_causal:
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    mask = jnp.logical_and(mask, k_pos <= q_pos)
  if cfg.has_segments:
    mask = jnp.logical_and(mask, qseg == kseg)  # [bq, 1] == [1, bk]
  return jnp.where(mask, s, MASK_VALUE)


def _cdiv(a, b: int):
  return lax.div(a + (b - 1), b)


# ----------------------------------------------------------------------------- tile ranges


def kv_tile_range(i, bq: int, bk: int, cfg: KernelConfig):
  """For query tile i: (n_unmasked, n_visible) key tiles; tiles >= n_visible are skipped.

  Tile j needs no mask when all its keys are real and (causal) its last key <= the tile's first
  query: (j+1)·bk - 1 <= i·bq. It is visible when (causal) its first key <= the last query.
  """
  n_kv = pl.cdiv(cfg.seq_k, bk)
  if cfg.is_causal:
    visible = jnp.minimum(n_kv, _cdiv((i + 1) * bq, bk))  # tiles above the diagonal skipped
    unmasked = jnp.minimum(cfg.seq_k // bk, lax.div(i * bq + 1, bk))
  else:
    visible = n_kv
    unmasked = cfg.seq_k // bk
  if cfg.has_segments:
    unmasked = 0
  return unmasked, visible


def q_tile_range(j, bq: int, bk: int, n_q: int, cfg: KernelConfig):
  """For key tile j: (first, first_unmasked) query tiles; tiles [first_unmasked, n_q) unmasked."""
  if cfg.is_causal:
    first = lax.div(j * bk, bq)  # query tiles whose last query precedes key j·bk are skipped
    first_unmasked = _cdiv((j + 1) * bk - 1, bq)
  else:
    first = 0
    first_unmasked = j * 0
  keys_real = (j + 1) * bk <= cfg.seq_k
  if cfg.has_segments:
    first_unmasked = n_q + j * 0
  first_unmasked = jnp.where(keys_real, first_unmasked, n_q)
  first_unmasked = jnp.clip(first_unmasked, first, n_q)
  return first, first_unmasked


# ----------------------------------------------------------------------------- kernels


def _forward_kernel(*refs, cfg: KernelConfig):
  """One query tile: Algorithm 1 of 2307.08691 (online softmax over key tiles)."""
  if cfg.has_segments:
    q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    qseg_ref = kseg_ref = None
  bq, bk = cfg.block_q, cfg.block_k
  i = pl.program_id(2)
  q = q_ref[...]  # [bq, H]
  qseg = _col(qseg_ref[...], cfg) if cfg.has_segments else None

  def body(j, carry, masked):
    acc, m_prev, l_prev = carry
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]  # [bk, H]
    v = v_ref[pl.ds(start, bk), :]  # [bk, H]
    kseg = _key_row(kseg_ref, start, bk, cfg) if cfg.has_segments else None
    s = _logits(q, k, i * bq, start, qseg, kseg, masked, cfg)  # [bq, bk]
    m_new = jnp.maximum(m_prev, _row_reduce(jnp.max, s, cfg))  # m_i^(j) (Alg. 1)
    alpha = jnp.exp2(m_prev - m_new)  # rescale of the old partial sums
    p = jnp.exp2(s - _col(m_new, cfg))  # P̃_i^(j) = exp(S - m)
    l_new = alpha * l_prev + _row_reduce(jnp.sum, p, cfg)  # ℓ_i^(j)
    acc = _col(alpha, cfg) * acc + _dot(p.astype(v.dtype), v, (1, 0))  # O_i^(j), unnormalized
    return acc, m_new, l_new

  stat_shape = (bq, 1) if cfg.tpu_layout else (bq,)
  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full(stat_shape, MASK_VALUE, jnp.float32),
           jnp.zeros(stat_shape, jnp.float32))
  unmasked, visible = kv_tile_range(i, bq, bk, cfg)
  carry = lax.fori_loop(0, unmasked, functools.partial(body, masked=False), carry)
  acc, m, l = lax.fori_loop(unmasked, visible, functools.partial(body, masked=True), carry)

  # A row whose every key is masked keeps m at MASK_VALUE; it outputs 0 and gets lse = +1e30 so
  # that the backward recomputes P = exp2(s - lse) = 0 for it instead of NaN.
  empty = m <= 0.5 * MASK_VALUE
  l_safe = jnp.where(empty, 1.0, l)
  out = acc / _col(l_safe, cfg)  # O_i = diag(ℓ)^-1 Õ_i (Alg. 1)
  o_ref[...] = jnp.where(_col(empty, cfg), 0.0, out).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -MASK_VALUE, m + jnp.log2(l_safe))  # L_i (base 2)


def _dq_kernel(*refs, cfg: KernelConfig):
  """dQ for one query tile (Algorithm 2 of 2307.08691, the dQ half; P recomputed)."""
  if cfg.has_segments:
    q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    qseg_ref = kseg_ref = None
  bq, bk = cfg.block_q, cfg.block_k
  i = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]  # [bq, H]
  lse, delta = _col(lse_ref[...], cfg), _col(delta_ref[...], cfg)  # [bq, 1]
  qseg = _col(qseg_ref[...], cfg) if cfg.has_segments else None

  def body(j, dq, masked):
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    kseg = _key_row(kseg_ref, start, bk, cfg) if cfg.has_segments else None
    s = _logits(q, k, i * bq, start, qseg, kseg, masked, cfg)
    p = jnp.exp2(s - lse)  # P_ij = exp(S_ij - L_i) (Alg. 2)
    dp = _dot(do, v, (1, 1))  # dP = dO Vᵀ
    ds = p * (dp - delta)  # dS = P ∘ (dP - D)
    return dq + _dot(ds.astype(k.dtype), k, (1, 0))  # dQ += dS K (scale below)

  unmasked, visible = kv_tile_range(i, bq, bk, cfg)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, unmasked, functools.partial(body, masked=False), dq)
  dq = lax.fori_loop(unmasked, visible, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: KernelConfig):
  """dK, dV for one key tile of one KV head (Algorithm 2 of 2307.08691; P recomputed).

  The G query heads that share this KV head are visited in-kernel and accumulate into the same
  fp32 dK/dV tiles, so GQA/MQA needs no per-query-head dK/dV buffers. Query-side refs hold the
  G heads: q/dO [T, G, H] and stats [G, T] (TPU: [G, T, H] and [G, T, 1]).
  """
  if cfg.has_segments:
    (q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref,
     dk_ref, dv_ref) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    qseg_ref = kseg_ref = None
  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]  # [bk, H]
  n_q = q_ref.shape[1 if cfg.tpu_layout else 0] // bq
  kseg = kseg_ref[...] if cfg.has_segments else None
  if kseg is not None and not cfg.tpu_layout:
    kseg = kseg[None, :]  # [1, bk]

  def rows(ref, g, sl):  # [bq, H] of query head g
    return ref[g, sl, :] if cfg.tpu_layout else ref[sl, g, :]

  def stat(ref, g, sl):  # [bq, 1] statistic of query head g
    return ref[g, sl, :] if cfg.tpu_layout else ref[g, sl][:, None]

  def body(i, carry, g, masked):
    dk, dv = carry
    start = pl.multiple_of(i * bq, bq)
    sl = pl.ds(start, bq)
    q, do = rows(q_ref, g, sl), rows(do_ref, g, sl)
    lse, delta = stat(lse_ref, g, sl), stat(delta_ref, g, sl)
    qseg = None
    if cfg.has_segments:
      qseg = qseg_ref[sl, :] if cfg.tpu_layout else qseg_ref[sl][:, None]
    s = _logits(q, k, start, j * bk, qseg, kseg, masked, cfg)  # [bq, bk]
    p = jnp.exp2(s - lse)  # P_ij (Alg. 2)
    dv = dv + _dot(p.astype(do.dtype), do, (0, 0))  # dV += Pᵀ dO
    dp = _dot(do, v, (1, 1))  # dP = dO Vᵀ
    ds = p * (dp - delta)  # dS = P ∘ (dP - D)
    dk = dk + _dot(ds.astype(q.dtype), q, (0, 0))  # dK += dSᵀ Q (scale below)
    return dk, dv

  first, first_unmasked = q_tile_range(j, bq, bk, n_q, cfg)
  carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  for g in range(cfg.groups):  # static: G query heads read this KV head
    carry = lax.fori_loop(first, first_unmasked,
                          functools.partial(body, g=g, masked=True), carry)
    carry = lax.fori_loop(first_unmasked, n_q, functools.partial(body, g=g, masked=False),
                          carry)
  dk, dv = carry
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- pallas_call


def _seq_spec(block: int | None, length: int, h: int, cfg: KernelConfig,
              tiled: bool, head_div: int = 1) -> pl.BlockSpec:
  """BlockSpec over a [B, T, N, H] (or TPU [B, N, T, H]) array for grid (b, n, tile).

  ``tiled``: the block walks the sequence with the grid's last axis; otherwise it holds the
  whole (padded) sequence. ``head_div``: G for key/value arrays (query head n reads n // G).
  """
  rows = block if tiled else length

  def index(b, n, t):
    return (b, n // head_div, t if tiled else 0, 0) if cfg.tpu_layout else (
        b, t if tiled else 0, n // head_div, 0)

  shape = (None, None, rows, h) if cfg.tpu_layout else (None, rows, None, h)
  return pl.BlockSpec(shape, index)


def _group_spec(length: int, h: int, cfg: KernelConfig) -> pl.BlockSpec:
  """Whole-sequence block of the G query heads of KV head n, for grid (b, n, key tile)."""
  g = cfg.groups
  if cfg.tpu_layout:  # [B, N, T, H]: block (G, T, H); (T, H) are full dims
    return pl.BlockSpec((None, g, length, h), lambda b, n, t: (b, n, 0, 0))
  return pl.BlockSpec((None, length, g, h), lambda b, n, t: (b, 0, n, 0))


def _group_stat_spec(length: int, cfg: KernelConfig) -> pl.BlockSpec:
  """Whole-sequence statistics of the G query heads of KV head n: [G, T] (TPU [G, T, 1])."""
  g = cfg.groups
  if cfg.tpu_layout:
    return pl.BlockSpec((None, g, length, 1), lambda b, n, t: (b, n, 0, 0))
  return pl.BlockSpec((None, g, length), lambda b, n, t: (b, n, 0))


def _stat_spec(block: int, length: int, cfg: KernelConfig, tiled: bool) -> pl.BlockSpec:
  """BlockSpec over per-row statistics [B, N, T] (TPU: [B, N, T, 1])."""
  rows = block if tiled else length
  if cfg.tpu_layout:
    return pl.BlockSpec((None, None, rows, 1), lambda b, n, t: (b, n, t if tiled else 0, 0))
  return pl.BlockSpec((None, None, rows), lambda b, n, t: (b, n, t if tiled else 0))


def _seg_specs(t_len: int, s_len: int, bq: int | None, bk: int | None, cfg: KernelConfig):
  """Specs for q segment ids [B, T] / kv ids [B, S] (TPU: [B, T, 1] / [B, 1, S]); None = full."""
  q_rows, k_cols = bq or t_len, bk or s_len
  if cfg.tpu_layout:
    q_spec = pl.BlockSpec((None, q_rows, 1), lambda b, n, t: (b, t if bq else 0, 0))
    k_spec = pl.BlockSpec((None, 1, k_cols), lambda b, n, t: (b, 0, t if bk else 0))
  else:
    q_spec = pl.BlockSpec((None, q_rows), lambda b, n, t: (b, t if bq else 0))
    k_spec = pl.BlockSpec((None, k_cols), lambda b, n, t: (b, t if bk else 0))
  return [q_spec, k_spec]


def _dims(q: jax.Array, k: jax.Array, cfg: KernelConfig):
  """(B, N, T_pad, S_pad, H) of kernel-layout arrays."""
  if cfg.tpu_layout:
    b, n, t, h = q.shape
    s = k.shape[2]
  else:
    b, t, n, h = q.shape
    s = k.shape[1]
  return b, n, t, s, h


def _call(kernel, cfg: KernelConfig, grid, in_specs, out_specs, out_shape, name: str):
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, interpret=cfg.backend == "interpret", name=name,
      compiler_params=pallas_compat.compiler_params(
          cfg.backend, num_dims=len(grid), num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def forward(q, k, v, qseg, kseg, cfg: KernelConfig) -> tuple[jax.Array, jax.Array]:
  """Kernel-layout forward: returns (out like q, base-2 log-sum-exp [B, N, T(, 1)] fp32)."""
  b, n, t, s, h = _dims(q, k, cfg)
  bq = cfg.block_q
  in_specs = [_seq_spec(bq, t, h, cfg, True), _seq_spec(None, s, h, cfg, False, cfg.groups),
              _seq_spec(None, s, h, cfg, False, cfg.groups)]
  args = [q, k, v]
  if cfg.has_segments:
    in_specs += _seg_specs(t, s, bq, None, cfg)
    args += [qseg, kseg]
  stat_shape = (b, n, t, 1) if cfg.tpu_layout else (b, n, t)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct(stat_shape, jnp.float32)]
  out_specs = [_seq_spec(bq, t, h, cfg, True), _stat_spec(bq, t, cfg, True)]
  out, lse = _call(_forward_kernel, cfg, (b, n, t // bq), in_specs, out_specs, out_shape,
                   "flash_attention_fwd")(*args)
  return out, lse


def backward(q, k, v, qseg, kseg, do, lse, delta, cfg: KernelConfig):
  """Kernel-layout backward: (dQ like q, dK like k, dV like v)."""
  b, n, t, s, h = _dims(q, k, cfg)
  seg_args = [qseg, kseg] if cfg.has_segments else []
  # dQ: grid over query tiles, loop over key tiles.
  bq = cfg.block_q
  in_specs = [_seq_spec(bq, t, h, cfg, True), _seq_spec(None, s, h, cfg, False, cfg.groups),
              _seq_spec(None, s, h, cfg, False, cfg.groups)]
  if cfg.has_segments:
    in_specs += _seg_specs(t, s, bq, None, cfg)
  in_specs += [_seq_spec(bq, t, h, cfg, True), _stat_spec(bq, t, cfg, True),
               _stat_spec(bq, t, cfg, True)]
  dq = _call(_dq_kernel, cfg, (b, n, t // bq), in_specs, _seq_spec(bq, t, h, cfg, True),
             jax.ShapeDtypeStruct(q.shape, q.dtype), "flash_attention_dq")(
                 q, k, v, *seg_args, do, lse, delta)
  # dK/dV: grid over key tiles of each KV head; loops over its G query heads and query tiles.
  bk = cfg.block_k_dkv
  kh = n // cfg.groups
  in_specs = [_group_spec(t, h, cfg), _seq_spec(bk, s, h, cfg, True),
              _seq_spec(bk, s, h, cfg, True)]
  if cfg.has_segments:
    in_specs += _seg_specs(t, s, None, bk, cfg)
  in_specs += [_group_spec(t, h, cfg), _group_stat_spec(t, cfg), _group_stat_spec(t, cfg)]
  out_spec = _seq_spec(bk, s, h, cfg, True)
  dk, dv = _call(_dkv_kernel, cfg, (b, kh, s // bk), in_specs, [out_spec, out_spec],
                 [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 "flash_attention_dkv")(q, k, v, *seg_args, do, lse, delta)
  return dq, dk, dv
