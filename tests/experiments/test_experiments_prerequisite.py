"""Tests for genfm.experiments.prerequisite: a missing or mismatched prerequisite run is one line
naming the command that makes it; a finished run of the right task passes untouched."""

import json

import pytest

from genfm.experiments import prerequisite
from genfm.experiments.errors import ConfigError

KW = dict(key="config.x_workdir", spec_key="config.x_config", task="autoencoder",
          dataset="digits", hint="fashion_kl_ae.py:smoke")


def _run(tmp_path, finished=True, task="autoencoder", dataset="digits"):
  (tmp_path / "summary.json").write_text(json.dumps({"finished": finished}))
  (tmp_path / "config.json").write_text(json.dumps({"task": task, "dataset": dataset}))
  return str(tmp_path)


def test_a_finished_run_of_the_right_task_passes(tmp_path):
  prerequisite.ensure_run(_run(tmp_path), "", **KW)
  assert prerequisite.finished(str(tmp_path))
  assert prerequisite.read_config(str(tmp_path))["task"] == "autoencoder"


def test_a_missing_run_without_a_spec_names_the_command(tmp_path):
  with pytest.raises(ConfigError) as e:
    prerequisite.ensure_run(str(tmp_path / "none"), "", **KW, skip="set it to ''")
  msg = str(e.value)
  assert "\n" not in msg and "no finished autoencoder run" in msg
  assert "--config=experiments/configs/fashion_kl_ae.py:smoke" in msg
  assert "--config.x_config=fashion_kl_ae.py:smoke" in msg and msg.endswith("set it to ''")


def test_an_unfinished_run_counts_as_missing(tmp_path):
  with pytest.raises(ConfigError, match="no finished autoencoder run"):
    prerequisite.ensure_run(_run(tmp_path, finished=False), "", **KW)


@pytest.mark.parametrize("task,dataset", [("classify", "digits"), ("autoencoder", "fashion_mnist")])
def test_a_run_of_another_task_or_data_set_is_refused(tmp_path, task, dataset):
  with pytest.raises(ConfigError, match=f"holds a '{task}' run on '{dataset}'; it must hold a 'autoencoder' run on 'digits'"):
    prerequisite.ensure_run(_run(tmp_path, task=task, dataset=dataset), "", **KW)


def test_a_bad_spec_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"config.x_config='no_such_config.py'"):
    prerequisite.ensure_run(str(tmp_path / "none"), "no_such_config.py", **KW)


def test_config_difference_names_the_first_differing_key_with_both_values(tmp_path):
  ours = {"dataset": "digits", "model": {"base_channels": 8}, "diffusion": {"schedule": "linear"},
          "latent_autoencoder_workdir": ""}
  theirs = {"dataset": "digits", "model": {"base_channels": 8, "added_later": 1},
            "diffusion": {"schedule": "cosine"}, "task": "classify"}
  keys = ("dataset", "model", "latent_autoencoder_workdir", "diffusion.schedule", "task")
  # "model" compares only the fields ours sets; an unrecorded latent workdir is "" (DEFAULTS)
  assert prerequisite.config_difference(ours, theirs, keys) == (
      "diffusion.schedule", "cosine", "linear")
  theirs["diffusion"]["schedule"] = "linear"
  assert prerequisite.config_difference(ours, theirs, keys) == ("task", "classify", "<missing>")
  assert prerequisite.config_difference(ours, theirs, keys, fixed={"task": "classify"}) is None
  theirs["model"]["base_channels"] = 16
  assert prerequisite.config_difference(ours, theirs, keys)[0] == "model"


def test_config_difference_compares_workdirs_as_absolute_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ours = {"latent_autoencoder_workdir": "runs/ae"}
  theirs = {"latent_autoencoder_workdir": str(tmp_path / "runs" / "ae")}
  assert prerequisite.config_difference(ours, theirs, ("latent_autoencoder_workdir",)) is None
  theirs["latent_autoencoder_workdir"] = str(tmp_path / "runs" / "other")
  assert prerequisite.config_difference(ours, theirs, ("latent_autoencoder_workdir",)) == (
      "latent_autoencoder_workdir", str(tmp_path / "runs" / "other"), str(tmp_path / "runs" / "ae"))
  assert prerequisite.config_difference({}, theirs, ("latent_autoencoder_workdir",))[2] == ""
