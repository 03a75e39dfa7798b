"""SFT: response-only loss, packing with segment ids, ragged greedy decoding (transformers/sft.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.transformers import gpt, prompt_tuning, sft

CFG = gpt.GPTConfig(vocab_size=41, context_len=32, num_layers=2, d_model=32, num_heads=4)
FWD = nnx.jit(lambda m, t, p, s: m(t, positions_BT=p, segment_ids_BT=s))


def examples(n=9, seed=0):
  rng = np.random.default_rng(seed)       # ragged: every example its own prompt/response length
  return [sft.encode_example(rng.integers(1, 41, rng.integers(2, 10)),
                             rng.integers(1, 41, rng.integers(1, 7)), 32) for _ in range(n)]


def test_encode_example_masks_exactly_the_response_targets():
  ex = sft.encode_example([5, 6, 7], [8, 9], 8)
  np.testing.assert_array_equal(ex["inputs"], [5, 6, 7, 8])
  np.testing.assert_array_equal(ex["targets"], [6, 7, 8, 9])
  np.testing.assert_array_equal(ex["loss_mask"], [0, 0, 1, 1])   # first and last response token
  ex = sft.encode_example([5], [8], 8)                               # shortest: one target
  np.testing.assert_array_equal(ex["loss_mask"], [1])
  with pytest.raises(ValueError, match=r"prompt \(30 tokens\) \+ response \(4\) needs 33 "
                                       r"positions > context 32"):
    sft.encode_example(np.ones(30), np.ones(4), 32)


def test_loss_ignores_prompt_targets_exactly():
  """Changing the targets at prompt and padding positions changes neither loss nor gradients."""
  batch = sft.pad_rows(examples(), 32)
  model = gpt.GPT(CFG, rngs=nnx.Rngs(0))
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def loss_and_grad(targets):
    f = lambda p: sft.sft_loss(nnx.merge(graph, p, rest)(jnp.asarray(batch["inputs"])), targets,
                               jnp.asarray(batch["loss_mask"]))
    return jax.value_and_grad(f)(params)

  l0, g0 = loss_and_grad(jnp.asarray(batch["targets"]))
  noise = np.random.default_rng(1).integers(0, 41, batch["targets"].shape)
  scrambled = np.where(batch["loss_mask"] > 0, batch["targets"], noise)
  l1, g1 = loss_and_grad(jnp.asarray(scrambled))
  assert float(l0) == float(l1)
  jax.tree.map(np.testing.assert_array_equal, g0, g1)
  changed = np.where(batch["loss_mask"] > 0, noise, batch["targets"])   # response targets do count
  assert float(loss_and_grad(jnp.asarray(changed))[0]) != float(l0)


def test_pack_layout():
  exs = examples()
  packed = sft.pack(exs, 32)
  lengths = [len(e["inputs"]) for e in exs]
  assert packed["inputs"].shape[0] < len(exs)
  assert int((packed["segment_ids"] > 0).sum()) == sum(lengths)
  # first fit, in order: example 0 opens row 0 as segment 1 at offset 0, positions from 0
  np.testing.assert_array_equal(packed["inputs"][0, :lengths[0]], exs[0]["inputs"])
  np.testing.assert_array_equal(packed["positions"][0, :lengths[0]], np.arange(lengths[0]))
  for row_pos, row_seg in zip(packed["positions"], packed["segment_ids"]):
    for s in set(row_seg.tolist()) - {0}:
      np.testing.assert_array_equal(row_pos[row_seg == s], np.arange((row_seg == s).sum()))
  with pytest.raises(ValueError, match="does not fit a row of 4"):
    sft.pack(exs, 4)


def test_packed_examples_give_their_unpacked_losses():
  exs = examples()
  model = gpt.GPT(CFG, rngs=nnx.Rngs(1))

  def losses(b):
    logits = FWD(model, jnp.asarray(b["inputs"]), jnp.asarray(b["positions"]),
                 jnp.asarray(b["segment_ids"]))
    s, c = sft.per_example_losses(logits, jnp.asarray(b["targets"]), jnp.asarray(b["loss_mask"]),
                                  jnp.asarray(b["segment_ids"]), 8)
    return np.asarray(s), np.asarray(c)

  packed = sft.pack(exs, 32)
  s_p, c_p = losses(packed)
  s_u, c_u = losses(sft.pad_rows(exs, 32))
  order = [(r, s) for r in range(packed["inputs"].shape[0])
           for s in sorted(set(packed["segment_ids"][r].tolist()) - {0})]
  # match each example to its (row, segment) by its inputs
  for i, ex in enumerate(exs):
    r, s = next((r, s) for r, s in order
                if np.array_equal(packed["inputs"][r][packed["segment_ids"][r] == s],
                                  ex["inputs"]))
    assert c_p[r, s - 1] == c_u[i, 0] == ex["loss_mask"].sum()
    np.testing.assert_allclose(s_p[r, s - 1], s_u[i, 0], rtol=1e-5)


def test_complete_equals_a_per_row_greedy_loop():
  model = gpt.GPT(CFG, rngs=nnx.Rngs(2))
  prompts = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9, 10])]   # ragged
  got = sft.complete(model, prompts, 3)
  last = nnx.jit(lambda m, t: m(t)[0, -1])
  for p, g in zip(prompts, got):                 # unpadded, one row at a time
    seq = list(p)
    for _ in range(3):
      seq.append(int(jnp.argmax(last(model, jnp.array([seq])))))
    np.testing.assert_array_equal(g, seq[len(p):])
  prompt_tuning.add_soft_prompt(model, 20, rngs=nnx.Rngs(0))   # 12 of 32 positions left
  with pytest.raises(ValueError, match=r"\(7 tokens\) \+ 6 new tokens = 13 > the 12 positions"):
    sft.complete(model, prompts, 6)


def test_packing_through_the_flash_kernel_equals_the_mask_path():
  """attention_impl='pallas' hands the segment ids to the flash kernel (interpret mode on CPU);
  the reference path builds the same-segment mask: equal logits."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  cfg = gpt.GPTConfig(vocab_size=41, context_len=16, num_layers=1, d_model=32, num_heads=2)
  ref = gpt.GPT(cfg, rngs=nnx.Rngs(0))
  flash = gpt.GPT(dataclasses.replace(cfg, attention_impl="pallas"), rngs=nnx.Rngs(0))
  tokens = jnp.arange(32).reshape(2, 16) % 41
  seg = jnp.array([[1] * 5 + [2] * 7 + [3] * 4, [1] * 16])
  pos = jnp.array([list(range(5)) + list(range(7)) + list(range(4)), list(range(16))])
  np.testing.assert_allclose(flash(tokens, positions_BT=pos, segment_ids_BT=seg),
                             ref(tokens, positions_BT=pos, segment_ids_BT=seg), atol=1e-5)
