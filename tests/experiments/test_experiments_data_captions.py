"""The captioned image set and its QA pairs (experiments/data/captions.py): every word a caption
says about an image is re-derived here from the pixels and the label, by separate code."""

import numpy as np
import pytest

from genfm.experiments.data import captions as cap
from genfm.experiments.data import embedded
from genfm.experiments.errors import ConfigError, DataError


def _measures_by_hand(dataset, images_NHW1):
  """The documented measures by other formulas: a masked mean for brightness, and the width as
  sqrt(E[x²] − E[x]²) over the column profile (captions.py centres first)."""
  img = images_NHW1[..., 0].astype(np.float64) / 255.0
  if dataset == "fashion_mnist":
    first = np.ma.masked_less(img, 1 / 8).mean(axis=(1, 2)).filled(0.0)
  else:
    first = img.reshape(len(img), -1).sum(axis=1)
  p = img.sum(axis=1) / img.sum(axis=(1, 2))[:, None]                    # column profile [N, W]
  xs = np.arange(img.shape[2])
  width = np.sqrt(np.clip(p @ xs ** 2 - (p @ xs) ** 2, 0, None))
  return np.stack([first, width], axis=1)


def _levels_by_hand(dataset, split):
  """Per-class terciles of the train measures (np.percentile), applied to `split`."""
  train = embedded.load_digits_split("train") if dataset == "digits" else \
      embedded.load_fashion_mnist("train")
  other = embedded.load_digits_split(split) if dataset == "digits" else \
      embedded.load_fashion_mnist(split)
  m_train = _measures_by_hand(dataset, train["image"])
  m = _measures_by_hand(dataset, other["image"])
  levels = np.zeros(m.shape, np.int32)
  for c in range(10):
    lo, hi = np.percentile(m_train[train["label"] == c], [100 / 3, 200 / 3], axis=0)
    sel = other["label"] == c
    levels[sel] = (m[sel] > lo).astype(np.int32) + (m[sel] > hi)
  return other, m, levels


@pytest.mark.parametrize("split", ["train", "test"])
def test_digit_captions_say_what_the_pixels_measure(split):
  """Attributes and the caption's words agree with a by-hand recomputation; within each class,
  every image captioned "thin" has less ink than every "thick" one (same for "narrow"/"wide");
  on the train split each class's levels are thirds (terciles), on test roughly so."""
  src = cap.load_captions("digits", split, templates="train")
  rec = src.get_batch(np.arange(len(src)))
  arrays, m, levels = _levels_by_hand("digits", split)
  np.testing.assert_array_equal(rec["image"], arrays["image"])
  np.testing.assert_array_equal(rec["label"], arrays["label"])
  np.testing.assert_array_equal(rec["attributes"], levels)
  for i in range(len(src)):
    words = cap.decode(rec["text"][i]).split()
    assert words[-1] == cap.CLASS_WORDS["digits"][arrays["label"][i]] or \
        words[-2] == cap.CLASS_WORDS["digits"][arrays["label"][i]]       # "there is a .. here"
    for a, (lo, hi) in enumerate((("thin", "thick"), ("narrow", "wide"))):
      assert (lo in words) == (levels[i, a] == 0) and (hi in words) == (levels[i, a] == 2)
  for c in range(10):
    for a in range(2):
      sel = rec["label"] == c
      low, high = m[sel & (levels[:, a] == 0), a], m[sel & (levels[:, a] == 2), a]
      assert low.max() < high.min()
      if split == "train":
        counts = np.bincount(levels[sel, a], minlength=3)     # terciles of the class itself,
        assert np.abs(counts - sel.sum() / 3).max() <= 0.05 * sel.sum() + 1, counts   # up to ties
  assert 0.2 < np.mean(levels == 0) < 0.45 and 0.2 < np.mean(levels == 2) < 0.45


def test_fashion_levels_match_and_dark_is_darker():
  """Fashion-MNIST test split: levels match the by-hand terciles; per class every "dark" image
  has lower mean ink brightness than every "light" one; the docstring's table holds."""
  src = cap.load_captions("fashion_mnist", "test", templates="heldout")
  rec = src.get_batch(np.arange(2000))
  _, m, levels = _levels_by_hand("fashion_mnist", "test")
  np.testing.assert_array_equal(rec["attributes"], levels[:2000])
  for c in range(10):
    sel = rec["label"] == c
    dark = ["dark" in cap.decode(t).split() for t in rec["text"]]
    light = ["light" in cap.decode(t).split() for t in rec["text"]]
    assert m[:2000][sel & np.array(dark), 0].max() < m[:2000][sel & np.array(light), 0].min()
  train = cap.load_captions("fashion_mnist", "train")
  held = cap.load_captions("fashion_mnist", "train", templates="heldout")
  assert cap.decode(train[3]["text"]) == "a dark wide dress"
  assert cap.decode(held[3]["text"]) == "there is a dark wide dress here"
  assert cap.decode(train[4]["text"]) == "a light narrow t-shirt"
  qa = cap.load_qa("fashion_mnist", "train")
  assert [cap.decode(qa[i]["inputs"]) for i in range(3)] == [
      "what is in the image ? boot", "is it dark or light ? light", "is it narrow or wide ? wide"]


def test_deterministic_and_seeded():
  """The same arguments give the same arrays (rebuilt, not the cached object); another seed
  draws other templates for the same images and attributes."""
  build = cap.load_captions.__wrapped__
  a = build("digits", "train", captions_per_image=3)
  b = build("digits", "train", captions_per_image=3)
  c = build("digits", "train", captions_per_image=3, seed=1)
  for k in ("image", "label", "text", "attributes"):
    np.testing.assert_array_equal(a.get_batch(np.arange(len(a)))[k],
                                  b.get_batch(np.arange(len(b)))[k])
  ta, tc = a.get_batch(np.arange(len(a)))["text"], c.get_batch(np.arange(len(c)))["text"]
  assert (ta != tc).any(axis=1).mean() > 0.5
  qa1, qa2 = cap.load_qa.__wrapped__("digits", "test"), cap.load_qa.__wrapped__("digits", "test")
  np.testing.assert_array_equal(qa1.get_batch(np.arange(len(qa1)))["inputs"],
                                qa2.get_batch(np.arange(len(qa2)))["inputs"])


def test_captions_per_image_are_distinct_templates_of_one_image():
  src = cap.load_captions("digits", "train", captions_per_image=4)
  assert len(src) == 4 * 1500
  rec = src.get_batch(np.arange(len(src)))
  texts = rec["text"].reshape(1500, 4, -1)
  assert (rec["label"].reshape(1500, 4) == rec["label"][::4, None]).all()
  for i in range(0, 1500, 50):                # 4 templates, 4 captions: all four, once each
    assert len({tuple(t) for t in texts[i]}) == 4


def test_heldout_templates_never_occur_in_train():
  assert not set(cap.CAPTION_TEMPLATES["train"]) & set(cap.CAPTION_TEMPLATES["heldout"])
  assert not set(cap.CLASS_QUESTIONS["train"]) & set(cap.CLASS_QUESTIONS["heldout"])
  assert not set(cap.ATTRIBUTE_QUESTIONS["train"]) & set(cap.ATTRIBUTE_QUESTIONS["heldout"])
  assert len(cap.CAPTION_TEMPLATES["train"]) >= 4 and len(cap.CAPTION_TEMPLATES["heldout"]) >= 2
  for split in ("train", "test"):
    tr = cap.load_captions("digits", split, captions_per_image=4)
    ho = cap.load_captions("digits", split, templates="heldout", captions_per_image=2)
    seen = {cap.decode(t) for t in tr.get_batch(np.arange(len(tr)))["text"]}
    held = {cap.decode(t) for t in ho.get_batch(np.arange(len(ho)))["text"]}
    assert seen and held and not seen & held
    q_tr = cap.load_qa("digits", split)
    q_ho = cap.load_qa("digits", split, templates="heldout")
    prompts = lambda s: {cap.decode(x[:p]) for x, p in zip(  # noqa: E731
        s.get_batch(np.arange(len(s)))["inputs"], s.get_batch(np.arange(len(s)))["prompt_len"])}
    assert not prompts(q_tr) & prompts(q_ho)


def test_vocab_encode_decode_round_trip():
  assert cap.VOCAB[:3] == ("<pad>", "<bos>", "<eos>") and len(set(cap.VOCAB)) == len(cap.VOCAB)
  assert list(cap.VOCAB[3:]) == sorted(cap.VOCAB[3:]) and "?" in cap.VOCAB
  for text in ("a photo of a thin wide seven", "is it dark or light?", "a t-shirt"):
    ids = cap.encode(text, 12)
    assert ids.dtype == np.int32 and ids.shape == (12,) and ids[0] == cap.BOS
    n = len(cap.tokenize(text))
    assert ids[n + 1] == cap.EOS and (ids[n + 2:] == cap.PAD).all()
    assert cap.decode(ids) == " ".join(cap.tokenize(text))
  assert cap.tokenize("is it dark?") == ["is", "it", "dark", "?"]
  np.testing.assert_array_equal(cap.encode("a boot", 3, bos=False, eos=False)[2:], [cap.PAD])
  assert cap.decode([cap.BOS, cap.VOCAB.index("a"), cap.EOS, cap.VOCAB.index("bag")]) == "a"
  prompts = cap.class_prompts("digits", 8)
  assert prompts.shape == (10, len(cap.ZERO_SHOT_TEMPLATES), 8)
  assert cap.decode(prompts[7, 0]) == cap.ZERO_SHOT_TEMPLATES[0].format(cls="seven")


def test_too_long_text_is_one_data_error_line():
  with pytest.raises(DataError, match=r"is 9 tokens .* context of 4; raise config.text_len to "
                                      r"≥ 9") as e:
    cap.encode("there is a thin wide seven here", 4)
  assert "\n" not in str(e.value)
  # The bound named is the longest text's: 7 words + BOS + EOS for captions ("a photo of a thin
  # narrow seven"); for QA, BOS + "would you say thin or thick ? thick" + EOS is 10 tokens, 9
  # input positions.
  with pytest.raises(DataError, match=r"longest caption .* is 9 tokens .* context of 8; raise "
                                      r"config.text_len to ≥ 9$") as e:
    cap.load_captions("digits", "test", text_len=8)
  assert "\n" not in str(e.value)
  assert cap.load_captions("digits", "test", text_len=9)[0]["text"].shape == (9,)
  with pytest.raises(DataError, match=r"longest question-answer .* is 10 tokens .* context of 8; "
                                      r"raise config.text_len to ≥ 9$"):
    cap.load_qa("digits", "test", text_len=8)
  assert cap.load_qa("digits", "test", text_len=9)[0]["inputs"].shape == (9,)
  with pytest.raises(DataError, match="outside the caption vocabulary"):
    cap.encode("a photo of a cat", 16)
  with pytest.raises(ConfigError, match="unknown template set 'test'"):
    cap.load_captions("digits", "test", templates="test")
  with pytest.raises(ConfigError, match="unknown captioned data set 'mnist'"):
    cap.load_qa("mnist", "test")


@pytest.mark.parametrize("templates", ["train", "heldout"])
def test_qa_records(templates):
  """Answers re-derived from labels and the by-hand levels; one class question per image then one
  per extreme attribute; targets = inputs shifted; the mask marks exactly answer + final EOS."""
  qa = cap.load_qa("digits", "test", templates=templates, text_len=12)
  r = qa.get_batch(np.arange(len(qa)))
  arrays, _, levels = _levels_by_hand("digits", "test")
  expected = []                      # (image index, kind, answer word) in record order
  for i, (y, lv) in enumerate(zip(arrays["label"], levels)):
    expected.append((i, 0, cap.CLASS_WORDS["digits"][y]))
    for a, (lo, hi) in enumerate((("thin", "thick"), ("narrow", "wide"))):
      if lv[a] != 1:
        expected.append((i, a + 1, lo if lv[a] == 0 else hi))
  assert len(qa) == len(expected) > len(arrays["label"])
  img = np.array([e[0] for e in expected])
  np.testing.assert_array_equal(r["image"], arrays["image"][img])
  np.testing.assert_array_equal(r["label"], arrays["label"][img])
  np.testing.assert_array_equal(r["kind"], [e[1] for e in expected])
  np.testing.assert_array_equal(r["answer"], [cap.VOCAB.index(e[2]) for e in expected])
  np.testing.assert_array_equal(r["inputs"][:, 1:], r["targets"][:, :-1])
  assert (r["inputs"][:, 0] == cap.BOS).all()
  q_id = cap.VOCAB.index("?")
  for k in range(len(qa)):
    inputs, targets, p = r["inputs"][k], r["targets"][k], int(r["prompt_len"][k])
    assert inputs[p - 1] == q_id and q_id not in inputs[:p - 1]          # BOS question "?"
    assert targets[p - 1] == r["answer"][k] and targets[p] == cap.EOS
    assert (targets[p + 1:] == cap.PAD).all()
    np.testing.assert_array_equal(np.nonzero(r["loss_mask"][k])[0], [p - 1, p])
    question = cap.decode(inputs[:p - 1])
    pool = cap.CLASS_QUESTIONS if r["kind"][k] == 0 else cap.ATTRIBUTE_QUESTIONS
    if r["kind"][k] == 0:
      assert question in pool[templates]
    else:
      lo, hi = (("thin", "thick"), ("narrow", "wide"))[r["kind"][k] - 1]
      assert question in [t.format(lo=lo, hi=hi) for t in pool[templates]]
  assert r["loss_mask"].dtype == np.float32 and r["prompt_len"].dtype == np.int32
