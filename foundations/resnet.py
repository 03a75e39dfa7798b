"""A small ResNet for 28×28 / 32×32 images (He et al. 1512.03385, "Deep Residual Learning").

Each basic block computes  y = ReLU(F(x) + shortcut(x))  with  F = BN∘conv3×3∘ReLU∘BN∘conv3×3
(eq. (1) of 1512.03385: y = F(x, {W_i}) + x); the shortcut is the identity, or a 1×1 strided
projection W_s x when the shape changes (eq. (2)). Stages double the width and halve the
resolution, as in the paper's CIFAR networks (Sec. 4.2), here with `blocks_per_stage` blocks each.
The last BatchNorm scale of every block starts at zero ("zero-init residual", 1706.02677 §5.1),
so each block is the identity at initialisation.
"""

from collections.abc import Sequence

import jax
from flax import nnx

from genfm.foundations.mlp import to_float


class BasicBlock(nnx.Module):
  """Two 3×3 convolutions with BatchNorm and a (projected) skip connection."""

  def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
    conv = lambda a, b, k, s: nnx.Conv(a, b, (k, k), strides=(s, s), padding="SAME",
                                       use_bias=False, rngs=rngs)
    self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs)
    self.conv2 = conv(c_out, c_out, 3, 1)
    self.bn2 = nnx.BatchNorm(c_out, momentum=0.9, scale_init=nnx.initializers.zeros, rngs=rngs)
    self.project = stride != 1 or c_in != c_out              # eq. (2): y = F(x) + W_s x
    if self.project:
      self.proj = conv(c_in, c_out, 1, stride)
      self.proj_bn = nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    f = jax.nn.relu(self.bn1(self.conv1(x_BHWC)))
    f = self.bn2(self.conv2(f))
    shortcut = self.proj_bn(self.proj(x_BHWC)) if self.project else x_BHWC
    return jax.nn.relu(f + shortcut)                          # eq. (1): y = F(x) + x


class ResNet(nnx.Module):
  """stem conv3×3 → stages of BasicBlocks (width ×2, stride 2 between stages) → GAP → linear."""

  def __init__(self, image_shape: Sequence[int], num_classes: int,
               widths: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 2,
               *, rngs: nnx.Rngs):
    self.image_shape = tuple(image_shape)
    c = image_shape[-1]
    self.stem = nnx.Conv(c, widths[0], (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(widths[0], momentum=0.9, rngs=rngs)
    blocks, c_in = [], widths[0]
    for i, w in enumerate(widths):
      for j in range(blocks_per_stage):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(BasicBlock(c_in, w, stride, rngs=rngs))
        c_in = w
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(c_in, num_classes, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if tuple(x_BHWC.shape[1:]) != self.image_shape:
      raise ValueError(f"ResNet built for images {self.image_shape} (H, W, C), got batch of shape "
                       f"{x_BHWC.shape}")
    x = jax.nn.relu(self.stem_bn(self.stem(to_float(x_BHWC))))
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))                    # global average pool → [B, C]
