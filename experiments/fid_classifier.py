"""Read back the image classifier a launcher run trained, as the feature map of the "FID".

`genfm.diffusion.fashion_fid` takes any feature function; this module, on the platform side (it
reads a workdir: config.json and the newest checkpoint), supplies the classifier for it, so the
diffusion library never imports `genfm.experiments`.
"""

import json
import os

import ml_collections
from flax import nnx

from genfm.experiments import train
from genfm.experiments.tasks import get_task


def load_classifier(workdir: str) -> tuple[nnx.Module, dict]:
  """The classifier trained by the launcher in `workdir` (its config.json + newest checkpoint),
  in eval mode, and that config as a dict."""
  path = os.path.join(workdir, "config.json")
  cmd = ("python -m genfm.experiments.run --config=experiments/configs/fashion_lenet.py "
         f"--workdir={workdir}")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no FID classifier in {workdir!r} (no config.json). Train one first: `{cmd}` (about "
        "7 min on a quiet 2-core CPU; fashion_mlp.py also works), or point "
        "config.fid_classifier_workdir at an existing classifier run.")
  with open(path) as f:
    cfg_dict = json.load(f)
  if cfg_dict.get("task") != "classify":
    raise ValueError(f"{workdir!r} holds a {cfg_dict.get('task')!r} run, not an image classifier "
                     f"(task 'classify'); train one with `{cmd}`.")
  config = ml_collections.ConfigDict(cfg_dict)
  task = get_task(config)
  restored = train.restore_eval_model(task, config, workdir)
  if restored is None:
    raise FileNotFoundError(f"{workdir!r} holds a classifier config but no checkpoint; finish "
                            f"the run with `{cmd}`.")
  model, _ = restored
  return model, cfg_dict
