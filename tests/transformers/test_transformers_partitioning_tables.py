"""The logical-axis tables (`PARAM_AXES`) of BERT, T5 and the DiT: every parameter has a row of
its rank, each named dimension has the size its name promises, and attention / FFN follow the
Megatron split (1909.08053 sec. 3): the first matmul (q/k/v, FFN up) is column-parallel, its
OUTPUT dim split; the second (attention out, FFN down) row-parallel, its INPUT dim split."""

import dataclasses
import re

from flax import nnx
import jax
import pytest

from genfm.diffusion import dit
from genfm.foundations import partitioning
from genfm.transformers import bert, t5

KEY = lambda s: jax.random.key(s, impl="rbg")  # pylint: disable=unnecessary-lambda-assignment

# Tiny configs whose sizes differ from each other (D 32, N 4, H 8, F 96, V 50, text width 24),
# so a dimension labelled with the wrong name is caught by its size.
BERT = bert.BertConfig(vocab_size=50, max_len=16, num_layers=2, d_model=32, num_heads=4,
                       d_ff=96, dropout=0.0)
T5 = t5.T5Config(vocab_size=50, num_layers=2, num_decoder_layers=1, d_model=32, num_heads=4,
                 d_ff=96, num_buckets=8, max_distance=16, max_len=16)
DIT = dit.DiTConfig(image_size=8, in_channels=1, num_classes=10, hidden=32, depth=2, num_heads=4,
                    mlp_ratio=3.0, freq_dim=16)

MODELS = {  # name → (class, config): library defaults (full size, abstract) and variants
    "bert-base": (bert.Bert, bert.BertConfig()),
    "bert-tiny": (bert.Bert, BERT),
    "bert-pre-sinusoidal": (bert.Bert, dataclasses.replace(
        BERT, norm_placement="pre", positions="sinusoidal", type_vocab_size=0)),
    "bert-alibi": (bert.Bert, dataclasses.replace(BERT, positions="alibi")),
    "t5-small": (t5.T5, t5.T5Config()),
    "t5-tiny": (t5.T5, T5),
    "t5-swiglu-learned-layernorm": (t5.T5, dataclasses.replace(
        T5, ffn="swiglu", positions="learned", norm="layernorm")),
    "dit-S/2": (dit.DiT, dit.dit_config("S/2")),
    "dit-tiny": (dit.DiT, DIT),
    "dit-unconditional-sigma": (dit.DiT, dataclasses.replace(DIT, num_classes=None,
                                                             learn_sigma=True)),
    "dit-text": (dit.DiT, dataclasses.replace(DIT, context_dim=24)),
}
TINY = ("bert-tiny", "bert-pre-sinusoidal", "bert-alibi", "t5-tiny",
        "t5-swiglu-learned-layernorm", "dit-tiny", "dit-unconditional-sigma", "dit-text")


def _abstract(name, cls=None):
  """The model with ShapeDtypeStruct parameters: full sizes cost no memory (nnx.eval_shape)."""
  default_cls, cfg = MODELS[name]
  return nnx.eval_shape(lambda: (cls or default_cls)(cfg, rngs=nnx.Rngs(KEY(0))))


def _shapes(model):
  return {partitioning.path_str(p): tuple(v.shape)
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _sizes(name):
  """Sizes each logical name may have in this model (from its config, by hand)."""
  cls, cfg = MODELS[name]
  if cls is dit.DiT:
    D, N, F = cfg.hidden, cfg.num_heads, cfg.mlp_dim
    return {"embed": {D, cfg.context_dim}, "heads": {N, D},  # 3-D q/k/v: N; cross-attn 2-D: N·H
            "mlp": {F, 6 * D, 2 * D}, "vocab": set()}        # FFN; block and final adaLN
  D, N, V = cfg.d_model, cfg.num_heads, cfg.vocab_size
  F = cfg.ffn_dim if cls is bert.Bert else cfg.d_ff
  return {"embed": {D}, "heads": {N}, "mlp": {F}, "vocab": {V}}


def megatron_violations(model) -> list[str]:
  """Rows that break the column/row split: q/k/v and FFN up/gate must carry heads/mlp on an
  OUTPUT dim (not dim 0, the input D) and `embed` on dim 0; the attention out-projection and
  FFN down must carry heads/mlp on dim 0 (their input) and `embed` on their last dim."""
  bad = []
  for path, axes in partitioning.param_axes(model).items():
    if not path.endswith("kernel"):
      continue
    if re.search(r"attn/((q|k|v)_proj|q|k|v)/kernel$", path):
      ok = axes[0] == "embed" and "heads" in axes[1:]
    elif re.search(r"attn/(o_proj|out)/kernel$", path):
      ok = axes[0] == "heads" and axes[-1] == "embed"
    elif re.search(r"(ffn|mlp)/(up|gate)/kernel$", path):
      ok = axes == ("embed", "mlp")
    elif re.search(r"(ffn|mlp)/down/kernel$", path):
      ok = axes == ("mlp", "embed")
    else:
      continue
    if not ok:
      bad.append(f"{path}: {axes}")
  return bad


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_has_a_row_of_its_rank(name):
  model = _abstract(name)
  assert partitioning.unmatched(model) == []
  table = [(re.compile(rx), axes) for rx, axes in type(model).PARAM_AXES]
  for path, shape in _shapes(model).items():
    axes = next(a for rx, a in table if rx.search(path))  # first match wins, as the library
    assert len(axes) == len(shape), (path, axes, shape)
    assert set(axes) <= set(partitioning.LOGICAL_AXES) | {None}, (path, axes)
  assert partitioning.param_axes(model).keys() == _shapes(model).keys()


@pytest.mark.parametrize("name", TINY)
def test_named_dims_have_the_size_of_their_name(name):
  model, sizes = _abstract(name), _sizes(name)
  shapes, seen = _shapes(model), set()
  for path, axes in partitioning.param_axes(model).items():
    for d, a in enumerate(axes):
      if a is not None:
        seen.add(a)
        assert shapes[path][d] in sizes[a], (path, d, a, shapes[path])
  # Every model splits its width (FSDP) and its heads and hidden units (TP); the LMs their vocab.
  assert {"embed", "heads", "mlp"} <= seen
  assert ("vocab" in seen) == (MODELS[name][0] is not dit.DiT)


@pytest.mark.parametrize("name", TINY)
def test_attention_and_ffn_follow_the_megatron_split(name):
  model = _abstract(name)
  assert megatron_violations(model) == []
  axes = partitioning.param_axes(model)
  n_attn = sum(bool(re.search(r"attn/(q_proj|o_proj|q|out)/kernel$", p)) for p in axes)
  cfg = MODELS[name][1]
  want = {bert.Bert: lambda: 2 * cfg.num_layers,  # q and out per attention
          t5.T5: lambda: 2 * (cfg.num_layers + 2 * cfg.decoder_layers),
          dit.DiT: lambda: 2 * cfg.depth * (2 if cfg.context_dim else 1)}[type(model)]()
  assert n_attn == want  # the check above saw every attention


def _swapped(cls):
  """The class with the column and row rows' axes exchanged (a wrong table of the same ranks)."""
  def swap(rx, axes):
    if re.search(r"\(q\|k\|v\)(_proj)?/kernel\$$", rx) and len(axes) == 3:
      return ("heads", None, "embed")
    if re.search(r"o_proj/kernel\$$", rx):
      return ("embed", "heads", None)
    if re.search(r"\(q\|k\|v\)/kernel\$$", rx):
      return ("heads", "embed")
    if re.search(r"out/kernel\$$", rx):
      return ("embed", "heads")
    return axes
  return type(cls.__name__, (cls,), {
      "PARAM_AXES": tuple((rx, swap(rx, a)) for rx, a in cls.PARAM_AXES)})


@pytest.mark.parametrize("name", ["bert-tiny", "t5-tiny", "dit-text"])
def test_a_swapped_table_fails_the_megatron_check(name):
  model = _abstract(name, _swapped(MODELS[name][0]))
  assert partitioning.unmatched(model) == []  # still complete and of the right ranks ...
  bad = megatron_violations(model)
  assert any("o_proj" in b for b in bad) and any("q_proj" in b for b in bad)  # ... but wrong
  if name == "dit-text":
    assert any("cross_attn/out" in b for b in bad) and any("cross_attn/k" in b for b in bad)


@pytest.mark.parametrize("name", ["bert-base", "t5-small", "dit-S/2"])
def test_published_sizes_divide_a_2x2_fsdp_by_tp_mesh(name):
  model = _abstract(name)
  specs = partitioning.model_specs(model, partitioning.DEFAULT_RULES,
                                   {"data": 1, "fsdp": 2, "model": 2})
  shapes = _shapes(model)
  q = next(p for p in specs if re.search(r"attn/q_proj/kernel$", p))
  o = next(p for p in specs if re.search(r"attn/o_proj/kernel$", p))
  assert tuple(specs[q]) == ("fsdp", "model") and tuple(specs[o]) == ("model", None, "fsdp")
  # Fraction of the weights each of the 4 devices holds: between 1/4 (all split both ways)
  # and 1/2 (the norms, biases and the small unsplit tables are replicated).
  total = sum(s for sh in shapes.values() for s in [_numel(sh)])
  held = sum(_numel(sh) / _pieces(specs[p]) for p, sh in shapes.items())
  assert 0.25 <= held / total < 0.27, held / total


def test_bert_base_vocabulary_does_not_divide_a_4_way_model_axis():
  # 30,522 = 2 · 3 · 5087: a 4-way model axis is refused in one line naming the table and the
  # fix (map `vocab` to None), not silently replicated.
  with pytest.raises(ValueError, match=r"embed/embedding has dimension 0 of size 30522.*vocab"):
    partitioning.model_specs(_abstract("bert-base"), partitioning.DEFAULT_RULES,
                             {"data": 1, "fsdp": 1, "model": 4})


def _numel(shape):
  n = 1
  for s in shape:
    n *= s
  return n


def _pieces(spec):
  return _numel(partitioning.shards(spec, {"data": 1, "fsdp": 2, "model": 2}))
