"""The controlnet task (config fashion_controlnet.py): a base run of another config, or none, is
refused in one line; the copy is fed exactly the base's encoder arrays and only the hint encoder
and zero convs are new; `:smoke` runs through the real launcher from a tiny base trained in the
test and meets its Expect line (control lowers the held-out ε-loss and raises the edge F1)."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import controlnet as cn
from genfm.experiments.configs import fashion_controlnet, fashion_ddpm
from genfm.experiments.errors import ConfigError
from genfm.experiments.models import path_str
from genfm.experiments.tasks.controlnet import ControlNetTask


def _fake_base(tmp_path, name="base", **changes):
  """A workdir with a checkpoint directory and fashion_ddpm:smoke's config.json (+ changes):
  enough for the task's checks (the weights are not read here)."""
  d = tmp_path / name
  (d / "checkpoints" / "150" / "state").mkdir(parents=True)
  cfg = json.loads(fashion_ddpm.get_config("smoke").to_json_best_effort())
  for k, v in changes.items():
    sub = cfg
    *head, last = k.split(".")
    for h in head:
      sub = sub[h]
    sub[last] = v
  (d / "config.json").write_text(json.dumps(cfg))
  return str(d)


def _smoke(base_dir, **overrides):
  c = fashion_controlnet.get_config("smoke")
  c.init_from, c.fid_classifier_workdir = base_dir, ""
  for k, v in overrides.items():
    c[k] = v
  return c


def test_bad_base_one_line(tmp_path):
  with pytest.raises(ConfigError, match="needs its base"):
    ControlNetTask(_smoke(""))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    ControlNetTask(_smoke(str(empty)))
  with pytest.raises(ConfigError, match=r"built for another base: .* whose model is .*"
                                        r"'base_channels': 16"):
    ControlNetTask(_smoke(_fake_base(tmp_path, "wide", **{"model.base_channels": 16})))
  with pytest.raises(ConfigError, match="built for another base: .* whose task is 'classify'"):
    ControlNetTask(_smoke(_fake_base(tmp_path, "clf", task="classify")))
  with pytest.raises(ConfigError, match="whose dataset is 'fashion_mnist'"):
    ControlNetTask(_smoke(_fake_base(tmp_path, "fm", dataset="fashion_mnist")))
  ok = _fake_base(tmp_path, "ok")
  c = _smoke(ok)
  c.controlnet.p_uncond = 1.5
  with pytest.raises(ConfigError, match=r"p_uncond must be in \[0, 1\]"):
    ControlNetTask(c)


def test_copy_takes_the_base_encoder_and_only_hint_and_zero_convs_are_new(tmp_path):
  task = ControlNetTask(_smoke(_fake_base(tmp_path)))
  models = nnx.eval_shape(lambda: task.build_models(nnx.Rngs(0)))
  base_paths = {path_str(p) for p, _ in nnx.to_flat_state(nnx.state(models["model"], nnx.Param))}
  base = {p: np.zeros(1) for p in base_paths}
  converted = task.convert_source("controlnet", base)
  assert task.convert_source("model", base) is base
  new = nnx.filterlib.to_predicate(task.new_parameters("controlnet"))
  fresh, taken = set(), set()
  for path, var in nnx.to_flat_state(nnx.state(models["controlnet"], nnx.Param)):
    (taken if path_str(path) in converted else fresh).add(path_str(path))
    assert (path_str(path) in converted) != new(path, var), path_str(path)
  # every converted array lands in the copy; every copy parameter comes from the base
  assert taken == set(converted) and all(p.startswith("copy/") for p in taken)
  assert {p.removeprefix("copy/") for p in taken} == {p for p in base_paths
                                                      if cn.encoder_paths(p)}
  assert fresh and all(p.split("/")[0] in ("hint", "zero_convs", "zero_mid") for p in fresh)
  assert any(p.startswith("up/") for p in base_paths)        # the decoder stays with the base
  assert task.trainable("model") is nnx.Nothing


# Two launcher processes (a 60-step base, then 100 ControlNet steps + eval); XLA compiles dominate.
@pytest.mark.slow
def test_smoke_through_the_launcher(tmp_path, launch):
  base, run = str(tmp_path / "base"), str(tmp_path / "cn")
  r = launch("fashion_ddpm.py:smoke", base, "--config.num_train_steps=60",
             "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=60",
             "--config.fid_classifier_workdir=", "--config.eval.num_samples=10",
             "--config.diffusion.sample_steps=2")
  assert r.returncode == 0, r.stderr[-2000:]
  r = launch("fashion_controlnet.py:smoke", run, f"--config.init_from={base}",
             "--config.fid_classifier_workdir=")
  assert r.returncode == 0, r.stderr[-2000:]
  s = json.load(open(os.path.join(run, "summary.json")))
  # the smoke's Expect line
  assert s["test_loss"] < s["test_loss_base"], s
  assert s["edge_f1_with"] > s["edge_f1_without"], s
  assert os.path.exists(os.path.join(run, "control_grid_step100.png"))
  # a base of another config, one line through the launcher (exit 2)
  r = launch("fashion_controlnet.py:smoke", str(tmp_path / "cn2"), f"--config.init_from={base}",
             "--config.model.base_channels=16", "--config.fid_classifier_workdir=")
  assert r.returncode == 2 and "another base" in r.stderr.strip().splitlines()[-1]
