"""Fused RMSNorm Pallas kernels, forward and backward (Zhang & Sennrich, arXiv 1910.07467).

    y = w ∘ x / sqrt(mean(x²) + eps)                       # eq. (4) of 1910.07467

One kernel reads a tile of rows once and writes y; the backward kernel recomputes the inverse
RMS from x (one reduction, cheaper than a round trip through memory) and writes dx plus a
per-tile partial of dw that the wrapper sums in fp32. Statistics are fp32 whatever the input
dtype: mean(x²) of bf16 activations loses the small entries otherwise. ``rms_norm_reference``
is the pure-jnp fp32 reference the tests hold the kernels to.

Backends as in ``pallas_compat``: Triton on GPU (rows padded to a power-of-two tile and the
feature dim to a power of two, padded features are zero and excluded from the mean), Mosaic on
TPU (row tiles of 8k, the full feature dim as the lane block), the interpreter on CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from genfm.kernels import pallas_compat


def rms_norm_reference(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
  """fp32 RMSNorm over the last axis: x [..., D], weight [D] -> [..., D] float32."""
  x32 = x.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)  # eq. (4)
  return x32 * inv_rms * weight.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Config:
  backend: str
  eps: float
  features: int  # true D (the padded columns are zero)
  block_rows: int


def _inv_rms(x, cfg: _Config):
  """[rows, 1] fp32 1/sqrt(mean(x²) + eps); padded zero columns add nothing to the sum."""
  return jax.lax.rsqrt(jnp.sum(x * x, axis=1, keepdims=True) / cfg.features + cfg.eps)


def _forward_kernel(x_ref, w_ref, y_ref, *, cfg: _Config):
  x = x_ref[...].astype(jnp.float32)  # [rows, D]
  w = w_ref[...].astype(jnp.float32)  # [1, D]
  y_ref[...] = (x * _inv_rms(x, cfg) * w).astype(y_ref.dtype)


def _backward_kernel(x_ref, w_ref, dy_ref, dx_ref, dw_ref, *, cfg: _Config):
  x = x_ref[...].astype(jnp.float32)  # [rows, D]
  w = w_ref[...].astype(jnp.float32)  # [1, D]
  dy = dy_ref[...].astype(jnp.float32)  # [rows, D]
  r = _inv_rms(x, cfg)  # [rows, 1]
  x_hat = x * r
  g = dy * w
  # dx = r (g - x̂ · mean(g ∘ x̂)), the derivative of eq. (4) through mean(x²).
  proj = jnp.sum(g * x_hat, axis=1, keepdims=True) / cfg.features
  dx_ref[...] = (r * (g - x_hat * proj)).astype(dx_ref.dtype)
  dw_ref[...] = jnp.sum(dy * x_hat, axis=0, keepdims=True)  # this tile's share of dw, fp32


def _specs(rows: int, d: int):
  return (pl.BlockSpec((rows, d), lambda i: (i, 0)), pl.BlockSpec((1, d), lambda i: (0, 0)))


def _call(kernel, cfg: _Config, n_tiles: int, in_specs, out_specs, out_shape, name: str):
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg), grid=(n_tiles,), in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape, interpret=cfg.backend == "interpret",
      name=name, compiler_params=pallas_compat.compiler_params(cfg.backend, num_dims=1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rms_norm_2d(x_RD, w_1D, cfg: _Config):
  return _rms_forward(x_RD, w_1D, cfg)[0]


def _rms_forward(x_RD, w_1D, cfg: _Config):
  r, d = x_RD.shape
  x_spec, w_spec = _specs(cfg.block_rows, d)
  y = _call(_forward_kernel, cfg, r // cfg.block_rows, [x_spec, w_spec], x_spec,
            jax.ShapeDtypeStruct(x_RD.shape, x_RD.dtype), "rms_norm_fwd")(x_RD, w_1D)
  return y, (x_RD, w_1D)


def _rms_backward(cfg: _Config, residuals, dy_RD):
  x_RD, w_1D = residuals
  r, d = x_RD.shape
  n_tiles = r // cfg.block_rows
  x_spec, w_spec = _specs(cfg.block_rows, d)
  # dw partials as [tiles, 1, D]: the (1, D) block is full in its last two dims (TPU rule).
  dw_spec = pl.BlockSpec((None, 1, d), lambda i: (i, 0, 0))
  dx, dw_parts = _call(
      _backward_kernel, cfg, n_tiles, [x_spec, w_spec, x_spec], [x_spec, dw_spec],
      [jax.ShapeDtypeStruct(x_RD.shape, x_RD.dtype),
       jax.ShapeDtypeStruct((n_tiles, 1, d), jnp.float32)], "rms_norm_bwd")(x_RD, w_1D, dy_RD)
  return dx, jnp.sum(dw_parts, axis=0).astype(w_1D.dtype)


_rms_norm_2d.defvjp(_rms_forward, _rms_backward)


def rms_norm(x: jax.Array, weight: jax.Array, *, eps: float = 1e-6,
             block_rows: int | None = None, backend: str | None = None) -> jax.Array:
  """Fused RMSNorm over the last axis: x [..., D], weight [D] -> [..., D] in x's dtype.

  Args:
    x: activations [..., D] (float32/bfloat16/float16).
    weight: gain [D].
    eps: added to mean(x²) before the square root.
    block_rows: rows per program; None picks a tile of about 16k elements (32k on TPU).
    backend: "interpret", "gpu" or "tpu"; None picks from ``jax.default_backend()``.
  """
  backend = backend or pallas_compat.default_backend()
  pallas_compat.check_backend(backend)
  if x.ndim < 1 or weight.shape != x.shape[-1:]:
    raise ValueError(f"weight must have shape [D] = {x.shape[-1:]} for x of shape {x.shape}, "
                     f"got {weight.shape}.")
  if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"x dtype must be one of float32/bfloat16/float16, got {x.dtype}.")
  d = x.shape[-1]
  rows = x.size // d
  d_pad = max(16, 1 << (d - 1).bit_length()) if backend == "gpu" else d
  if block_rows is None:
    block_rows = max(1, (32768 if backend == "tpu" else 16384) // d_pad)
  if backend == "gpu":  # Triton tiles are powers of two
    block_rows = 1 << (min(block_rows, rows) - 1).bit_length()
  else:  # TPU sublane tiles are multiples of 8 (the interpreter shares the choice)
    block_rows = -(-min(block_rows, rows) // 8) * 8
  rows_pad = -(-rows // block_rows) * block_rows
  x_RD = jnp.pad(x.reshape(rows, d), ((0, rows_pad - rows), (0, d_pad - d)))
  w_1D = jnp.pad(weight, (0, d_pad - d)).reshape(1, d_pad)
  cfg = _Config(backend=backend, eps=float(eps), features=d, block_rows=block_rows)
  y_RD = _rms_norm_2d(x_RD, w_1D, cfg)
  return y_RD[:rows, :d].reshape(x.shape)
