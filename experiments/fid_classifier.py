"""Read back the image classifier a launcher run trained, as the feature map of the "FID".

`genfm.diffusion.fashion_fid` takes any feature function; this module, on the platform side (it
reads a workdir: config.json and the newest checkpoint), supplies the classifier for it, so the
diffusion library never imports `genfm.experiments`. `ensure` runs before a diffusion run's first
step: a classifier workdir that holds no finished run is trained there first from
`config.fid_classifier_config` (e.g. "fashion_lenet.py:smoke"), so a run needs one command.
"""

import json
import os

import ml_collections
from flax import nnx

from genfm.diffusion import fashion_fid
from genfm.experiments import data, prerequisite, train
from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks import get_task


def ensure(workdir: str, config_spec: str, dataset: str) -> None:
  """A finished classifier run of `dataset` in `workdir`, trained now from `config_spec`
  ("name.py[:variant]" under experiments/configs) if it has none; one-line errors otherwise."""
  prerequisite.ensure_run(
      workdir, config_spec, key="config.fid_classifier_workdir",
      spec_key="config.fid_classifier_config", task="classify", dataset=dataset,
      hint="fashion_lenet.py:smoke" if dataset == "digits" else "fashion_lenet.py",
      skip="--config.fid_classifier_workdir='' to skip the FD", what="FID classifier")


def _read_config(workdir: str) -> tuple[str, dict]:
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    return path, json.load(f)


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
  _, cfg_dict = _read_config(workdir)
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


def frechet_evaluator(workdir: str, dataset: str, num_samples: int,
                      seed: int) -> fashion_fid.FrechetEvaluator:
  """The FD evaluator of a run that generates `dataset` images: the classifier trained in
  `workdir` as the feature map, `num_samples` test images of `dataset` as the reference set (and
  the real-vs-real floor at that n). A missing or mismatched classifier is one ConfigError line."""
  try:
    classifier, clf_cfg = load_classifier(workdir)
  except (FileNotFoundError, ValueError) as e:     # one line from the launcher, exit 2
    raise ConfigError(f"config.fid_classifier_workdir: {e}") from None
  if clf_cfg.get("dataset") != dataset:
    raise ConfigError(f"the FID classifier in {workdir} was trained on "
                      f"{clf_cfg.get('dataset')!r}, this run generates {dataset!r}")
  test = data.load(dataset, "test").arrays["image"]
  return fashion_fid.FrechetEvaluator(fashion_fid.make_feature_fn(classifier), test, num_samples,
                                      seed)


_EVALUATORS: dict[tuple, fashion_fid.FrechetEvaluator] = {}


def evaluator_for(config) -> fashion_fid.FrechetEvaluator | None:
  """The FD evaluator a run's config asks for (`fid_classifier_workdir`, `dataset`,
  `eval.num_samples`, `eval.sample_seed`), built once per process (the classifier run is read
  only); None when `config.fid_classifier_workdir` is empty."""
  workdir = config.get("fid_classifier_workdir", "")
  if not workdir:
    return None
  key = (os.path.abspath(workdir), config.dataset, config.eval.num_samples,
         config.eval.sample_seed)
  if key not in _EVALUATORS:
    _EVALUATORS[key] = frechet_evaluator(workdir, config.dataset, config.eval.num_samples,
                                         config.eval.sample_seed)
  return _EVALUATORS[key]
