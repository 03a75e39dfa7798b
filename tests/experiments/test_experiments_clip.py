"""The clip task through the launcher: the `:smoke` CLIP run reaches its stated zero-shot accuracy
and beats chance at retrieval, SigLIP trains its bias, and bad input is one line (exit 2); the
retrieval metric itself is checked on hand-made embeddings."""

import json

import numpy as np
import pytest

from genfm.experiments.tasks.clip import retrieval_recalls, semantics


# 65 s on an idle machine (≈ 20 s of it start-up and compiles), 110 s on a loaded one: the one
# run that holds the config's stated numbers, so not marked slow.
def test_smoke_clip_reaches_its_numbers(tmp_path, launch):
  """Stated in captions_clip.py (:smoke, digits, 300 steps; measured 0.552 / 0.835 / 0.747 /
  0.819): zero-shot accuracy ≥ 0.4 (chance 0.1), linear probe ≥ 0.7, image→text recall@5 ≥ 0.5,
  text→image recall@5 ≥ 0.6 (chance recall@1 0.015); the temperature is logged at every log
  step and drawn, with the retrieval figure."""
  proc = launch("captions_clip.py:smoke", tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.load(open(tmp_path / "summary.json"))
  assert s["finished"] and s["test_zero_shot_accuracy"] >= 0.4, s
  assert s["probe_accuracy"] >= 0.7, s
  assert s["retrieval_chance_r1"] < 0.03 and s["i2t_r5"] >= 0.5 and s["t2i_r5"] >= 0.6, s
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  temps = [r["train_temperature"] for r in rows if "train_temperature" in r]
  assert len(temps) == 6 and abs(temps[-1] - s["temperature"]) < 1e-3   # logged at 50..300
  assert temps[0] == pytest.approx(0.07, abs=2e-3)                       # init τ = 0.07
  for fig in ("temperature.png", "retrieval_step300.png"):
    assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow   # 25–70 s (launcher start-up and compiles); the loss itself is tested in
                    # tests/transformers/test_transformers_clip.py
def test_siglip_smoke_trains_temperature_and_bias(tmp_path, launch):
  """SigLIP, 60 steps: the loss falls, the bias moves from its init −10 and the temperature from
  1/10; every eval number is produced (small retrieval and probe sets, for time)."""
  proc = launch("captions_clip.py:siglip_smoke", tmp_path, "--config.num_train_steps=60",
                "--config.log_every_steps=20", "--config.eval.probe_steps=10",
                "--config.eval.probe_images=200", "--config.eval.retrieval_images=100",
                timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  train = [r for r in rows if "train_loss" in r]
  assert len(train) == 3 and train[-1]["train_loss"] < train[0]["train_loss"], train
  assert train[0]["train_logit_bias"] == pytest.approx(-10.0, abs=0.1)
  assert train[-1]["train_logit_bias"] != pytest.approx(-10.0, abs=1e-3)
  assert train[-1]["train_temperature"] != pytest.approx(0.1, abs=1e-4)
  s = json.load(open(tmp_path / "summary.json"))
  assert s["finished"] and s["retrieval_images"] == 100 and s["probe_images"] == 200, s
  for k in ("test_zero_shot_accuracy", "probe_accuracy", "i2t_r1", "t2i_r5", "temperature"):
    assert 0.0 <= s[k] <= 1.0, (k, s)


@pytest.mark.parametrize("override,needles", [
    ("--config.text_len=4", ("tokens with BOS/EOS, longer than the text context of 4",
                             "raise config.text_len to ≥")),
    ("--config.model.loss=triplet", ("unknown config.model.loss 'triplet'", "clip, siglip")),
])
def test_bad_input_is_one_line(tmp_path, launch, override, needles):
  proc = launch("captions_clip.py:smoke", tmp_path, override, timeout=300)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if needles[0] in l]
  assert len(lines) == 1 and all(n in lines[0] for n in needles), proc.stderr[-2000:]


def test_retrieval_counts_same_semantics_as_hits():
  """Four items, two semantics: (0, levels 0 0) twice and (1, levels 2 1) twice. Text j is the
  image's caption embedding rotated; a hit is any item of the query's semantics."""
  key = semantics(np.array([0, 0, 1, 1]), np.array([[0, 0], [0, 0], [2, 1], [2, 1]]))
  assert key[0] == key[1] != key[2] == key[3]
  img = np.eye(4)
  txt = np.eye(4)[[1, 0, 2, 3]]        # image 0's nearest text is text 1: same semantics, a hit
  r = retrieval_recalls(img, txt, key, ks=(1,))
  assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == 1.0 and r["retrieval_chance_r1"] == 0.5
  txt = np.eye(4)[[2, 3, 0, 1]]        # every nearest item has the other semantics: no hit
  r = retrieval_recalls(img, txt, key, ks=(1, 3))
  assert r["i2t_r1"] == 0.0 and r["t2i_r1"] == 0.0 and r["i2t_r3"] == 1.0


def test_image_to_text_ranks_distinct_captions():
  """Three images of one semantics (captions "A", "A", "B" as token rows) and a fourth of
  another with caption "C". Image 3's nearest texts are the two copies of "A" (wrong), then "C":
  over all four texts recall@2 is 0, over the distinct captions ("A", "B", "C") it is 1."""
  key = np.array([0, 0, 0, 1])
  text = np.array([[5, 1], [5, 1], [6, 1], [7, 1]])
  img = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.8, 0.6]])
  txt = np.array([[1.0, 0.0], [1.0, 0.0], [0.8, -0.6], [0.0, 1.0]])  # image 3: .8 .8 .28 .6
  full = retrieval_recalls(img, txt, key, ks=(2,))
  distinct = retrieval_recalls(img, txt, key, ks=(2,), text_N=text)
  assert full["i2t_r2"] == 0.75 and distinct["i2t_r2"] == 1.0
  assert distinct["retrieval_distinct_captions"] == 3 and full["t2i_r2"] == distinct["t2i_r2"]
