"""Preallocated key/value cache for autoregressive decoding (the incremental decoding of
1706.03762's decoder; cf. Pope et al. 2022, arXiv:2211.05102, sec. 2).

Slot s of the cache holds the key/value of the token at position s, so one buffer of
[B, S_max, K, H] per layer is written in place (`dynamic_update_slice`) and read whole; the
mask says which slots a query may see. Only K key/value heads are stored: GQA/MQA shrink the
cache by G = N / K.
"""

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class KVCache:
  """k, v: [B, S_max, K, H]. A pytree: pass it through `jit` and return the updated one."""

  k: Array
  v: Array

  @classmethod
  def init(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
           dtype=jnp.float32) -> "KVCache":
    shape = (batch, max_len, num_kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  @property
  def max_len(self) -> int:
    return self.k.shape[1]

  @property
  def nbytes(self) -> int:
    return self.k.size * self.k.dtype.itemsize + self.v.size * self.v.dtype.itemsize

  def update(self, k_BTKH: Array, v_BTKH: Array, positions_BT: Array, *,
             local_window_size: int | tuple[int, int] | None = None):
    """Write the new keys/values at their positions; return (k_BSKH, v_BSKH, mask_B1TS, cache).

    `positions_BT` must be consecutive per row (a prefill chunk or one decode step) and every
    earlier position must already be in the cache. Query at position p sees slots s ≤ p (and
    s ≥ p − left with a sliding window), which is exactly the causal mask of full recompute.
    """
    if k_BTKH.shape[1] > self.max_len:
      raise ValueError(f"{k_BTKH.shape[1]} new tokens do not fit a cache of {self.max_len} slots")
    start_B = positions_BT[:, 0]
    write = jax.vmap(lambda buf, new, s: jax.lax.dynamic_update_slice_in_dim(buf, new, s, axis=0))
    k = write(self.k, k_BTKH.astype(self.k.dtype), start_B)
    v = write(self.v, v_BTKH.astype(self.v.dtype), start_B)
    slot_11S = jnp.arange(self.max_len)[None, None, :]
    pos_BT1 = positions_BT[:, :, None]
    mask_BTS = slot_11S <= pos_BT1
    if local_window_size is not None:
      left = local_window_size if isinstance(local_window_size, int) else local_window_size[0]
      mask_BTS &= slot_11S >= pos_BT1 - left
    return k, v, mask_BTS[:, None], KVCache(k, v)
