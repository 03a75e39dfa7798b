"""Convolution and pooling from scratch equal lax.conv_general_dilated and nnx pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.foundations import conv

_X = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))  # [B, H, W, C_in], H ≠ W on purpose
_W = jax.random.normal(jax.random.key(1), (3, 2, 3, 4))  # [K_h, K_w, C_in, C_out], K_h ≠ K_w

_CASES = [  # (stride, padding, dilation)
    (1, 0, 1), (2, 0, 1), (1, 1, 1), (2, 2, 1), ((2, 1), ((1, 0), (0, 2)), 1),
    (1, 0, 2), (2, 1, (2, 3)), (1, "SAME", 1), (2, "SAME", 1), (3, "SAME", 2), (2, "VALID", 1),
]


@pytest.mark.parametrize("stride, padding, dilation", _CASES)
def test_conv_matches_lax(stride, padding, dilation):
  pads = padding if isinstance(padding, str) else (
      [(padding, padding)] * 2 if isinstance(padding, int) else padding)
  ours, ref = jax.jit(lambda x, w: (  # one compile per case instead of many eager ops
      conv.conv2d(x, w, stride, padding, dilation),
      jax.lax.conv_general_dilated(
          x, w, window_strides=conv._pairs(stride, "s"), padding=pads,
          rhs_dilation=conv._pairs(dilation, "d"), dimension_numbers=("NHWC", "HWIO", "NHWC"))))(
              _X, _W)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation, expected", [
    (32, 3, 1, 1, 1, 32), (32, 5, 2, 2, 1, 16), (28, 5, 1, 0, 1, 24), (7, 3, 2, 0, 1, 3),
    (224, 7, 2, 3, 1, 112),  # ResNet stem
    (10, 3, 1, 0, 2, 6),  # dilated: effective kernel 5
])
def test_output_size_formula(size, kernel, stride, padding, dilation, expected):
  assert conv.output_size(size, kernel, stride, padding, dilation) == expected
  out = jax.eval_shape(lambda x, w: conv.conv2d(x, w, stride, padding, dilation),
                       jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32),
                       jax.ShapeDtypeStruct((kernel, kernel, 1, 2), jnp.float32))
  assert out.shape == (1, expected, expected, 2)


def test_conv_is_linear_and_translation_equivariant():
  w = _W[:, :, :, :1]
  # Shifting the input by one pixel shifts a stride-1 VALID output by one pixel.
  shifted, plain = jax.jit(lambda x: (conv.conv2d(jnp.roll(x, 1, axis=2), w)[:, :, 1:],
                                      conv.conv2d(x, w)[:, :, :-1]))(_X)
  np.testing.assert_allclose(shifted, plain, atol=1e-5)


@pytest.mark.parametrize("window, stride, padding", [
    (2, None, "VALID"), ((3, 2), (1, 2), "VALID"), (3, 2, "SAME"), (2, 1, ((1, 1), (0, 1))),
])
def test_pooling_matches_nnx(window, stride, padding):
  w = conv._pairs(window, "w")
  s = w if stride is None else conv._pairs(stride, "s")  # ours: stride defaults to the window
  #                                                        (PyTorch); flax's None means 1
  outs = jax.jit(lambda x: (conv.max_pool2d(x, window, stride, padding),
                            nnx.max_pool(x, w, s, padding),
                            conv.avg_pool2d(x, window, stride, padding),
                            nnx.avg_pool(x, w, s, padding)))(_X)
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
  np.testing.assert_allclose(outs[2], outs[3], atol=1e-6)


def test_conv_layer_matches_nnx_conv():
  ours = conv.Conv2D(3, 4, kernel_size=(3, 2), stride=2, padding="SAME", rngs=nnx.Rngs(0))
  theirs = nnx.Conv(3, 4, kernel_size=(3, 2), strides=2, padding="SAME", rngs=nnx.Rngs(1))
  theirs.kernel[...] = ours.kernel_HWIO[...]
  ours.bias_O[...] = jnp.arange(4.0)
  theirs.bias[...] = jnp.arange(4.0)
  y_ours, y_theirs = nnx.jit(lambda a, b, x: (a(x), b(x)))(ours, theirs, _X)
  assert y_ours.shape == (2, 5, 4, 4)
  np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)


def test_bad_input():
  with pytest.raises(ValueError, match="matching C_in"):
    conv.conv2d(_X, _W[:, :, :2])
  with pytest.raises(ValueError, match="valid: 'SAME', 'VALID'"):
    conv.conv2d(_X, _W, padding="FULL")
  with pytest.raises(ValueError, match="stride must be a positive int"):
    conv.conv2d(_X, _W, stride=0)
  with pytest.raises(ValueError, match="larger than the padded input"):
    conv.conv2d(_X[:, :2, :2], _W)
