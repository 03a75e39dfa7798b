"""Tests for genfm.experiments.bench_peers: the genfm side of `genfm-bench gpt_vs_nanogpt` and its
set-up errors. The peer side needs torch, which is never a genfm dependency: it is run by hand
(the numbers are in WORKSPACE.md)."""

import math

import pytest

from genfm.experiments import bench_peers
from genfm.transformers import gpt


def test_without_the_peer_the_bench_says_how_to_set_it_up(monkeypatch):
  monkeypatch.delenv("GENFM_TORCH_PYTHON", raising=False)
  rows = []
  bench_peers.gpt_vs_nanogpt(rows.append)
  assert len(rows) == 1 and "GENFM_TORCH_PYTHON" in rows[0]["skipped"]


def test_bad_peer_paths_are_one_line_errors(monkeypatch, tmp_path):
  monkeypatch.setenv("GENFM_TORCH_PYTHON", str(tmp_path / "no_python"))
  monkeypatch.setenv("GENFM_NANOGPT_DIR", str(tmp_path))
  with pytest.raises(ValueError, match="is not an executable Python"):
    bench_peers.gpt_vs_nanogpt(lambda r: None)
  with pytest.raises(ValueError, match="holds no model.py"):
    bench_peers._Peer(__import__("sys").executable, str(tmp_path))


def test_genfm_side_is_the_launcher_step_at_nanogpts_shape():
  """The char case: nanoGPT's parameter count (812,288 with biases and the tied head) and a
  first loss near ln V (uniform predictions at init, std 0.02)."""
  overrides, batch, _, _ = bench_peers.CASES["char"]
  run, model_cfg, cfg = bench_peers._genfm_step(overrides, batch)
  assert gpt.param_count(model_cfg) == 812_288
  assert (cfg.batch_size, model_cfg.context_len, cfg.b2, cfg.grad_clip_norm) == (12, 64, 0.99, 1.0)
  first, second, third = run(), run(), run()
  assert abs(first - math.log(84)) < 0.05
  assert second == first  # the warm-up starts at learning rate 0 (the recipe's schedule) ...
  assert third < first    # ... and the next step moves the parameters
