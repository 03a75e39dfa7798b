"""2-D convolution and pooling from scratch: a sum over the kernel window of shifted input slices.

Deep-learning "convolution" is cross-correlation (LeCun et al., Neural Computation 1989):
  y[b, i, j, o] = Σ_{u,v,c} x_pad[b, i·s + u·d, j·s + v·d, c] · w[u, v, c, o].
Instead of four loops we loop only over the K_h·K_w kernel offsets (u, v): each offset contributes
one strided slice of the padded input times w[u, v] ([C_in, C_out]), a matmul over channels.
Output size (Dumoulin & Visin 1603.07285, Relationship 6, with a dilated kernel of effective size
d(K − 1) + 1, §5.1):  O = ⌊(W + 2P − d(K − 1) − 1)/S⌋ + 1,  i.e. (W − K + 2P)/S + 1 for d = 1.
Layouts: images [B, H, W, C] (NHWC), kernels [K_h, K_w, C_in, C_out] (HWIO), like nnx.Conv.
"""

import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

Padding = Union[str, int, Sequence[tuple[int, int]]]


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                dilation: int = 1) -> int:
  """⌊(W + 2P − d(K − 1) − 1)/S⌋ + 1 (1603.07285, Relationship 6 with the dilated kernel)."""
  return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pairs(value, name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return pair


def resolve_padding(padding: Padding, in_hw, kernel_hw, stride_hw,
                    dilation_hw) -> list[tuple[int, int]]:
  """Explicit ((top, bottom), (left, right)) from an int, explicit pairs, 'VALID' or 'SAME'."""
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [(0, 0), (0, 0)]
    if padding.upper() == "SAME":
      # XLA/TensorFlow convention: output ⌈W/S⌉, any odd total padding goes at the end.
      pads = []
      for w, k, s, d in zip(in_hw, kernel_hw, stride_hw, dilation_hw):
        total = max((math.ceil(w / s) - 1) * s + d * (k - 1) + 1 - w, 0)
        pads.append((total // 2, total - total // 2))
      return pads
    raise ValueError(f"unknown padding {padding!r}; valid: 'SAME', 'VALID', an int, or "
                     "((top, bottom), (left, right))")
  if isinstance(padding, int):
    return [(padding, padding), (padding, padding)]
  pads = [tuple(p) for p in padding]
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ValueError(f"padding pairs must be ((top, bottom), (left, right)), got {padding!r}")
  return pads


def _window_slices(x_pad, kernel_hw, stride_hw, dilation_hw, out_hw):
  """Yields ((u, v), x_pad[:, u·d::s, v·d::s, :] cut to the output size) for each kernel offset."""
  (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel_hw, stride_hw, dilation_hw, out_hw
  for u in range(kh):
    for v in range(kw):
      yield (u, v), jax.lax.slice(
          x_pad, (0, u * dh, v * dw, 0),
          (x_pad.shape[0], u * dh + (oh - 1) * sh + 1, v * dw + (ow - 1) * sw + 1, x_pad.shape[3]),
          (1, sh, sw, 1))  # [B, O_h, O_w, C]


def conv2d(x_BHWC: jax.Array, w_HWIO: jax.Array, stride=1, padding: Padding = 0,
           dilation=1) -> jax.Array:
  """Cross-correlation, [B, H, W, C_in] * [K_h, K_w, C_in, C_out] -> [B, O_h, O_w, C_out]."""
  if x_BHWC.ndim != 4 or w_HWIO.ndim != 4 or x_BHWC.shape[3] != w_HWIO.shape[2]:
    raise ValueError(f"expected x [B, H, W, C_in] and w [K_h, K_w, C_in, C_out] with matching "
                     f"C_in; got x {x_BHWC.shape}, w {w_HWIO.shape}")
  stride_hw, dilation_hw = _pairs(stride, "stride"), _pairs(dilation, "dilation")
  kernel_hw = w_HWIO.shape[:2]
  pads = resolve_padding(padding, x_BHWC.shape[1:3], kernel_hw, stride_hw, dilation_hw)
  x_pad = jnp.pad(x_BHWC, ((0, 0), pads[0], pads[1], (0, 0)))
  out_hw = tuple(output_size(x_pad.shape[1 + a], kernel_hw[a], stride_hw[a], 0, dilation_hw[a])
                 for a in range(2))
  if min(out_hw) < 1:
    raise ValueError(f"kernel (dilated) larger than the padded input: output would be {out_hw}")
  y = jnp.zeros((x_BHWC.shape[0], *out_hw, w_HWIO.shape[3]), jnp.result_type(x_BHWC, w_HWIO))
  for (u, v), patch_BHWC in _window_slices(x_pad, kernel_hw, stride_hw, dilation_hw, out_hw):
    y = y + jnp.einsum("bhwc,co->bhwo", patch_BHWC, w_HWIO[u, v])  # Σ_{u,v} x_shift · w[u, v]
  return y


def _pool(x_BHWC, window, stride, padding, reduce, pad_value):
  if x_BHWC.ndim != 4:
    raise ValueError(f"expected images [B, H, W, C], got {x_BHWC.shape}")
  window_hw = _pairs(window, "window")
  stride_hw = _pairs(window if stride is None else stride, "stride")
  pads = resolve_padding(padding, x_BHWC.shape[1:3], window_hw, stride_hw, (1, 1))
  x_pad = jnp.pad(x_BHWC, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
  out_hw = tuple(output_size(x_pad.shape[1 + a], window_hw[a], stride_hw[a]) for a in range(2))
  slices = [s for _, s in _window_slices(x_pad, window_hw, stride_hw, (1, 1), out_hw)]
  return reduce(jnp.stack(slices), axis=0)  # reduce over the K_h·K_w window offsets


def max_pool2d(x_BHWC: jax.Array, window=2, stride=None, padding: Padding = "VALID") -> jax.Array:
  """Max over each window; padding uses −inf so it never wins. `stride=None` means the window
  size (non-overlapping, as in PyTorch; flax's pooling treats None as stride 1)."""
  return _pool(x_BHWC, window, stride, padding, jnp.max, -jnp.inf)


def avg_pool2d(x_BHWC: jax.Array, window=2, stride=None, padding: Padding = "VALID") -> jax.Array:
  """Mean over each window; padded zeros count in the mean (flax's count_include_pad=True)."""
  return _pool(x_BHWC, window, stride, padding, jnp.mean, 0.0)


class Conv2D(nnx.Module):
  """`conv2d` as a layer with its own kernel [K_h, K_w, C_in, C_out] and bias [C_out]
  (LeCun-normal kernel, std 1/√(K_h K_w C_in)); same layout and result as `nnx.Conv`."""

  def __init__(self, in_features: int, out_features: int, kernel_size=3, stride=1,
               padding: Padding = "SAME", dilation=1, *, rngs: nnx.Rngs):
    kh, kw = _pairs(kernel_size, "kernel_size")
    fan_in = kh * kw * in_features
    self.kernel_HWIO = nnx.Param(
        jax.random.normal(rngs.params(), (kh, kw, in_features, out_features)) / math.sqrt(fan_in))
    self.bias_O = nnx.Param(jnp.zeros(out_features))
    self.stride, self.padding, self.dilation = stride, padding, dilation

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    y = conv2d(x_BHWC, self.kernel_HWIO[...], self.stride, self.padding, self.dilation)
    return y + self.bias_O[...]
