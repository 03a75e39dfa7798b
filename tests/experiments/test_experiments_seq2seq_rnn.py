"""The Bahdanau et al. (1409.0473) dates task through the launcher: the `:smoke` config reaches
its stated exact match, writes the alignment heatmap and samples; bad model settings are one
line. (The RNN reads any source length, so there is no "source too long" error to test.)"""

import json

import pytest

from genfm.experiments.configs import dates_bahdanau
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import get_task


def test_smoke_config_reaches_its_exact_match(tmp_path, launch):
  """Stated in dates_bahdanau.py: `:smoke` greedy exact match >= 0.4 on 200 held-out dates
  after 300 steps (an untrained model scores 0), beam (width 2) reported beside it."""
  proc = launch("dates_bahdanau.py:smoke", tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.load(open(tmp_path / "summary.json"))
  assert s["finished"] and s["validation_exact_match"] >= 0.4, s
  assert s["validation_beam_exact_match"] >= 0.4, s
  assert (tmp_path / "alignment_step300.png").read_bytes()[:4] == b"\x89PNG"
  lines = (tmp_path / "samples_step300.txt").read_text().splitlines()
  assert "greedy" in lines[1] and "beam" in lines[1], lines


@pytest.mark.parametrize("key,value,needle", [
    ("attention_size", 8, r"unknown \['attention_size'\]"),
    ("hidden_dim", 0, "config.model.hidden_dim must be a positive integer"),
])
def test_bad_model_settings_are_one_line(key, value, needle):
  c = dates_bahdanau.get_config("smoke")
  c.model[key] = value
  with pytest.raises(ConfigError, match=needle):
    get_task(c)


def test_bad_beam_width_is_one_line():
  c = dates_bahdanau.get_config("smoke")
  c.beam_width = -1
  with pytest.raises(ConfigError, match="beam_width must be an integer >= 0"):
    get_task(c)
