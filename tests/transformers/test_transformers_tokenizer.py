"""Tests for genfm.transformers.tokenizer: byte-level BPE and the character tokenizer."""

import random

import pytest

from genfm.transformers import tokenizer

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
        "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people. ") * 3


def test_classic_toy_example():
  tok = tokenizer.BPETokenizer.train("aaabdaaabac", 256 + 3)
  assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
  assert tok.vocab[256] == b"aa" and tok.vocab[257] == b"aaa" and tok.vocab[258] == b"aaab"
  assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def _random_unicode(rng, n):
  chars = []
  for _ in range(n):
    cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x7FF),
                     rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0xFFFD),
                     rng.randint(0x10000, 0x10FFFF)])  # 1- to 4-byte UTF-8, no surrogates
    chars.append(chr(cp))
  return "".join(chars)


def test_decode_encode_is_identity_on_random_unicode():
  tok = tokenizer.BPETokenizer.train(TEXT + "héllo wörld ünïcode 日本語 日本 🙂🙂", 256 + 60)
  rng = random.Random(0)
  for n in (0, 1, 2, 7, 50, 300):
    s = _random_unicode(rng, n)
    assert tok.decode(tok.encode(s)) == s
  for s in (TEXT, "日本語🙂 First Citizen", "\x00\n\t"):
    assert tok.decode(tok.encode(s)) == s


def test_encode_equals_applying_merges_in_order():
  # Reference: the definition of BPE encoding, one full pass per merge in learned order.
  tok = tokenizer.BPETokenizer.train(TEXT, 256 + 40)
  assert len(tok.merges) == 40
  for s in (TEXT, "Citizens resolved to speak first", "aaaa ee speak"):
    ids = list(s.encode("utf-8"))
    for (a, b), new in tok.merges.items():
      out, i = [], 0
      while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == (a, b):
          out.append(new)
          i += 2
        else:
          out.append(ids[i])
          i += 1
      ids = out
    assert tok.encode(s) == ids
  assert len(tok.encode(TEXT)) < len(TEXT.encode("utf-8")) / 2  # it compresses its own text


def test_vocab_is_concatenation_of_merged_pair():
  tok = tokenizer.BPETokenizer.train(TEXT, 256 + 30)
  for (a, b), new in tok.merges.items():
    assert tok.vocab[new] == tok.vocab[a] + tok.vocab[b]


def test_save_load_roundtrip(tmp_path):
  tok = tokenizer.BPETokenizer.train(TEXT, 256 + 20)
  tok.save(tmp_path / "bpe.json")
  tok2 = tokenizer.BPETokenizer.load(tmp_path / "bpe.json")
  assert tok2.merges == tok.merges and tok2.vocab == tok.vocab
  assert tok2.encode(TEXT) == tok.encode(TEXT)
  ct = tokenizer.CharTokenizer.train(TEXT)
  ct.save(tmp_path / "char.json")
  assert tokenizer.CharTokenizer.load(tmp_path / "char.json").chars == ct.chars
  with pytest.raises(ValueError, match="not a byte-level BPE"):
    tokenizer.BPETokenizer.load(tmp_path / "char.json")


def test_bpe_errors():
  tok = tokenizer.BPETokenizer.train("abab", 257)
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tok.decode([1, 999])
  with pytest.raises(ValueError, match=">= 256"):
    tokenizer.BPETokenizer.train("abc", 100)


def test_char_tokenizer():
  ct = tokenizer.CharTokenizer.train("hello world")
  assert ct.vocab_size == 8 and ct.chars == sorted(set("hello world"))
  assert ct.decode(ct.encode("world hello")) == "world hello"
  assert ct.encode(" ") == [0]
  with pytest.raises(ValueError, match=r"characters not in the vocabulary: \['!', 'z'\]"):
    ct.encode("zoo!")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    ct.decode([8])
