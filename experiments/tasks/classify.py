"""Image classification with cross-entropy: the MLP / LeNet / ResNet experiments of foundations/.

    L(θ) = −(1/B) Σ_b log softmax(f_θ(x_b))[y_b]

Augmentation (random crop after zero-padding, horizontal flip) runs on device inside the jitted
loss, keyed by the step's PRNG key, so it is reproducible on resume.

`config.compute_dtype = "bfloat16"` trains in mixed precision (Micikevicius et al. 1710.03740):
the loop keeps fp32 master weights and optimizer state; the loss casts a bf16 copy of the params
and the input (§3.1), so forward and backward run in bf16 and the gradient arrives in fp32 through
the cast; logits go back to fp32 before the softmax cross-entropy (§3.3). bf16 has fp32's 8-bit
exponent, so it needs no loss scaling (§3.2); fp16 would, and that lives in the optimizer step the
shared loop owns — `genfm.foundations.mixed_precision` has the dynamic loss scaler and its test.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments import data
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.foundations import conv as scratch_conv
from genfm.foundations.cnn import LeNet
from genfm.foundations.mixed_precision import cast_floats
from genfm.foundations.mlp import MLP, to_float
from genfm.foundations.residual import DeepNet
from genfm.foundations.resnet import ResNet
from genfm.transformers.vit import ViT, ViTConfig

MODELS = ("mlp", "lenet", "resnet", "scratch_cnn", "deep_mlp", "vit")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def random_crop_flip(key: jax.Array, x_BHWC: jax.Array, pad: int, flip: bool) -> jax.Array:
  """Per-example random translation by up to `pad` pixels (zero fill) and optional h-flip."""
  b, h, w, _ = x_BHWC.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(x_BHWC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets_B2 = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  rows_BH = offsets_B2[:, :1] + jnp.arange(h)               # gather rows, then columns:
  cols_BW = offsets_B2[:, 1:] + jnp.arange(w)               # batch-elementwise, so it shards
  x_BHWC = jnp.take_along_axis(padded, rows_BH[:, :, None, None], axis=1)
  x_BHWC = jnp.take_along_axis(x_BHWC, cols_BW[:, None, :, None], axis=2)
  if flip:
    do_flip_B = jax.random.bernoulli(k_flip, 0.5, (b,))
    x_BHWC = jnp.where(do_flip_B[:, None, None, None], x_BHWC[:, :, ::-1], x_BHWC)
  return x_BHWC


class ScratchCNN(nnx.Module):
  """LeNet-shaped CNN built only from `genfm.foundations.conv` (sum over the kernel window, pooling
  over window offsets): [conv K×K 'SAME' → ReLU → max-pool 2] per channel width → FC → ReLU → FC."""

  def __init__(self, image_shape: Sequence[int], num_classes: int,
               channels: Sequence[int] = (16, 32), hidden: int = 128,
               kernel_size: int = 3, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    if min(h, w) < 2 ** len(channels):
      raise ValueError(f"ScratchCNN: {len(channels)} 2×2 pools need images of at least "
                       f"{2 ** len(channels)} pixels a side, got {tuple(image_shape)}")
    self.image_shape = tuple(image_shape)
    widths = (c, *channels)
    self.convs = nnx.List([scratch_conv.Conv2D(a, b, kernel_size, padding="SAME", rngs=rngs)
                           for a, b in zip(widths[:-1], widths[1:])])
    for _ in channels:                                     # each 2×2 pool floors H and W by 2
      h, w = h // 2, w // 2
    self.fc = nnx.Linear(h * w * channels[-1], hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if tuple(x_BHWC.shape[1:]) != self.image_shape:
      raise ValueError(f"ScratchCNN built for images {self.image_shape} (H, W, C), got batch of "
                       f"shape {x_BHWC.shape}")
    x = to_float(x_BHWC)
    for conv in self.convs:
      x = scratch_conv.max_pool2d(jax.nn.relu(conv(x)), 2)   # [B, H/2, W/2, c_l]
    return self.head(jax.nn.relu(self.fc(x.reshape(x.shape[0], -1))))  # [B, C] logits


class DeepMLP(nnx.Module):
  """flatten → Linear(P, D) → `foundations.residual.DeepNet` (depth square layers, plain or with
  identity shortcuts, eq. (1) of 1512.03385) → Linear(D, C): the residual-vs-plain experiment."""

  def __init__(self, in_features: int, num_classes: int, width: int = 128, depth: int = 20, *,
               residual: bool, activation: str = "sigmoid", rngs: nnx.Rngs):
    self.in_features = in_features
    self.stem = nnx.Linear(in_features, width, rngs=rngs)
    self.body = DeepNet(width, depth, residual=residual, activation=activation, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x_BP = to_float(x).reshape(x.shape[0], -1)
    if x_BP.shape[1] != self.in_features:
      raise ValueError(f"DeepMLP expects {self.in_features} input features per example, got "
                       f"input of shape {x.shape}")
    h_BD = self.stem(x_BP)
    return self.head(self.body(h_BD))                        # [B, C] logits


class ClassificationTask(Task):
  """`config.dataset` images → `config.model.name` (one of `MODELS`) → softmax CE."""

  def __init__(self, config):
    super().__init__(config)
    self._train = data.load(config.dataset, "train")
    info = self._train.info
    if info.image_shape is None or info.num_classes is None:
      raise ConfigError(f"dataset {config.dataset!r} is not a labelled image set; the classify "
                        "task needs one (e.g. fashion_mnist, digits, mnist_subset, tfds:mnist)")
    self.image_shape, self.num_classes = tuple(info.image_shape), info.num_classes
    if config.model.name not in MODELS:
      raise unknown_choice("config.model.name", config.model.name, MODELS)
    self.compute_dtype = config.get("compute_dtype", "float32")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise unknown_choice("config.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)

  def train_source(self):
    return self._train

  def eval_sources(self):
    return {"test": data.load(self.config.dataset, "test")}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    kwargs = {k: v for k, v in self.config.model.items() if k != "name"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    name = self.config.model.name
    try:
      if name in ("mlp", "deep_mlp"):
        h, w, c = self.image_shape
        return (MLP if name == "mlp" else DeepMLP)(h * w * c, self.num_classes, **kwargs, rngs=rngs)
      if name == "vit":                          # config.model keys are ViTConfig fields
        h, w, c = self.image_shape
        try:
          cfg = ViTConfig(image_size=(h, w), channels=c, num_classes=self.num_classes, **kwargs)
        except ValueError as e:
          raise ConfigError(f"config.model for 'vit': {e}") from None
        return ViT(cfg, rngs=rngs)
      cls = {"lenet": LeNet, "resnet": ResNet, "scratch_cnn": ScratchCNN}[name]
      return cls(self.image_shape, self.num_classes, **kwargs, rngs=rngs)
    except TypeError as e:                       # an unknown key under config.model
      raise ConfigError(f"config.model for {name!r}: {e}") from None

  def _logits(self, model, x_BHWC: jax.Array) -> jax.Array:
    """fp32 logits [B, C]; the network itself runs in `config.compute_dtype`."""
    if self.compute_dtype == "float32":
      return model(x_BHWC)
    dtype = COMPUTE_DTYPES[self.compute_dtype]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    low = nnx.merge(graphdef, cast_floats(params, dtype), rest)   # bf16 copy of the fp32 master
    logits_BC = low(to_float(x_BHWC).astype(dtype))
    # BatchNorm statistics (kept fp32) and dropout RNG counts advanced on the copy: hand them back.
    nnx.update(model, nnx.split(low, nnx.Param, ...)[2])
    return logits_BC.astype(jnp.float32)                # fp32 softmax CE (§3.3 of 1710.03740)

  def loss(self, model, batch: Batch, key: jax.Array):
    x = batch["image"]
    aug = self.config.get("augment", None)
    if aug is not None and aug.get("crop_pad", 0) > 0:
      x = random_crop_flip(key, x, aug.crop_pad, aug.get("flip", False))
    logits_BC = self._logits(model, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch["label"]).mean()
    accuracy = (logits_BC.argmax(-1) == batch["label"]).mean()
    return loss, {"accuracy": accuracy}

  def eval_metrics(self, model, batch: Batch):
    logits_BC = self._logits(model, batch["image"]).astype(jnp.float32)
    mask_B = batch["mask"]
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch["label"])
    correct_B = (logits_BC.argmax(-1) == batch["label"]).astype(jnp.float32)
    return {"loss": (ce_B * mask_B).sum(), "accuracy": (correct_B * mask_B).sum(),
            "count": mask_B.sum()}
