"""LeNet-style convolutional classifier (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"), with ReLU and max-pooling as in modern re-implementations.

    conv5×5(c1) → ReLU → maxpool2 → conv5×5(c2) → ReLU → maxpool2 → FC(f1) → ReLU → FC(f2) → ReLU → FC(C)

Images are `[B, H, W, C]` (NHWC). The classic LeNet-5 widths are (6, 16, 120, 84); the default here
is wider (32, 64, 256, 128), which Fashion-MNIST rewards (WORKSPACE.md records both).
"""

from collections.abc import Sequence

import jax
from flax import nnx

from genfm.foundations.mlp import to_float


class LeNet(nnx.Module):
  """Two 5×5 'SAME' conv + pool stages, then a 3-layer MLP head."""

  def __init__(self, image_shape: Sequence[int], num_classes: int,
               channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (256, 128),
               *, dropout: float = 0.0, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = tuple(image_shape)
    self.conv1 = nnx.Conv(c, channels[0], (5, 5), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(channels[0], channels[1], (5, 5), padding="SAME", rngs=rngs)
    flat = (h // 4) * (w // 4) * channels[1]               # two 2×2 pools: H/4 × W/4
    self.fc1 = nnx.Linear(flat, hidden[0], rngs=rngs)
    self.fc2 = nnx.Linear(hidden[0], hidden[1], rngs=rngs)
    self.head = nnx.Linear(hidden[1], num_classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if tuple(x_BHWC.shape[1:]) != self.image_shape:
      raise ValueError(f"LeNet built for images {self.image_shape} (H, W, C), got batch of shape "
                       f"{x_BHWC.shape}")
    x = to_float(x_BHWC)
    x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))   # [B, H/2, W/2, c1]
    x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))   # [B, H/4, W/4, c2]
    x = x.reshape(x.shape[0], -1)
    x = self.dropout(jax.nn.relu(self.fc1(x)))
    x = self.dropout(jax.nn.relu(self.fc2(x)))
    return self.head(x)                                                      # [B, C] logits
