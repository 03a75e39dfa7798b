"""image_nfe: every family samples at exactly the NFE of its row; the table and figure are written
from the rows; a workdir that is not a run, or of another task, is refused in one line."""

import json
import os

import ml_collections
import pytest

from genfm.diffusion import flow
from genfm.experiments import image_nfe
from genfm.experiments.configs import fashion_cd, fashion_ddpm, fashion_dit


def _cfg(module, variant=""):
  return ml_collections.ConfigDict(module.get_config(variant).to_dict())


def test_settings_spend_exactly_the_row_nfe():
  ddpm, flow_cfg, cm = _cfg(fashion_ddpm), _cfg(fashion_dit, "flow"), _cfg(fashion_cd)
  for nfe in (1, 2, 5, 10, 50):
    (label, kw), = image_nfe.settings(ddpm, nfe)
    assert (label, kw) == ("ddim", {"sampler": "ddim", "num_steps": nfe})
    rows = image_nfe.settings(flow_cfg, nfe)
    assert [flow.nfe(kw["sampler"], kw["num_steps"]) for _, kw in rows] == [nfe] * len(rows)
    assert [label for label, _ in rows] == (["euler", "heun"] if nfe % 2 == 0 else ["euler"])
  assert image_nfe.settings(cm, 1) == [("1-step", {"sigmas": (80.0,)})]
  assert image_nfe.settings(cm, 2) == [("2-step", {"sigmas": (80.0, 0.8)})]
  assert image_nfe.settings(cm, 5) == []          # not extrapolated
  assert [image_nfe.family(c) for c in (ddpm, flow_cfg, cm, _cfg(fashion_dit))] == [
      "U-Net DDPM", "DiT flow", "CM (cd)", "DiT DDPM"]


def test_write_makes_one_row_per_run_and_sampler(tmp_path):
  rows = [{"run": "a", "family": "U-Net DDPM", "sampler": "ddim", "nfe": 1, "fd": 90.0},
          {"run": "a", "family": "U-Net DDPM", "sampler": "ddim", "nfe": 10, "fd": 20.5},
          {"run": "b", "family": "DiT flow", "sampler": "heun", "nfe": 10, "fd": 12.25}]
  image_nfe.write(str(tmp_path), rows, [1, 10], 2.91, 500)
  md = (tmp_path / "image_nfe.md").read_text().splitlines()
  assert md[0].startswith("FD (n = 500, real-vs-real floor 2.91)")
  assert "| a | U-Net DDPM | ddim | 90.00 | 20.50 |" in md
  assert "| b | DiT flow | heun |  | 12.25 |" in md          # blank, not a made-up number
  assert json.loads((tmp_path / "image_nfe.json").read_text()) == rows
  assert os.path.getsize(tmp_path / "image_nfe.png") > 1000


def test_bad_workdirs_are_one_line_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    image_nfe.load(str(tmp_path), 10)
  (tmp_path / "config.json").write_text(json.dumps({"task": "classify"}))
  with pytest.raises(ValueError, match="holds a .classify. run; this script needs a diffusion_image / consistency run"):
    image_nfe.load(str(tmp_path), 10)
