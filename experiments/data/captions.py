"""Captioned images and visual question–answer pairs, generated offline from the embedded image
sets (Fashion-MNIST, sklearn digits): the paired data of CLIP (2103.00020) and of a tiny LLaVA
(2304.08485) / Flamingo (2204.14198). Seeded and deterministic: the same arguments always give
the same arrays.

  from genfm.experiments.data import captions as cap
  src = cap.load_captions("fashion_mnist", "train", templates="train", captions_per_image=2)
  rec = src[0]   # {"image" uint8 [28,28,1], "label" [], "text" int32 [16], "attributes" [2]}
  cap.decode(rec["text"])  # 'this is a light wide boot' (src[1]: 'a light wide boot')
  qa = cap.load_qa("digits", "test", templates="heldout")   # "inputs", "targets", "loss_mask", ...

Words. A caption names the class (one token per class, CLASS_WORDS) and the attributes that are
extreme for that image ("{adjs}", in ATTRIBUTES order, so "dark wide" never "wide dark"; none
when both are middling). Tokens are whitespace-separated words, with "?" a token of its own;
VOCAB is PAD, BOS, EOS, then every word of both data sets sorted, so one vocabulary (and one text
tower) serves both.

Attributes, measured from the pixels (x = the uint8 image / 255; ink = pixels with x ≥ 1/8):
  brightness (fashion)   mean x over the ink pixels: how light the garment is, not how big;
  width (both)           ink-weighted standard deviation of the column coordinate, in pixels
                         (a continuous horizontal extent: few ties at the thresholds);
  thickness (digits)     total ink Σ x: at 8×8 a thicker stroke fills more and brighter cells.
Each measure is cut at the per-class terciles (np.quantile at 1/3 and 2/3, linear interpolation)
of that data set's TRAIN split: level 0 (low) when m ≤ q1/3, 2 (high) when m > q2/3, else 1.
Thresholds per class make an attribute independent of the class (every class has about a third
of each level), so a model must look at the image to caption it, not guess from the class.

Examples: record i of load_captions(d, "train", templates=...) and of load_qa(d, "train",
templates=...), seed 0 (the same image on both sides of a row):

  data set  i   levels  train template                      held-out template
  fashion   3   (0, 2)  "a dark wide dress"                 "there is a dark wide dress here"
  fashion   5   (1, 1)  "a photo of a pullover"             "there is a pullover here"
  fashion   4   (2, 0)  "a light narrow t-shirt"            "a picture of a light narrow t-shirt"
  fashion   8   (0, 1)  "a photo of a dark sandal"          "a picture of a dark sandal"
  digits    8   (0, 2)  "a photo of a thin wide two"        "a picture of a thin wide two"
  digits    10  (2, 0)  "an image of a thick narrow one"    "a picture of a thick narrow one"

  QA, fashion image 0 (a light wide boot): records 0..2 of load_qa, answer after the "?"
  kind            train template                   held-out template
  class (always)  "what is in the image ? boot"    "name the object ? boot"
  brightness      "is it dark or light ? light"    "which is it dark or light ? light"
  width           "is it narrow or wide ? wide"    "is the object narrow or wide ? wide"
  (an attribute question is asked only when that attribute's level is 0 or 2)

QA sequences are BOS question "?" answer EOS PAD.. of T + 1 tokens; inputs are the first T,
targets the last T (targets = inputs shifted by one), loss_mask is 1 exactly where the target is
the answer or the EOS after it, prompt_len counts BOS + question + "?" (the positions a prefix-LM
mask may attend bidirectionally). Each image gives its class question, then one question per
extreme attribute, in that order.

Randomness: each record's template is drawn by numpy's PCG64 seeded with a hash of (VERSION,
data set, split, templates, seed, kind); `captions_per_image` = k draws k distinct templates per
image when k ≤ the pool size (records i·k .. i·k + k − 1 belong to image i).
Held-out templates (caption and question) never occur in "train"; test them on the "test" split
for unseen images with unseen phrasings.
"""

from __future__ import annotations

import functools
import re
import zlib

import numpy as np

from genfm.experiments.data import embedded
from genfm.experiments.data import sources
from genfm.experiments.errors import DataError
from genfm.experiments.errors import unknown_choice

VERSION = 1   # bump when any output changes: it keys the random streams
DATASETS = ("fashion_mnist", "digits")
SPLITS = ("train", "test")
TEMPLATE_SETS = ("train", "heldout")
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "boot"),
    "digits": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
}
ATTRIBUTES: dict[str, tuple[tuple[str, tuple[str, str]], ...]] = {
    "fashion_mnist": (("brightness", ("dark", "light")), ("width", ("narrow", "wide"))),
    "digits": (("thickness", ("thin", "thick")), ("width", ("narrow", "wide"))),
}
INK = 1.0 / 8.0   # a pixel is ink when x = uint8 / 255 ≥ INK

ZERO_SHOT_TEMPLATES = ("a photo of a {cls}", "a picture of a {cls}", "a {cls}")
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": ("a photo of a {adjs} {cls}", "a {adjs} {cls}", "an image of a {adjs} {cls}",
              "this is a {adjs} {cls}"),
    "heldout": ("a picture of a {adjs} {cls}", "there is a {adjs} {cls} here"),
}
# Questions without their "?" (appended as its own token). {lo} / {hi} are the attribute's words.
CLASS_QUESTIONS: dict[str, tuple[str, ...]] = {
    "train": ("what is this", "what is in the image", "what do you see", "which class is this"),
    "heldout": ("what is shown here", "name the object"),
}
ATTRIBUTE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "train": ("is it {lo} or {hi}", "{lo} or {hi}", "is this {lo} or {hi}",
              "would you say {lo} or {hi}"),
    "heldout": ("is the object {lo} or {hi}", "which is it {lo} or {hi}"),
}

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
_TOKEN = re.compile(r"[^\s?]+|\?")


def tokenize(text: str) -> list[str]:
  """Whitespace-separated words; "?" is always a token of its own."""
  return _TOKEN.findall(text)


def _all_words() -> set[str]:
  texts = [*ZERO_SHOT_TEMPLATES, *CAPTION_TEMPLATES["train"], *CAPTION_TEMPLATES["heldout"],
           *CLASS_QUESTIONS["train"], *CLASS_QUESTIONS["heldout"],
           *ATTRIBUTE_QUESTIONS["train"], *ATTRIBUTE_QUESTIONS["heldout"], "?"]
  words = {w for t in texts for w in tokenize(re.sub(r"\{\w+\}", " ", t))}
  for d in DATASETS:
    words |= set(CLASS_WORDS[d])
    words |= {w for _, pair in ATTRIBUTES[d] for w in pair}
  return words


VOCAB: tuple[str, ...] = SPECIALS + tuple(sorted(_all_words()))
_ID = {w: i for i, w in enumerate(VOCAB)}


def encode(text: str, length: int, *, bos: bool = True, eos: bool = True) -> np.ndarray:
  """int32 [length]: (BOS) the ids of `text`'s tokens (EOS), then PAD."""
  words = tokenize(text)
  unknown = [w for w in words if w not in _ID]
  if unknown:
    raise DataError(f"text {text!r} has words outside the caption vocabulary: {unknown}")
  ids = [BOS] * bos + [_ID[w] for w in words] + [EOS] * eos
  if len(ids) > length:
    raise DataError(f"text {text!r} is {len(ids)} tokens with BOS/EOS, longer than the text "
                    f"context of {length}; raise config.text_len to ≥ {len(ids)}")
  out = np.full((length,), PAD, np.int32)
  out[:len(ids)] = ids
  return out


def decode(ids) -> str:
  """The words of `ids` up to the first EOS, PAD and BOS skipped, joined by single spaces."""
  words = []
  for i in np.asarray(ids).reshape(-1).tolist():
    if i == EOS:
      break
    if i not in (PAD, BOS):
      words.append(VOCAB[i])
  return " ".join(words)


# -- attributes measured from pixels -------------------------------------------------------------


def attribute_measures(dataset: str, images_NHW1: np.ndarray) -> np.ndarray:
  """float64 [N, 2]: the two raw measures of ATTRIBUTES[dataset] (see the module docstring)."""
  _check_dataset(dataset)
  x_NHW = np.asarray(images_NHW1, np.float64)[..., 0] / 255.0
  ink_NHW = x_NHW >= INK
  col_NW = x_NHW.sum(axis=1)                                     # ink mass per column
  mass_N = np.maximum(col_NW.sum(axis=1), 1e-9)                  # blank image: width 0, not NaN
  cols_W = np.arange(x_NHW.shape[2], dtype=np.float64)
  mean_N = (col_NW * cols_W).sum(axis=1) / mass_N
  width_N = np.sqrt((col_NW * (cols_W - mean_N[:, None]) ** 2).sum(axis=1) / mass_N)
  if dataset == "fashion_mnist":
    first_N = (x_NHW * ink_NHW).sum(axis=(1, 2)) / np.maximum(ink_NHW.sum(axis=(1, 2)), 1)
  else:
    first_N = x_NHW.sum(axis=(1, 2))
  return np.stack([first_N, width_N], axis=1)


@functools.lru_cache(maxsize=None)
def thresholds(dataset: str) -> np.ndarray:
  """float64 [C, 2 attributes, 2]: per class, the 1/3 and 2/3 quantiles of each measure on the
  TRAIN split."""
  arrays = _images(dataset, "train")
  m_N2 = attribute_measures(dataset, arrays["image"])
  num_classes = len(CLASS_WORDS[dataset])
  out = np.stack([np.quantile(m_N2[arrays["label"] == c], [1 / 3, 2 / 3], axis=0).T
                  for c in range(num_classes)])
  out.flags.writeable = False
  return out


def attribute_levels(dataset: str, images_NHW1: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
  """int32 [N, 2] in {0 low, 1 middle, 2 high}: the measures cut at the per-class train terciles.

  The labels are needed because the thresholds are per class (the spec's signature lacked them).
  """
  labels_N = np.asarray(labels_N)
  m_N2 = attribute_measures(dataset, images_NHW1)
  q_N22 = thresholds(dataset)[labels_N]                          # [N, attribute, (1/3, 2/3)]
  return ((m_N2 > q_N22[..., 0]).astype(np.int32) + (m_N2 > q_N22[..., 1])).astype(np.int32)


# -- captions ------------------------------------------------------------------------------------


def adjectives(dataset: str, levels_2) -> str:
  """The extreme attributes' words in ATTRIBUTES order, e.g. "dark wide" or ""."""
  words = [pair[0 if lv == 0 else 1] for (_, pair), lv in zip(ATTRIBUTES[dataset], levels_2)
           if lv != 1]
  return " ".join(words)


def caption(dataset: str, template: str, label: int, levels_2) -> str:
  return template.format(adjs=adjectives(dataset, levels_2), cls=CLASS_WORDS[dataset][label])


def class_prompts(dataset: str, text_len: int = 16) -> np.ndarray:
  """int32 [C, len(ZERO_SHOT_TEMPLATES), text_len]: every class word in every zero-shot prompt."""
  _check_dataset(dataset)
  return np.stack([np.stack([encode(t.format(cls=w), text_len) for t in ZERO_SHOT_TEMPLATES])
                   for w in CLASS_WORDS[dataset]])


@functools.lru_cache(maxsize=16)
def load_captions(dataset: str, split: str, *, templates: str = "train",
                  captions_per_image: int = 1, seed: int = 0,
                  text_len: int = 16) -> sources.ArraySource:
  """`captions_per_image` captioned records per image of `split`, phrased by `templates`.

  Records: "image" uint8 [H, W, 1], "label" int32 [], "text" int32 [text_len] (BOS caption EOS
  PAD..), "attributes" int32 [2] (the levels).
  """
  _check(dataset, split, templates)
  if not isinstance(captions_per_image, int) or captions_per_image < 1:
    raise DataError(f"captions_per_image must be an int ≥ 1, got {captions_per_image!r}")
  arrays = _images(dataset, split)
  image, label_N = arrays["image"], arrays["label"]
  levels_N2 = attribute_levels(dataset, image, label_N)
  pool = CAPTION_TEMPLATES[templates]
  num_classes = len(CLASS_WORDS[dataset])
  _check_fits([caption(dataset, t, c, lv) for t in pool for c in range(num_classes)
               for lv in ((0, 0), (2, 2))], text_len, "caption")
  # Every distinct caption once: [template, level 0, level 1, class, text_len] (a few hundred).
  table = np.stack([np.stack([np.stack([np.stack(
      [encode(caption(dataset, t, c, (a, b)), text_len) for c in range(len(CLASS_WORDS[dataset]))])
      for b in range(3)]) for a in range(3)]) for t in pool])
  k, n = captions_per_image, len(label_N)
  rng = _rng(dataset, split, templates, seed, "captions")
  if k <= len(pool):
    which_NK = np.argsort(rng.random((n, len(pool))), axis=1)[:, :k]   # k distinct per image
  else:
    which_NK = rng.integers(len(pool), size=(n, k))
  img_R = np.repeat(np.arange(n), k)
  which_R = which_NK.reshape(-1)
  out = {"image": image[img_R], "label": label_N[img_R],
         "text": table[which_R, levels_N2[img_R, 0], levels_N2[img_R, 1], label_N[img_R]],
         "attributes": levels_N2[img_R]}
  return _source(dataset, split, out)


# -- question–answer pairs -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def load_qa(dataset: str, split: str, *, templates: str = "train", seed: int = 0,
            text_len: int = 16) -> sources.ArraySource:
  """Question–answer records about the images of `split` (see the module docstring).

  Records: "image", "label", "inputs" / "targets" int32 [text_len], "loss_mask" float32
  [text_len], "prompt_len" int32 [], "answer" int32 [] (the answer's vocab id), "kind" int32 []
  (0 the class question, 1 + a for attribute a).
  """
  _check(dataset, split, templates)
  arrays = _images(dataset, split)
  image, label_N = arrays["image"], arrays["label"]
  levels_N2 = attribute_levels(dataset, image, label_N)
  rng = _rng(dataset, split, templates, seed, "qa")
  # kind 0 for every image, then kind 1 + a where attribute a is extreme; record order: image-major.
  ask_NK = np.concatenate([np.ones((len(label_N), 1), bool), levels_N2 != 1], axis=1)
  img_R, kind_R = np.nonzero(ask_NK)
  q_pool = CLASS_QUESTIONS[templates]
  a_pool = ATTRIBUTE_QUESTIONS[templates]
  # One draw per record: an index into the pool of its kind (both pools have equal length).
  which_R = rng.integers(len(q_pool), size=len(img_R))
  _check_fits([f"{q} ? {w}" for q in q_pool for w in CLASS_WORDS[dataset]] +
              [f"{q.format(lo=lo, hi=hi)} ? {hi}" for q in a_pool
               for _, (lo, hi) in ATTRIBUTES[dataset]], text_len + 1, "question-answer")
  seqs = {}   # (kind, template index, answer word) -> int32 [text_len + 1]
  rows, prompt_lens, answers = [], [], []
  for i, kind, w in zip(img_R.tolist(), kind_R.tolist(), which_R.tolist()):
    if kind == 0:
      answer = CLASS_WORDS[dataset][label_N[i]]
      question = q_pool[w % len(q_pool)]
    else:
      _, (lo, hi) = ATTRIBUTES[dataset][kind - 1]
      answer = lo if levels_N2[i, kind - 1] == 0 else hi
      question = a_pool[w % len(a_pool)].format(lo=lo, hi=hi)
    key = (question, answer)
    if key not in seqs:
      seqs[key] = (_qa_sequence(question, answer, text_len), len(tokenize(question)) + 2)
    seq, p = seqs[key]
    rows.append(seq)
    prompt_lens.append(p)
    answers.append(_ID[answer])
  seq_RT1 = np.stack(rows)
  prompt_len_R = np.asarray(prompt_lens, np.int32)
  pos_T = np.arange(text_len)
  # targets[p − 1] is the answer and targets[p] its EOS, p = prompt_len.
  mask_RT = ((pos_T == prompt_len_R[:, None] - 1) | (pos_T == prompt_len_R[:, None]))
  out = {"image": image[img_R], "label": label_N[img_R], "inputs": seq_RT1[:, :-1],
         "targets": seq_RT1[:, 1:], "loss_mask": mask_RT.astype(np.float32),
         "prompt_len": prompt_len_R, "answer": np.asarray(answers, np.int32),
         "kind": kind_R.astype(np.int32)}
  return _source(dataset, split, out)


def _qa_sequence(question: str, answer: str, text_len: int) -> np.ndarray:
  """int32 [text_len + 1]: BOS question ? answer EOS PAD.."""
  return encode(f"{question} ? {answer}", text_len + 1)


def _check_fits(texts: list[str], length: int, what: str) -> None:
  """One DataError naming the longest of `texts` when it does not fit `length` tokens with BOS
  and EOS. QA sequences are checked at text_len + 1: inputs and targets are its two T-windows."""
  longest = max(texts, key=lambda t: len(tokenize(t)))
  n = len(tokenize(longest)) + 2
  if n > length:
    need = n - 1 if what == "question-answer" else n
    raise DataError(f"the longest {what} {longest!r} is {n} tokens with BOS/EOS, longer than "
                    f"the text context of {length - (what == 'question-answer')}; raise "
                    f"config.text_len to ≥ {need}")


# -- helpers -------------------------------------------------------------------------------------


def _images(dataset: str, split: str) -> dict[str, np.ndarray]:
  if dataset == "fashion_mnist":
    return embedded.load_fashion_mnist(split)
  return embedded.load_digits_split(split)


def _rng(dataset: str, split: str, templates: str, seed: int, kind: str) -> np.random.Generator:
  key = zlib.crc32(f"captions/v{VERSION}/{dataset}/{split}/{templates}/{kind}".encode())
  return np.random.default_rng([key, int(seed)])


def _source(dataset: str, split: str, arrays: dict[str, np.ndarray]) -> sources.ArraySource:
  info = sources.info_from_arrays(dataset, split, arrays, num_classes=len(CLASS_WORDS[dataset]))
  return sources.ArraySource(arrays, info)


def _check_dataset(dataset: str) -> None:
  if dataset not in DATASETS:
    raise unknown_choice("captioned data set", dataset, DATASETS)


def _check(dataset: str, split: str, templates: str) -> None:
  _check_dataset(dataset)
  if split not in SPLITS:
    raise unknown_choice("split", split, SPLITS)
  if templates not in TEMPLATE_SETS:
    raise unknown_choice("template set", templates, TEMPLATE_SETS)
