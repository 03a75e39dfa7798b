"""The "vlm" task (experiments/tasks/vlm.py, configs/captions_vlm.py): the smoke run and a tiny
text → LLaVA stage-1 chain through the real launcher, a clip run's image tower, Flamingo's
trained parts, bad input."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from genfm.experiments.configs import captions_vlm
from genfm.experiments.data import captions
from genfm.experiments.errors import ConfigError
from genfm.experiments.init_from import read_source
from genfm.experiments.tasks.vlm import VLMTask
from genfm.transformers import clip, flamingo, gpt, vlm

SHORT = ("--config.num_train_steps=10", "--config.eval_every_steps=10",
         "--config.checkpoint_every_steps=10", "--config.log_every_steps=10",
         "--config.num_eval=200")
D = C = 64                                      # smoke LM width, CLIP smoke image-tower width


def smoke_lm_params() -> int:
  M = 16                                        # 8×8 digits, patch 2, mean pool: 16 tokens
  return gpt.param_count(gpt.GPTConfig(vocab_size=len(captions.VOCAB), context_len=M + 16,
                                       num_layers=2, d_model=D, num_heads=4, positions="rope"))


def params(flat):
  """Parameter paths (RNG stream state is fresh in every run)."""
  return [p for p in flat if "rngs/" not in p]


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def smoke_run(launch, tmp_path_factory):
  """The `:smoke` run (LLaVA from scratch on digits), through the launcher, once."""
  wd = str(tmp_path_factory.mktemp("vlm") / "smoke")
  r = launch("captions_vlm.py:smoke", wd)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def test_smoke_llava_from_scratch(smoke_run):
  # measured 2026-12-03: test_loss 0.921 (from ln 55 = 4.0 at init), exact match 0.148
  s = summary(smoke_run)
  assert s["finished"] and s["test_loss"] < 1.1
  assert 0.1 < s["test_exact_match"] <= 1.0
  # stage "finetune": projector (MLP) + LM train, the vision tower is frozen
  assert s["trainable_params"] == vlm.projector_param_count("mlp", C, D) + smoke_lm_params()
  assert s["num_trainable_params"] == s["trainable_params"]
  assert os.path.isfile(os.path.join(smoke_run, "answers_step120.png"))


def test_chain_text_then_llava_align_through_init_from_models(launch, smoke_run, tmp_path):
  # text stage → stage 1 with the LM from it and the image tower from another run (here the
  # smoke run's; a clip run's `image_tower/` arrays are tested in-process below: same path)
  text_wd, align_wd = str(tmp_path / "text"), str(tmp_path / "align")
  r = launch("captions_vlm.py:smoke_text", text_wd, *SHORT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert summary(text_wd)["num_trainable_params"] == smoke_lm_params()     # the GPT alone
  r = launch("captions_vlm.py:smoke_align", align_wd, *SHORT,
             f"--config.init_from_models.vision={smoke_run}",
             f"--config.init_from_models.vlm={text_wd}")
  assert r.returncode == 0, r.stderr[-3000:]
  log = r.stderr
  assert "vision: " in log and "arrays from 'vision'" in log
  assert "vlm: " in log and "arrays from 'lm', 4 new (fresh): projector/" in log   # fc1, fc2
  s = summary(align_wd)
  assert s["num_trainable_params"] == s["trainable_params"] == vlm.projector_param_count(
      "mlp", C, D)
  _, vis_src, _ = read_source(smoke_run)
  _, text_src, _ = read_source(text_wd)
  _, align_src, _ = read_source(align_wd)
  for p in params(vis_src["vision"]):            # the frozen image tower: bit-identical
    np.testing.assert_array_equal(align_src["vision"][p], vis_src["vision"][p])
  lm = {p.removeprefix("lm/"): x for p, x in align_src["vlm"].items() if p.startswith("lm/")}
  assert sorted(lm) == sorted(text_src["lm"])
  for p in params(lm):                           # stage 1: the LM stays the text run's
    np.testing.assert_array_equal(lm[p], text_src["lm"][p])
  proj = [p for p in params(align_src["vlm"]) if p.startswith("projector/")]
  assert len(proj) == 4


def test_a_clip_runs_image_tower_is_what_the_vision_model_reads():
  t = task("smoke_align")
  cfg = clip.CLIPConfig(vision=t.vision_config, text=gpt.GPTConfig(
      vocab_size=len(captions.VOCAB), context_len=16, num_layers=1, d_model=32, num_heads=2))
  model = clip.CLIP(cfg, rngs=nnx.Rngs(3))
  flat = {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  got = t.convert_source("vision", flat)
  vision = jax.eval_shape(lambda: t.build_models(nnx.Rngs(0)))["vision"]
  want = {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(vision, nnx.Param))}
  assert set(got) == want                        # the text tower and projections are dropped
  np.testing.assert_array_equal(got["embed/kernel"], model.image_tower.embed.kernel[...])
  # a text-stage GPT's arrays go under the VLM's `lm/`; a VLM run's are kept as they are
  assert t.convert_source("vlm", {"embed/embedding": 0}) == {"lm/embed/embedding": 0}
  assert t.convert_source("vlm", {"lm/embed/embedding": 0}) == {"lm/embed/embedding": 0}


def task(variant="smoke_flamingo", **overrides):
  c = captions_vlm.get_config(variant)
  c.num_eval = 50
  for k, v in overrides.items():
    node, *rest = k.split(".")
    if rest:
      c[node][rest[0]] = v
    else:
      c[k] = v
  return VLMTask(c)


def test_flamingo_trains_resampler_and_cross_attention_only():
  t = task()
  models = jax.eval_shape(lambda: t.build_models(nnx.Rngs(0)))
  vis, model = models["vision"], models["vlm"]
  count = lambda m, f: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.All(nnx.Param, f))))
  # xattn_every=1 on 2 layers: 2 gated blocks; resampler 8 latents, 2 layers, width C
  want = 2 * flamingo.gated_xattn_param_count(D, C) + flamingo.resampler_param_count(C, 8, 2)
  assert count(model, t.trainable("vlm")) == want
  assert count(vis, t.trainable("vision")) == 0
  assert count(model, nnx.Param) == want + smoke_lm_params()
  assert [b is not None for b in model.lm.cross_attn] == [True, True]


def test_bad_inputs_one_line_each(tmp_path):
  with pytest.raises(ConfigError, match="config.vlm.kind"):
    task(**{"vlm.kind": "blip"})
  with pytest.raises(ConfigError, match="config.vlm.projector"):
    task(**{"vlm.projector": "qformer"})
  with pytest.raises(ConfigError, match="config.stage"):
    task(stage="pretrain")
  # an image encoder whose width disagrees with the projector's input
  clip_wd = tmp_path / "clip"
  clip_wd.mkdir()
  cfg = captions_vlm.get_config("smoke_align")
  rec = {"dataset": "digits", "model": {"vision": {**cfg.model.vision.to_dict(), "d_model": 32}}}
  (clip_wd / "config.json").write_text(json.dumps(rec))
  with pytest.raises(ConfigError) as e:
    task("smoke_align", **{"init_from_models.vision": str(clip_wd)})
  msg = str(e.value)
  assert "\n" not in msg and "vision.d_model=32 but config.model.vision.d_model=64" in msg
  assert "disagrees with the projector's input" in msg and "--config.model.vision.d_model=32" in msg
  with pytest.raises(ConfigError, match="holds no config.json"):
    task("smoke_align", **{"init_from_models.vision": str(tmp_path)})
