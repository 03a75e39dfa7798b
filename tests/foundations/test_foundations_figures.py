"""The figures script writes PNGs, and its optimizer runner really minimises."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import figures
from genfm.foundations import optimizers as opt


def test_writes_png(tmp_path):
  paths = figures.main([str(tmp_path), "--only", "schedules", "--quick"])
  assert [os.path.basename(p) for p in paths] == ["schedules.png"]
  with open(paths[0], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_run_optimizer_reaches_rosenbrock_minimum():
  # Rosenbrock's minimum is 0 at (1, 1); heavy ball from the race's start reaches 4e-3 in 500
  # steps (measured), from 6.5 at the start.
  path = figures.run_optimizer(opt.momentum(1e-3), figures.rosenbrock, jnp.array([-1.5, 2.0]),
                               500)
  assert path.shape == (501, 2)
  assert float(figures.rosenbrock(path[-1])) < 2e-2 < float(figures.rosenbrock(path[0]))
  np.testing.assert_allclose(figures.saddle(jnp.array([0.0, np.sqrt(2.0)])), -1.0, rtol=1e-6)


def test_unknown_figure_name(tmp_path):
  with pytest.raises(SystemExit):
    figures.main([str(tmp_path), "--only", "loss"])
