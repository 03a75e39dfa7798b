"""Logical axes → PartitionSpecs (foundations/partitioning.py), against flax's own rule mapping."""

import flax.linen as nn
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from genfm.foundations import partitioning as part

RULES = part.DEFAULT_RULES
CASES = [("vocab", "embed"), ("embed", "heads", None), ("heads", None, "embed"),
         ("embed", "mlp"), ("mlp", "embed"), (None, "embed", "mlp"), ("batch", None),
         ("embed", "kv_heads", None), (None, None, "embed", "conv_out"), ("layers", "embed")]


def _pad(spec, n):
  return tuple(spec) + (None,) * (n - len(spec))


@pytest.mark.parametrize("axes", CASES)
def test_mapping_equals_flax_logical_to_mesh_axes(axes):
  """With every mesh axis > 1 our mapping is flax.linen's (an independent implementation)."""
  ours = part.logical_to_spec(axes, RULES)
  theirs = nn.logical_to_mesh_axes(axes, RULES)
  assert _pad(ours, len(axes)) == tuple(theirs)


def test_megatron_split_is_column_then_row():
  """q/k/v and FFN-up split their OUTPUT dim over `model`, attn-out and FFN-down their INPUT
  dim: the pair needs one all-reduce (1909.08053 §3). FSDP takes the other (`embed`) dim."""
  shape = {"data": 2, "fsdp": 2, "model": 2}
  assert part.logical_to_spec(("embed", "heads", None), RULES, shape) == P("fsdp", "model")
  assert part.logical_to_spec(("heads", None, "embed"), RULES, shape) == P("model", None, "fsdp")
  assert part.logical_to_spec(("embed", "mlp"), RULES, shape) == P("fsdp", "model")
  assert part.logical_to_spec(("mlp", "embed"), RULES, shape) == P("model", "fsdp")


def test_size_one_mesh_axes_are_dropped_and_a_mesh_axis_splits_one_dim():
  assert part.logical_to_spec(("embed", "mlp"), RULES, {"data": 8, "fsdp": 1, "model": 1}) == P()
  assert part.logical_to_spec(("batch",), RULES, {"data": 4, "fsdp": 2, "model": 1}) == P(
      ("data", "fsdp"))
  assert part.logical_to_spec(("batch",), RULES, {"data": 1, "fsdp": 8, "model": 1}) == P("fsdp")
  # both dims map to `model`: only the first takes it
  assert part.logical_to_spec(("heads", "mlp"), RULES, {"data": 1, "fsdp": 1, "model": 4}) == P(
      "model")
  assert part.shards(P(("data", "fsdp"), "model"), {"data": 2, "fsdp": 4, "model": 3}) == [8, 3]


class _Toy(nnx.Module):
  PARAM_AXES = ((r"^up/kernel$", ("embed", "mlp")), (r"^down/kernel$", ("mlp", "embed")),
                (r"bias$", (None,)))

  def __init__(self, rngs):
    self.up = nnx.Linear(8, 32, rngs=rngs)
    self.down = nnx.Linear(32, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, use_bias=False, rngs=rngs)


def test_param_axes_first_match_and_unmatched():
  m = _Toy(nnx.Rngs(0))
  axes = part.param_axes(m)
  assert axes["up/kernel"] == ("embed", "mlp") and axes["down/kernel"] == ("mlp", "embed")
  assert axes["up/bias"] == (None,)
  assert axes["head/kernel"] == (None, None)            # no row: replicated
  assert part.unmatched(m) == ["head/kernel"]
  specs = part.model_specs(m, RULES, {"data": 1, "fsdp": 2, "model": 4})
  assert specs["up/kernel"] == P("fsdp", "model") and specs["down/kernel"] == P("model", "fsdp")
  assert specs["head/kernel"] == P()


def test_bad_tables_and_shapes_say_what_is_wrong():
  class WrongRank(_Toy):
    PARAM_AXES = ((r"^up/kernel$", ("embed",)),)

  class WrongName(_Toy):
    PARAM_AXES = ((r"^up/kernel$", ("embed", "hidden")),)
  wrong = WrongRank(nnx.Rngs(0))       # a row of the wrong rank matches nothing ...
  assert part.param_axes(wrong)["up/kernel"] == (None, None)
  assert "up/kernel" in part.unmatched(wrong)   # ... and the model's coverage test says so
  with pytest.raises(ValueError, match=r"unknown logical axes \['hidden'\]"):
    part.param_axes(WrongName(nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"down/kernel has dimension 0 of size 32 \(logical axis "
                     r"'mlp'\), not divisible by mesh axis 'model' = 3"):
    part.model_specs(_Toy(nnx.Rngs(0)), RULES, {"data": 1, "fsdp": 1, "model": 3})
