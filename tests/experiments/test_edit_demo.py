"""edit_demo: the whole demo on a tiny digits U-Net (strength 0 leaves the images unchanged, the
known pixels of inpainting and outpainting are exact, tables and figures are written), and bad
input in one line through the script."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.experiments import data
from genfm.experiments.configs import fashion_ddpm
from genfm.experiments.edit_demo import run_demo
from genfm.experiments.tasks.diffusion_image import DiffusionImageTask


def test_run_demo_on_a_tiny_unet(tmp_path):
  config = fashion_ddpm.get_config("smoke")
  config.fid_classifier_workdir = ""
  task = DiffusionImageTask(config)
  model = task.build_model(nnx.Rngs(0))
  rng = np.random.default_rng(0)        # a "trained" U-Net: its zero output conv moved
  nnx.update(model, jax.tree.map(lambda p: p + jnp.asarray(0.05 * rng.normal(size=p.shape),
                                                           p.dtype),
                                 nnx.state(model, nnx.Param)))
  model.eval()
  test = data.load("digits", "test").arrays
  images, labels = test["image"][:10], test["label"][:10]
  # a stand-in classifier: the brightest-row index mod 10 (deterministic, image dependent)
  predict = lambda x: np.argmax(np.asarray(x).sum((2, 3)), axis=1) % 10
  out = run_demo(task, model, predict, images, labels, str(tmp_path), strengths=(0, 0.5, 1),
                 num_steps=4, resample=2, jump=1, hole=4, keep=4)
  s0 = out["sdedit"]["0"]
  assert s0["rmse_to_input"] == 0.0 and s0["network_evals_per_image"] == 0
  assert s0["class_kept"] == out["accuracy_originals"]
  assert out["sdedit"]["1"]["network_evals_per_image"] == 2 * 4       # CFG: 2 per DDIM step
  assert out["sdedit"]["0.5"]["rmse_to_input"] > 0
  for name, generated in (("inpaint", 16), ("outpaint", 64 - 16)):
    r = out[name]
    assert r["hole_pixels"] == generated
    for u, evals in ((1, 2 * 4), (2, 2 * 7)):      # U = 2, jump 1 on 4 steps: 4 + 3 reverse moves
      assert r[f"resample_{u}"]["known_max_abs_diff"] == 0.0
      assert r[f"resample_{u}"]["network_evals_per_image"] == evals
      assert r[f"resample_{u}"]["rmse_in_hole"] > 0
  assert json.load(open(tmp_path / "edit_demo.json")) == out
  table = (tmp_path / "edit_demo.md").read_text()
  assert table.count("| RePaint U=2") == 2 and table.count("(U=1)") == 2 and "| 0.5 |" in table
  for f in ("sdedit.png", "inpaint.png", "outpaint.png"):
    assert os.path.getsize(tmp_path / f) > 0


@pytest.mark.parametrize("args,message", [
    ([], "--workdir is required"),
    (["--workdir=/nonexistent/run"], "has no readable config.json"),
    (["--workdir=/nonexistent/run", "--strengths=0.5,1.5"],
     r"strength must be a number in \[0, 1\]"),
])
def test_bad_input_one_line(args, message):
  r = subprocess.run([sys.executable, "-m", "genfm.experiments.edit_demo", *args],
                     capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 2 and last.startswith("edit_demo: ")
  assert re.search(message, last), last
