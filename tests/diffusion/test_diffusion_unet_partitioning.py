"""Tests for `UNet.PARAM_AXES`: every parameter matched at its rank (with and without labels,
cross-attention, RGB, encoder-only), conv C_in on `embed` (FSDP, 1910.02054) except the image
channels, the attention / time-MLP Megatron pairs (1909.08053), and per-device sizes on a mesh."""

import math

from flax import nnx
from jax.sharding import PartitionSpec as P
import pytest

from genfm.diffusion import unet
from genfm.foundations import partitioning

VARIANTS = {
    "default": dict(),
    "class_cond_attn16": dict(num_classes=10, attn_resolutions=(16, 8), image_size=16),
    "text_cross_attn": dict(context_dim=24, cross_attn_resolutions=(16, 8), image_size=16,
                            num_heads=2),
    "rgb_two_blocks": dict(image_channels=3, num_res_blocks=2, channel_mults=(1, 2)),
}


def _abstract(cfg, **kw):
  return nnx.eval_shape(lambda: unet.UNet(cfg, rngs=nnx.Rngs(0), **kw))


def _shapes(model):
  return {partitioning.path_str(p): v.shape
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_param_matched_with_its_rank(name):
  model = _abstract(unet.UNetConfig(**VARIANTS[name]))
  assert partitioning.unmatched(model) == []
  axes, shapes = partitioning.param_axes(model), _shapes(model)
  assert axes.keys() == shapes.keys()
  for path, a in axes.items():
    if path.endswith(("bias", "scale")):
      assert set(a) == {None}, path                     # GroupNorm and biases: replicated
    elif path.endswith("conv_in/kernel"):
      assert a == (None, None, None, "conv_out")        # C_in = the image's channels
    elif path.endswith("conv_out/kernel") and path.startswith("conv_out"):
      assert a == (None, None, "embed", None)           # C_out = the image's channels
    else:
      assert a.count("embed") == 1, path                # every other matrix / conv: FSDP
  if "cross_attn" in name:
    assert partitioning.param_axes(model)["mid_xattn/k/kernel"] == ("embed", "heads")


def test_encoder_only_copy_is_matched():
  model = _abstract(unet.UNetConfig(num_classes=10), encoder_only=True)
  assert partitioning.unmatched(model) == []
  assert not any(p.startswith(("up/", "conv_out")) for p in partitioning.param_axes(model))


def test_megatron_pairs_share_their_model_axis():
  axes = partitioning.param_axes(_abstract(unet.UNetConfig(**VARIANTS["text_cross_attn"])))
  assert axes["temb1/kernel"][1] == axes["temb2/kernel"][0] == "mlp"
  for pre in ("mid_attn/", "down/0/attn/", "up/0/attn/"):
    if pre + "qkv/kernel" in axes:
      assert axes[pre + "qkv/kernel"][1] == axes[pre + "proj/kernel"][0] == "heads"
  assert axes["mid_xattn/q/kernel"][1] == axes["mid_xattn/out/kernel"][0] == "heads"


def test_fashion_unet_divides_fsdp8_and_model2():
  """The fashion_ddpm U-Net (base 16, mults 1/2/2; C ∈ {16, 32, 48, 64}) shards on fsdp = 8
  × model = 2 without a divisibility error; under fsdp = 8 every kernel and table except conv_in
  is 1/8 per device, every bias and norm scale whole."""
  cfg = unet.UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attn_resolutions=(),
                        num_classes=10)
  model = _abstract(cfg)
  mesh = {"data": 1, "fsdp": 8, "model": 2}
  specs = partitioning.model_specs(model, partitioning.DEFAULT_RULES, mesh)
  assert specs["conv_in/kernel"] == P()                 # conv_out → None by default
  assert specs["down/0/res/conv1/kernel"] == P(None, None, "fsdp")
  assert specs["mid_attn/qkv/kernel"] == P("fsdp", "model")
  assert specs["mid_attn/proj/kernel"] == P("model", "fsdp")
  fsdp = {"fsdp": 8}
  specs = partitioning.model_specs(model, partitioning.DEFAULT_RULES, fsdp)
  for path, shape in _shapes(model).items():
    pieces = math.prod(partitioning.shards(specs[path], fsdp))
    whole = path.endswith(("bias", "scale")) or path == "conv_in/kernel"
    assert pieces == (1 if whole else 8), path
