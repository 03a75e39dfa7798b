"""Tests for the personalize task (experiments/tasks/personalize.py) and its config: what each
method trains (textual inversion: only v*; LoRA: only the adapters), DreamBooth's loss with
λ = 0, the one-line errors, and the `:smoke` run through the real launcher."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data, train
from genfm.experiments.configs import fashion_personalize
from genfm.experiments.errors import ConfigError
from genfm.experiments.models import path_str
from genfm.experiments.step import make_train_step
from genfm.experiments.tasks import get_task

# The :smoke config's promise (its docstring), measured with
#   python -m genfm.experiments.run --config=experiments/configs/fashion_personalize.py:smoke
# on a random base: the instance loss falls from 0.81 (steps 1-10) to 0.19 (steps 31-40).
SMOKE_EXPECT = {"instance_loss_ratio_max": 0.5}


def _config(method, **personalize):
  c = fashion_personalize.get_config("smoke")
  c.personalize.method = method
  c.personalize.prior_weight = 0.0
  c.personalize.update(personalize)
  c.fid_classifier_workdir = ""          # no classifier: these tests never sample
  c.batch_size = 4
  return c


def _values(models, state) -> dict[str, np.ndarray]:
  """{'model/…' or 'text/…': array} of every parameter (trainable and frozen) of the state."""
  out = {}
  for name, parts in state["models"].items():
    for part in ("params", "frozen"):
      for path, var in nnx.to_flat_state(parts[part]):
        out[f"{name}/{path_str(path)}"] = np.asarray(var.get_value() if hasattr(var, "get_value")
                                                     else var.value)
  return out


def _perturbed(state, key):
  """The base denoiser's parameters (its frozen part, or all of it for DreamBooth) plus
  N(0, 0.05²) noise: a random base has a zero-initialised output conv and cross-attention
  outputs, through which no gradient would reach the adapters or v*."""
  m = state["models"]["model"]
  part = "frozen" if jax.tree.leaves(m["frozen"]) else "params"
  leaves, tree = jax.tree.flatten(m[part])
  keys = jax.random.split(key, len(leaves))
  noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return {**state, "models": {**state["models"], "model": {**m, part: tree.unflatten(noisy)}}}


def _train(config, steps=2):
  task = get_task(config)
  models, state = train.init_state(task, config)
  state = _perturbed(state, jax.random.key(1))
  before = _values(models, state)
  it = data.make_iterator(task.train_source(), seed=0, shuffle=True,
                          batch_size=config.batch_size)
  step = jax.jit(make_train_step(task, config, models))
  for _ in range(steps):
    state, metrics = step(state, next(it))
  return task, models, before, _values(models, state), metrics


def _changed(before, after):
  assert set(before) == set(after)
  return sorted(k for k in before if not np.array_equal(before[k], after[k]))


def test_textual_inversion_changes_only_the_new_embedding():
  """Every parameter of the denoiser and the text tower (its table row of the token included)
  is bit-identical after 2 steps; v* alone moved, from the init word's embedding."""
  task, _, before, after, metrics = _train(_config("textual_inversion"))
  assert np.isfinite(float(metrics["loss"]))
  assert _changed(before, after) == ["text/concept"]
  assert len(before) > 40                 # the whole denoiser and tower were compared
  np.testing.assert_array_equal(before["text/concept"],
                                before["text/tower/embed/embedding"][task.init_id])
  assert task.init_id != task.token_id


def test_lora_trains_only_the_adapters_and_starts_as_the_base():
  task, models, before, after, _ = _train(_config("lora"))
  changed = _changed(before, after)
  assert changed and all(k.startswith("model/") and k.rsplit("/", 1)[1] in ("lora_a", "lora_b")
                         for k in changed)
  assert any(k.endswith("lora_b") for k in changed)
  # Self- and cross-attention projections were adapted, nothing else.
  adapted = {k.rsplit("/", 2)[1] for k in before if k.endswith("lora_a")}
  assert adapted == {"q", "k", "v", "out", "qkv", "proj"}
  # At init (B = 0) the adapted denoiser is the base, output for output.
  tuned = models.eval_models(train.init_state(task, task.config)[1], ema=False)
  base = task.base_models()
  x = jax.random.normal(jax.random.key(0), (2,) + task.image_shape)
  t = jnp.asarray([10, 900])
  tokens = task.prompt_tokens([task.instance_prompt, task.class_prompt])
  run = nnx.jit(lambda m, text: m(x, t, context_BSD=task.text_context(text, tokens)[0],
                                  context_mask_BS=jnp.asarray(tokens) != 0))
  np.testing.assert_array_equal(np.asarray(run(tuned["model"], base["text"])),
                                np.asarray(run(base["model"], base["text"])))


def test_dreambooth_with_prior_weight_zero_is_the_plain_instance_loss():
  """λ = 0: the loss equals text2image's own instance loss (the instance half of the split key)
  and ignores the class images; λ = 1 adds their mean loss (eq. (2) of 2208.12242)."""
  task = get_task(_config("dreambooth"))
  models, state = train.init_state(task, task.config)
  m = models.eval_models(_perturbed(state, jax.random.key(1)), ema=False)
  inst = {k: jnp.asarray(v) for k, v in task.train_source().get_batch(np.arange(4)).items()}
  rng = np.random.default_rng(0)
  prior = {"image": jnp.asarray(rng.integers(0, 256, inst["image"].shape).astype(np.uint8)),
           "label": inst["label"],
           "text": jnp.asarray(np.repeat(task.prompt_tokens([task.class_prompt]), 4, 0))}
  batch = {**inst, **{f"prior_{k}": v for k, v in prior.items()}}
  other = {**batch, "prior_image": 255 - prior["image"]}
  key = jax.random.key(3)
  k_inst, k_prior = jax.random.split(key)
  mean_loss = nnx.jit(lambda m, text, b, k: jnp.mean(task.text_loss(m, text, b, k, b["text"])))
  inst_loss = mean_loss(m["model"], m["text"], inst, k_inst)
  prior_loss = mean_loss(m["model"], m["text"], prior, k_prior)

  def personal(lam, b):
    task.config.personalize.prior_weight = lam
    return float(nnx.jit(lambda m, text: task.personal_loss(m, text, b, key)[0])(
        m["model"], m["text"]))

  l0 = personal(0.0, batch)
  assert l0 == personal(0.0, other)                 # the class images play no part
  np.testing.assert_allclose(l0, float(inst_loss), rtol=1e-6)   # up to XLA's fusion order
  l1 = personal(1.0, batch)
  np.testing.assert_allclose(l1, float(inst_loss + prior_loss), rtol=1e-6)
  assert l1 != personal(1.0, other)


def test_instance_data_is_the_stamped_class():
  task = get_task(_config("dreambooth"))
  src = task.train_source()
  p = task.config.personalize
  assert len(src) == max(p.num_instance * p.repeats, task.config.batch_size)
  images = src.arrays["image"]
  assert (images[:, :p.stamp_size, :p.stamp_size] == 255).all()
  assert (src.arrays["label"] == task.class_id).all()
  assert (src.arrays["text"] == task.prompt_tokens(["a bag one"])[0]).all()
  assert "prior_image" not in src.arrays           # λ = 0: no class images are sampled


@pytest.mark.parametrize("override, message", [
    (dict(method="hypernetwork"), r"config.personalize.method .*hypernetwork"),
    (dict(token="one"), r"config.personalize.token='one' must be a word .* never use"),
    (dict(token="photo"), r"config.personalize.token='photo' must be a word"),
    (dict(class_word="sneaker"), r"class_word='sneaker' is not a class of digits"),
    (dict(method="textual_inversion", prior_weight=1.0), r"prior_weight must be 0 for textual"),
    (dict(prompt="a {token} {cls} " + "photo of a " * 5),
     r"prompt: .* longer than the text context"),
])
def test_bad_settings_are_one_line(override, message):
  c = _config("dreambooth")
  c.personalize.update(override)
  with pytest.raises(ConfigError, match=message):
    get_task(c)


def test_a_random_base_outside_smoke_and_a_base_of_another_setting_are_refused(tmp_path):
  c = _config("dreambooth")
  c.allow_random_text = False
  with pytest.raises(ConfigError, match="starts from a finished text2image run"):
    get_task(c)
  base = json.loads(_config("dreambooth").to_json_best_effort())
  base.update(task="text2image")
  base["model"]["base_channels"] = 16
  (tmp_path / "config.json").write_text(json.dumps(base))
  c = _config("dreambooth")
  c.init_from = str(tmp_path)
  with pytest.raises(ConfigError, match=r"its model is .*'base_channels': 16.*this config's"):
    get_task(c)
  base["task"] = "clip"
  (tmp_path / "config.json").write_text(json.dumps(base))
  with pytest.raises(ConfigError, match="is a 'clip' run; the personalize task starts from"):
    get_task(c)


def test_smoke_through_the_launcher(tmp_path, launch):
  """The :smoke config end to end (random base, DreamBooth with 16 class images, 40 steps);
  without the classifier (training it would double the time), so no accuracies."""
  workdir = tmp_path / "pz"
  r = launch("fashion_personalize.py:smoke", workdir, "--config.fid_classifier_workdir=")
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["finished"] and summary["step"] == 40
  for g in ("", "class_", "other_"):
    for pre in ("", "base_"):
      assert 0.0 <= summary[f"{pre}{g}concept_rate"] <= 1.0
  assert "accuracy" not in summary
  logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [m["train_instance_loss"] for m in logs if "train_instance_loss" in m]
  assert len(losses) == 4
  assert losses[-1] <= SMOKE_EXPECT["instance_loss_ratio_max"] * losses[0], losses
  assert (workdir / "personalize_step40.png").exists()
