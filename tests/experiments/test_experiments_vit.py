"""The ViT classifier (config fashion_vit.py) through the real launcher: the `:smoke` run reaches
its stated accuracy, and a patch that does not divide the image or an unknown pooling is one
line, exit 2."""

import json

import pytest

# Stated in fashion_vit.py: `:smoke` (digits, patch 2, 300 steps) measured 0.9327.
SMOKE_ACCURACY_BOUND = 0.88


def test_smoke_run_reaches_its_stated_accuracy(launch, tmp_path):
  proc = launch("fashion_vit.py:smoke", tmp_path / "run")
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["test_accuracy"] >= SMOKE_ACCURACY_BOUND, summary


@pytest.mark.parametrize("override,message", [
    ("--config.model.patch=3",
     "config.model for 'vit': image size 8×8 is not divisible by the patch size 3"),
    ("--config.model.pool=max",
     "config.model for 'vit': unknown pool 'max'; valid choices: cls, mean"),
])
def test_bad_model_config_is_one_line(launch, tmp_path, override, message):
  proc = launch("fashion_vit.py:smoke", tmp_path / "run", override)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("genfm: error:")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_clip_step_bench_row_counts_the_bxb_loss():
  """`genfm-bench clip_step`'s row on tiny towers: the B×B fp32 matrix is 4·B² bytes, and the
  loss's FLOPs (value and gradient on given [B, E] embeddings) are its three B×B×E matmuls
  (forward, and one per embedding in the backward: 6·B²·E) plus O(B²) elementwise work."""
  from genfm.experiments import bench_vision
  from genfm.transformers import clip, gpt, vit

  cfg = clip.CLIPConfig(
      vision=vit.ViTConfig(image_size=(8, 8), patch=4, num_layers=1, d_model=16, num_heads=2),
      text=gpt.GPTConfig(vocab_size=13, context_len=8, num_layers=1, d_model=16, num_heads=2),
      embed_dim=8)
  B, E = 16, 8
  row = bench_vision.clip_step_record(cfg, B, iters=1)
  assert row["logits_bytes"] == 4 * B * B == 1024
  assert 6 * B * B * E < row["loss_flops"] < 6 * B * B * E + 64 * B * B, row["loss_flops"]
  assert 0 < row["loss_share_of_step_flops"] < 0.05 and row["seconds"] > 0
  assert row["params"] == clip.param_count(cfg)
