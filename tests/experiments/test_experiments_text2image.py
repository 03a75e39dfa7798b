"""The text2image task (experiments/tasks/text2image.py, config fashion_t2i.py): one-line errors
for a prompt longer than the text context and for a text tower that does not fit, the loss is
L_simple with prompt dropout to the empty prompt, a negative prompt equal to the empty prompt
reproduces plain CFG bit for bit through `sample_text`, the per-token attention maps and the
attribute metric, and the `:smoke` config through the real launcher plus `t2i_sweep`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import fashion_fid
from genfm.experiments.configs import fashion_t2i
from genfm.experiments.data import captions
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.text2image import Text2ImageTask, class_word_weight

# Stated in fashion_t2i.py (`:smoke`, 300 steps, n = 140 held-out prompts, DDIM-20, s = 3):
# measured FD 44.5 (floor 5.58), test loss 0.117; the untrained network scores ~128 (the
# fashion_ddpm smoke's untrained value with the same classifier).
SMOKE_FD_BOUND = 70.0
SMOKE_LOSS_BOUND = 0.2


def smoke_config():
  cfg = fashion_t2i.get_config("smoke")
  cfg.fid_classifier_workdir = ""     # no classifier needed below (the launcher test trains one)
  return cfg


@pytest.fixture(scope="module")
def task():
  return Text2ImageTask(smoke_config())


@pytest.fixture(scope="module")
def models(task):
  """The smoke models with every parameter perturbed (NumPy draws), so the zero-initialised
  output layers and cross-attention projections are active and the text reaches the output."""
  ms = nnx.eval_shape(lambda: task.build_models(nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  out = {}
  for name, m in ms.items():
    graphdef, state = nnx.split(m)
    leaves, treedef = jax.tree.flatten(state)
    out[name] = nnx.merge(graphdef, jax.tree.unflatten(treedef, [
        jnp.asarray(rng.normal(0, 0.15, l.shape), l.dtype) if jnp.issubdtype(l.dtype, jnp.floating)
        else jnp.zeros(l.shape, l.dtype) for l in leaves]))
  return out


def test_prompt_longer_than_the_text_context_is_one_line(task):
  long = "a photo of a " + "thick " * 14 + "two"
  with pytest.raises(ConfigError, match="longer than the text context of 16") as e:
    task.prompt_tokens(["a two", long])
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="outside the caption vocabulary"):
    task.prompt_tokens(["a photo of a unicorn"])
  tok = task.prompt_tokens(["a two", ""])
  assert tok.shape == (2, 16) and captions.decode(tok[0]) == "a two"
  np.testing.assert_array_equal(tok[1], task.empty_tokens)      # BOS EOS PAD…
  assert list(task.empty_tokens[:3]) == [captions.BOS, captions.EOS, captions.PAD]


def _fake_run(path, **over):
  os.makedirs(path, exist_ok=True)
  rec = {"task": "clip", "text_len": 16, "dataset": "digits",
         "model": {"text": {"num_layers": 2, "d_model": 64, "num_heads": 4}}}
  rec.update(over)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(rec, f)
  return str(path)


def test_text_tower_sources_are_checked_in_one_line(tmp_path):
  cfg = smoke_config()
  cfg.allow_random_text = False
  with pytest.raises(ConfigError, match="init_from_models.text is empty"):
    Text2ImageTask(cfg)
  cfg = fashion_t2i.get_config("smoke")
  cfg.fid_classifier_workdir, cfg.text = "", fashion_t2i.get_config("").text   # 2 × 64, 4 heads
  for over, match in [({"task": "vlm"}, "not a clip run"),
                      ({"model": {"text": {"num_layers": 2, "d_model": 32, "num_heads": 4}}},
                       r"text.d_model=32 but config.text.d_model=64; set --config.text.d_model=32"),
                      ({"text_len": 12}, "text_len=12, this run has text_len=16")]:
    cfg.init_from_models.text = _fake_run(tmp_path / str(len(match)), **over)
    with pytest.raises(ConfigError, match=match) as e:
      Text2ImageTask(cfg)
    assert "\n" not in str(e.value)
  cfg.init_from_models.text = _fake_run(tmp_path / "ok")
  assert Text2ImageTask(cfg).text_source.startswith("clip run")
  cfg.init_from_models.text = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="holds no config.json"):
    Text2ImageTask(cfg)


def test_frozen_text_tower_comes_from_the_clip_runs_text_tower(task):
  assert task.trainable("text") is nnx.Nothing
  arrays = {"text_tower/embed/embedding": 1, "image_tower/patch/kernel": 2,
            "text_proj/kernel": 3, "logit_scale": 4}
  assert task.convert_source("text", arrays) == {"embed/embedding": 1}
  assert task.convert_source("model", arrays) is arrays


def test_loss_is_l_simple_with_prompt_dropout_to_the_empty_prompt(task, models):
  """Documented key split (x₀ key, then t, ε, u from three keys); prompts with u < p_uncond
  become the empty prompt; ε-MSE by hand in float64 with the network's prediction."""
  src = task.train_source().arrays
  B = 16
  batch = {k: jnp.asarray(v[:B]) for k, v in src.items()}
  key, p = jax.random.key(7), 0.5
  _, key2 = jax.random.split(key)
  t_key, z_key, u_key = jax.random.split(key2, 3)
  t = np.asarray(jax.random.randint(t_key, (B,), 0, 1000))
  z = np.asarray(jax.random.normal(z_key, (B, 8, 8, 1)), np.float64)
  u = np.asarray(jax.random.uniform(u_key, (B,)))
  assert 0 < (u < p).sum() < B
  tokens = np.where((u < p)[:, None], task.empty_tokens[None], np.asarray(batch["text"]))
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  x0 = np.asarray(batch["image"], np.float64) / 127.5 - 1.0
  xt = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * z
  pred = np.asarray(nnx.jit(lambda m, tx, x, t, tok: m(
      x, t, **dict(zip(("context_BSD", "context_mask_BS"), task.text_context(tx, tok)))))(
          models["model"], models["text"], jnp.asarray(xt, jnp.float32), jnp.asarray(t),
          jnp.asarray(tokens)))
  hand_B = np.mean((pred - z) ** 2, axis=(1, 2, 3))
  loss_B = nnx.jit(lambda m, tx, b, k: task.text_loss(m, tx, b, k, p_uncond=p))(
      models["model"], models["text"], batch, key)
  np.testing.assert_allclose(np.asarray(loss_B), hand_B, rtol=1e-4)
  # Without dropout the text differs, and so does the loss: the prompts reach the network.
  full_B = nnx.jit(lambda m, tx, b, k: task.text_loss(m, tx, b, k, p_uncond=0.0))(
      models["model"], models["text"], batch, key)
  assert np.abs(np.asarray(full_B) - hand_B)[u < p].max() > 1e-5
  np.testing.assert_allclose(np.asarray(full_B)[u >= p], hand_B[u >= p], rtol=1e-4)


def test_negative_prompt_equal_to_the_empty_prompt_is_plain_cfg_exactly(task, models):
  tok = task.prompt_tokens(["a photo of a thin two", "a seven", "there is a wide nine here"])
  key = jax.random.key(3)
  plain = task.sample_text(models, key, tok, scale=3.0, num_steps=3)
  same = task.sample_text(models, key, tok, scale=3.0, num_steps=3,
                          negative_tokens_BS=task.prompt_tokens([""]))
  np.testing.assert_array_equal(same, plain)
  other = task.sample_text(models, key, tok, scale=3.0, num_steps=3,
                           negative_tokens_BS=task.prompt_tokens(["a thick two"]))
  assert np.abs(other - plain).max() > 1e-3
  cond = task.sample_text(models, key, tok, scale=1.0, num_steps=3,
                          negative_tokens_BS=task.prompt_tokens(["a thick two"]))
  np.testing.assert_array_equal(cond, task.sample_text(models, key, tok, scale=1.0, num_steps=3))
  assert plain.shape == (3, 8, 8, 1)


def test_attention_maps_zero_on_pad_and_class_word_weight(task, models):
  tok = task.prompt_tokens(["a photo of a thin two", "a seven"])
  pixels = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  m = task.attention_maps(models, pixels, tok, t=300)
  assert m["maps_BHWS"].shape == (2, 8, 8, 16) and m["num_layers"] == 4   # down, 2 up, middle
  np.testing.assert_array_equal(m["weights_BS"][tok == captions.PAD], 0.0)
  np.testing.assert_array_equal(m["maps_BHWS"][0, :, :, 8:], 0.0)        # after <eos>
  np.testing.assert_allclose(m["weights_BS"].sum(-1), 1.0, rtol=1e-5)
  two, seven = (captions.VOCAB.index(w) for w in ("two", "seven"))
  want = (m["weights_BS"][0][tok[0] == two].sum() + m["weights_BS"][1][tok[1] == seven].sum()) / 2
  assert class_word_weight(m["weights_BS"], tok, [2, 7], "digits") == pytest.approx(want)


def test_attribute_agreement_is_one_on_the_real_images_of_the_prompts(task):
  """The held-out captions name the levels measured on their own images: real images agree."""
  test = task._test                                # pylint: disable=protected-access
  pixels = fashion_fid.from_pixels(test["image"][:200], 0)
  assert task.attribute_agreement(pixels, test["label"][:200], test["attributes"][:200]) == 1.0
  shuffled = test["attributes"][:200][::-1]
  assert task.attribute_agreement(pixels, test["label"][:200], shuffled) < 0.8


@pytest.mark.slow   # ~2 min CPU: LeNet, 300 steps, 140 guided DDIM-20 samples, a 2-scale sweep
def test_smoke_through_the_launcher_and_the_sweep(tmp_path, launch):
  clf_dir, workdir = str(tmp_path / "clf"), tmp_path / "t2i"
  proc = launch("fashion_t2i.py:smoke", str(workdir), f"--config.fid_classifier_workdir={clf_dir}",
                timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "summary.json") as f:
    s = json.load(f)
  assert s["finished"] and s["step"] == 300 and s["text_tower_random"] == 1.0
  assert 0.0 < s["fd_floor"] < s["fd"] <= SMOKE_FD_BOUND, s
  assert s["test_loss"] < SMOKE_LOSS_BOUND, s       # ε-loss starts at E‖ε‖² = 1
  assert 0.0 <= s["class_accuracy"] <= 1.0 and 0.0 <= s["attribute_agreement"] <= 1.0
  assert 0.0 < s["attn_class_word"] < 1.0
  for name in ("samples_step300.png", "attention_maps_step300.png"):
    assert os.path.getsize(workdir / name) > 1000

  sweep = subprocess.run(
      [sys.executable, "-m", "genfm.experiments.t2i_sweep", f"--workdir={workdir}",
       "--num_samples=40", "--scales=1,3", "--num_negative=10"],
      capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert sweep.returncode == 0, sweep.stderr[-3000:]
  with open(workdir / "t2i_sweep.json") as f:
    out = json.load(f)
  assert [r["scale"] for r in out["rows"]] == [1.0, 3.0]
  assert all(0.0 < r["fd_floor"] < r["fd"] for r in out["rows"])
  neg = out["negative"]
  assert neg["negative_prompt"] == "a photo of a thick two"
  assert {"plain_share_named_level", "negative_share_named_level"} <= set(neg)
  for name in ("t2i_sweep.png", "t2i_sweep.md", "t2i_negative.png"):
    assert os.path.getsize(workdir / name) > 100
  bad = subprocess.run(
      [sys.executable, "-m", "genfm.experiments.t2i_sweep", f"--workdir={workdir}",
       "--num_samples=4", "--scales=1", "--prompt=a photo of a " + "thick " * 14 + "two"],
      capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode != 0 and "longer than the text context" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_bench_rows_and_their_models(monkeypatch):
  """`genfm-bench text2image` times fashion_ddpm's class U-Net and fashion_t2i's text U-Net and
  DiT (the step itself stubbed here); the denoisers' trainable parameter counts are pinned."""
  from genfm.experiments import bench, bench_t2i  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(bench, "matmul_peak", lambda: {"flops_per_sec": 1.0})
  seen = []
  monkeypatch.setattr(bench, "train_step_record",
                      lambda task, cfg, **kw: seen.append(type(task).__name__) or {"seconds": 1})
  out = []
  bench_t2i.text2image_bench(out.append, sample=False)
  assert seen == ["DiffusionImageTask", "Text2ImageTask", "Text2ImageTask"]
  assert [(r["model"], r["params"]) for r in out] == [
      ("unet_class", 268_017), ("unet_text", 310_993), ("dit_text", 2_138_768)]
