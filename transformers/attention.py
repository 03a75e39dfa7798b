"""Scaled dot-product and multi-head attention, Vaswani et al. 2017, arXiv:1706.03762.

Also grouped-query / multi-query attention (Ainslie et al. 2023, arXiv:2305.13245): K key/value
heads are shared by G = N / K query heads each (K = N is MHA, K = 1 is MQA), and sliding-window
attention (a query sees only the last `window` keys).

Layout is BTNH, the layout of `jax.nn.dot_product_attention`, whose signature
`dot_product_attention` mirrors so that a fused kernel (the Pallas flash kernel in
`genfm.kernels`) can be passed as `attention_fn` to `MultiHeadAttention` without other changes.
"""

from collections.abc import Callable
import functools
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array
AttentionFn = Callable[..., Array]

# Masked logits are set to this large *finite* negative rather than -inf: a row whose keys are
# all masked (a padded query) then gives a uniform softmax instead of NaN = (-inf) - (-inf).
MASK_VALUE = -1e30
IMPLEMENTATIONS = ("reference", "reference_vjp", "xla", "cudnn")


def _window_pair(local_window_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
  if local_window_size is None:
    return None
  if isinstance(local_window_size, int):
    return (local_window_size, local_window_size)
  left, right = local_window_size
  return (int(left), int(right))


def attention_mask(
    T: int,
    S: int,
    *,
    is_causal: bool = False,
    local_window_size: int | tuple[int, int] | None = None,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
) -> Array:
  """Boolean mask, True = may attend, broadcastable to [B, N, T, S].

  Causal and window masks are aligned at the top-left corner (query t is at position t), the
  convention of `jax.nn.dot_product_attention`. The window (left, right) lets query t see keys
  s with t - left <= s <= t + right.
  """
  t_T1 = jnp.arange(T)[:, None]
  s_1S = jnp.arange(S)[None, :]
  mask_TS = jnp.ones((T, S), dtype=bool)
  if is_causal:
    mask_TS &= s_1S <= t_T1
  window = _window_pair(local_window_size)
  if window is not None:
    left, right = window
    mask_TS &= (s_1S >= t_T1 - left) & (s_1S <= t_T1 + right)
  mask_11TS = mask_TS[None, None]
  if query_seq_lengths is not None:
    mask_11TS = mask_11TS & (t_T1[None, None] < query_seq_lengths[:, None, None, None])
  if key_value_seq_lengths is not None:
    mask_11TS = mask_11TS & (s_1S[None, None] < key_value_seq_lengths[:, None, None, None])
  return mask_11TS


def _check_shapes(q_BTNH: Array, k_BSKH: Array, v_BSKH: Array) -> tuple[int, int]:
  if q_BTNH.ndim != 4 or k_BSKH.ndim != 4 or v_BSKH.ndim != 4:
    raise ValueError(
        "attention expects rank-4 BTNH inputs: query [B, T, N, H], key/value [B, S, K, H]; got "
        f"{q_BTNH.shape}, {k_BSKH.shape}, {v_BSKH.shape}")
  if k_BSKH.shape != v_BSKH.shape:
    raise ValueError(f"key {k_BSKH.shape} and value {v_BSKH.shape} must have the same shape")
  B, _, N, H = q_BTNH.shape
  Bk, _, K, Hk = k_BSKH.shape
  if Bk != B or Hk != H:
    raise ValueError(
        f"query [B, T, N, H] = {q_BTNH.shape} and key [B, S, K, H] = {k_BSKH.shape} must agree on "
        "B and H")
  if N % K:
    raise ValueError(
        f"query heads N={N} must be divisible by key/value heads K={K} (GQA groups G = N / K); "
        f"valid K for N={N}: {[k for k in range(1, N + 1) if N % k == 0]}")
  return N, K


def reference_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    explicit_vjp: bool = False,
) -> Array:
  """Pure-jnp softmax(q kᵀ · scale + bias) v with GQA; fp32 reference for every fast path.

  `bias` and `mask` broadcast to [B, N, T, S]; `mask` is boolean, True = attend.
  `explicit_vjp=True` keeps this forward and replaces autodiff's backward by the closed form of
  FlashAttention-2 (`_attend_vjp`): reverse mode only (no `jax.jvp`).
  """
  N, K = _check_shapes(q_BTNH, k_BSKH, v_BSKH)
  B, T, _, H = q_BTNH.shape
  S = k_BSKH.shape[1]
  G = N // K
  scale = 1.0 / math.sqrt(H) if scale is None else scale
  # Query head n = k·G + g uses KV head k (the grouping of 2305.13245, sec. 2.2).
  q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
  bias_BKGTS = None
  if bias is not None:
    bias_BKGTS = jnp.broadcast_to(bias, (B, N, T, S)).astype(jnp.float32).reshape(B, K, G, T, S)
  full_mask = attention_mask(
      T, S, is_causal=is_causal, local_window_size=local_window_size,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths)
  if mask is not None:
    full_mask = full_mask & jnp.asarray(mask, dtype=bool)
  mask_BKGTS = jnp.broadcast_to(full_mask, (B, N, T, S)).reshape(B, K, G, T, S)
  if explicit_vjp:
    out_BTKGH = _attend_vjp(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale)
  else:
    out_BTKGH = _attend(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale)[0]
  out_BTNH = out_BTKGH.reshape(B, T, N, H)
  if query_seq_lengths is not None:  # padded queries output zeros, like jax.nn
    valid_BT = jnp.arange(T)[None, :] < query_seq_lengths[:, None]
    out_BTNH = out_BTNH * valid_BT[:, :, None, None].astype(out_BTNH.dtype)
  return out_BTNH


def _probs(q_BTKGH, k_BSKH, bias_BKGTS, mask_BKGTS, scale) -> Array:
  """P = softmax(QKᵀ · scale + bias) over keys, masked, fp32 [B, K, G, T, S]."""
  # Logits in fp32 whatever the input dtype: the mask value and the max-subtraction inside the
  # softmax need fp32 range/precision (bf16 keeps 8 mantissa bits, fp16 overflows at 65504).
  logits_BKGTS = jnp.einsum(
      "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32)
  logits_BKGTS = logits_BKGTS.astype(jnp.float32) * scale  # QKᵀ/√d_k, eq. (1) of 1706.03762
  if bias_BKGTS is not None:
    logits_BKGTS = logits_BKGTS + bias_BKGTS
  logits_BKGTS = jnp.where(mask_BKGTS, logits_BKGTS, MASK_VALUE)
  return jax.nn.softmax(logits_BKGTS, axis=-1)  # softmax(·) V, eq. (1) of 1706.03762


def _attend(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale) -> tuple[Array, Array]:
  """(O = P V [B, T, K, G, H], P [B, K, G, T, S])."""
  probs_BKGTS = _probs(q_BTKGH, k_BSKH, bias_BKGTS, mask_BKGTS, scale)
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS.astype(v_BSKH.dtype), v_BSKH)
  return out_BTKGH, probs_BKGTS


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend_vjp(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale) -> Array:
  """`_attend` with the backward of FlashAttention-2 (2307.08691, sec. 3.1.2 / Alg. 2), untiled.

  With P the probabilities and O = P V, the backward is dV = Pᵀ dO, dP = dO Vᵀ,
  dS = P ∘ (dP − D) with D = rowsum(dO ∘ O) (= rowsum(dP ∘ P), eq. in sec. 3.1.2 of 2307.08691),
  dQ = dS K · scale, dK = dSᵀ Q · scale, d(bias) = dS. D sums over the head dim H instead of the
  keys S, and the program XLA sees is the five matmuls and one elementwise pass of the paper
  instead of autodiff's chain through the softmax. On XLA:CPU the char GPT's fwd+bwd went from
  43 to 37 ms with it (after the norms' closed-form backward; `genfm-bench gpt_vs_nanogpt`).
  """
  return _attend(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale)[0]


def _attend_vjp_fwd(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale):
  out_BTKGH, probs_BKGTS = _attend(q_BTKGH, k_BSKH, v_BSKH, bias_BKGTS, mask_BKGTS, scale)
  has_bias = None if bias_BKGTS is None else jnp.zeros(())  # residuals are arrays (or None)
  return out_BTKGH, (q_BTKGH, k_BSKH, v_BSKH, probs_BKGTS, out_BTKGH, mask_BKGTS, has_bias)


def _attend_vjp_bwd(scale, res, do_BTKGH):
  q_BTKGH, k_BSKH, v_BSKH, probs_BKGTS, out_BTKGH, mask_BKGTS, has_bias = res
  f32 = jnp.float32
  dv_BSKH = jnp.einsum("BKGTS,BTKGH->BSKH", probs_BKGTS.astype(v_BSKH.dtype),
                       do_BTKGH.astype(v_BSKH.dtype), preferred_element_type=f32)
  dp_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", do_BTKGH, v_BSKH, preferred_element_type=f32)
  d_BKGT = jnp.einsum("BTKGH,BTKGH->BKGT", do_BTKGH.astype(f32), out_BTKGH.astype(f32))
  # Masked logits were replaced by a constant: no gradient reaches them (as autodiff of the
  # `where`), which matters for fully masked rows, whose uniform P is not 0 there.
  ds_BKGTS = jnp.where(mask_BKGTS, probs_BKGTS * (dp_BKGTS - d_BKGT[..., None]), 0.0)
  dq_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", ds_BKGTS, k_BSKH.astype(f32)) * scale
  dk_BSKH = jnp.einsum("BKGTS,BTKGH->BSKH", ds_BKGTS, q_BTKGH.astype(f32)) * scale
  return (dq_BTKGH.astype(q_BTKGH.dtype), dk_BSKH.astype(k_BSKH.dtype),
          dv_BSKH.astype(v_BSKH.dtype), None if has_bias is None else ds_BKGTS, None)


_attend_vjp.defvjp(_attend_vjp_fwd, _attend_vjp_bwd)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: str | None = None,
) -> Array:
  """`jax.nn.dot_product_attention`'s signature; `implementation` picks the backend.

  "reference" (also None): `reference_attention`. "reference_vjp": the same forward with
  FlashAttention-2's closed-form backward (reverse mode only; the GPT's default). "xla" / "cudnn":
  `jax.nn.dot_product_attention` (which handles GQA itself). Anything else raises instead of
  silently falling back.
  """
  impl = "reference" if implementation is None else implementation
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {impl!r}; valid choices: {IMPLEMENTATIONS}")
  kwargs: dict[str, Any] = dict(
      scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size)
  if impl in ("reference", "reference_vjp"):
    return reference_attention(query, key, value, bias, mask, explicit_vjp=impl != "reference",
                               **kwargs)
  _check_shapes(query, key, value)
  return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation=impl, **kwargs)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention (sec. 3.2.2 of 1706.03762) with K ≤ N key/value heads (2305.13245).

  `rope` (a callable (x_BTNH, positions_BT) -> x_BTNH, e.g. `positions.apply_rope`) rotates q
  and k; `bias` (e.g. ALiBi) is added to the logits. `cache` is any object with
  `update(k_BTKH, v_BTKH, positions_BT) -> (k_BSKH, v_BSKH, mask_B1TS, new_cache)` (see
  `kv_cache.KVCache`); with a cache the call returns (out, new_cache). `dtype` is the compute
  dtype of the projections (None: the promoted input/param dtype); parameters stay fp32.
  """

  def __init__(
      self,
      d_model: int,
      num_heads: int,
      *,
      num_kv_heads: int | None = None,
      head_dim: int | None = None,
      use_bias: bool = False,
      attention_fn: AttentionFn = dot_product_attention,
      kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
      out_kernel_init: nnx.Initializer | None = None,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    K = num_heads if num_kv_heads is None else num_kv_heads
    if K < 1 or num_heads % K:
      raise ValueError(
          f"num_heads N={num_heads} must be divisible by num_kv_heads K={K}; valid K: "
          f"{[k for k in range(1, num_heads + 1) if num_heads % k == 0]}")
    if head_dim is None:
      if d_model % num_heads:
        raise ValueError(
            f"d_model={d_model} is not divisible by num_heads={num_heads}; pass head_dim")
      head_dim = d_model // num_heads
    D, N, H = d_model, num_heads, head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
    self.attention_fn = attention_fn

    def proj(spec, kernel_shape, bias_shape, init):
      return nnx.Einsum(spec, kernel_shape, bias_shape if use_bias else None, dtype=dtype,
                        kernel_init=init, rngs=rngs)

    self.q_proj = proj("BTD,DNH->BTNH", (D, N, H), (N, H), kernel_init)
    self.k_proj = proj("BSD,DKH->BSKH", (D, K, H), (K, H), kernel_init)
    self.v_proj = proj("BSD,DKH->BSKH", (D, K, H), (K, H), kernel_init)
    self.o_proj = proj("BTNH,NHD->BTD", (N, H, D), (D,), out_kernel_init or kernel_init)

  def __call__(
      self,
      x_BTD: Array,
      *,
      positions_BT: Array | None = None,
      rope: Callable[[Array, Array], Array] | None = None,
      bias: Array | None = None,
      mask: Array | None = None,
      is_causal: bool = True,
      local_window_size: int | tuple[int, int] | None = None,
      key_value_seq_lengths: Array | None = None,
      segment_ids: Array | None = None,
      kv_prefix: tuple[Array, Array] | None = None,
      cache: Any = None,
  ):
    """`mask` (bool, broadcastable to [B, N, T, S]) narrows what `is_causal` allows;
    `segment_ids` go to kernels that mask by segment themselves (the Pallas flash kernel);
    `kv_prefix` = (k, v), each [B, P, K, H], are P extra keys/values before the sequence that every
    query sees (prefix tuning, eq. (5)-(6) of 2101.00190: they stand for P earlier tokens)."""
    if x_BTD.ndim != 3:
      raise ValueError(f"MultiHeadAttention expects x [B, T, D], got shape {x_BTD.shape}")
    B, T, _ = x_BTD.shape
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    q_BTNH = self.q_proj(x_BTD)  # Q W^Q_i, sec. 3.2.2 of 1706.03762
    k_BSKH = self.k_proj(x_BTD)
    v_BSKH = self.v_proj(x_BTD)
    if rope is not None:
      q_BTNH, k_BSKH = rope(q_BTNH, positions_BT), rope(k_BSKH, positions_BT)
    new_cache = None
    if kv_prefix is not None:
      if cache is not None or local_window_size is not None or bias is not None:
        raise ValueError("kv_prefix works without a cache, a window or a bias (ALiBi)")
      k_pre_BPKH, v_pre_BPKH = kv_prefix
      P = k_pre_BPKH.shape[1]
      k_BSKH = jnp.concatenate([k_pre_BPKH.astype(k_BSKH.dtype), k_BSKH], axis=1)
      v_BSKH = jnp.concatenate([v_pre_BPKH.astype(v_BSKH.dtype), v_BSKH], axis=1)
      # Query t sees every prefix slot and tokens s <= t: causal over the real tokens only,
      # so the mask is explicit (is_causal aligns at the top-left corner of [T, P + T]).
      t_T1, s_1T = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
      tokens_TT = (s_1T <= t_T1) if is_causal else jnp.ones((T, T), bool)
      if mask is not None:                # e.g. same-segment [B, 1, T, T] of packed rows
        tokens_TT = tokens_TT & mask
      tokens_B1TT = jnp.broadcast_to(tokens_TT, jnp.broadcast_shapes(
          jnp.shape(tokens_TT), (1, 1, T, T)))
      mask = jnp.concatenate(
          [jnp.ones(tokens_B1TT.shape[:-1] + (P,), bool), tokens_B1TT], axis=-1)
      is_causal = False
    if cache is not None:
      # Causality and the window come from the cache's positions, so the mask is explicit.
      k_BSKH, v_BSKH, cache_mask, new_cache = cache.update(
          k_BSKH, v_BSKH, positions_BT, local_window_size=local_window_size)
      mask = cache_mask if mask is None else mask & cache_mask
      is_causal, local_window_size = False, None
    # Only the options in use are passed, so a kernel that supports a subset of
    # jax.nn.dot_product_attention's keywords (e.g. causal only) plugs in unchanged.
    extra = dict(bias=bias, mask=mask, local_window_size=local_window_size,
                 key_value_seq_lengths=key_value_seq_lengths, segment_ids=segment_ids)
    out_BTNH = self.attention_fn(q_BTNH, k_BSKH, v_BSKH, is_causal=is_causal,
                                 **{name: val for name, val in extra.items() if val is not None})
    out_BTD = self.o_proj(out_BTNH)  # Concat(head_1..head_h) W^O
    return out_BTD if cache is None else (out_BTD, new_cache)
