"""`experiments/scaling.py`: the power-law fit recovers (a, α, c) from points drawn from a known
law, rejects too few points, and the driver trains 2 tiny sizes end to end through the real
launcher loop (absl flags, one workdir per size, scaling.json + scaling.png)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from genfm.experiments import scaling
from genfm.experiments.configs import shakespeare_char
from genfm.experiments.errors import ConfigError
from genfm.transformers import gpt


@pytest.mark.parametrize("a,alpha,c", [(20.0, 0.3, 1.4), (300.0, 0.5, 0.9), (5.0, 0.1, 2.2)])
def test_fit_recovers_a_known_power_law(a, alpha, c):
  """Exact points L_i = a·N_i^(−α) + c at 5 sizes spanning 1.5 decades: the fit returns them."""
  n = np.array([2e4, 5e4, 1e5, 3e5, 6e5])
  fit = scaling.fit_power_law(n, scaling.power_law(n, a, alpha, c))
  np.testing.assert_allclose([fit["a"], fit["alpha"], fit["c"]], [a, alpha, c], rtol=1e-4)
  assert fit["rms_residual"] < 1e-8


def test_fit_with_noise_stays_near_the_truth():
  """1 % noise on L − c (seeded) still gives α within its 3-σ interval of the truth."""
  rng = np.random.default_rng(0)
  n = np.geomspace(1e4, 1e6, 6)
  clean = scaling.power_law(n, 40.0, 0.35, 1.5)
  fit = scaling.fit_power_law(n, clean + 0.01 * (clean - 1.5) * rng.standard_normal(n.size))
  assert abs(fit["alpha"] - 0.35) < 3 * fit["alpha_stderr"] + 1e-3
  assert 0.0 <= fit["c"] < 1.5 + 0.05


def test_fit_and_config_reject_bad_input():
  with pytest.raises(ValueError, match="≥ 3"):
    scaling.fit_power_law([1e4, 1e5], [2.0, 1.8])
  with pytest.raises(ValueError, match="> 0"):
    scaling.fit_power_law([0, 1e4, 1e5], [2.0, 1.9, 1.8])
  with pytest.raises(ConfigError, match="multiple of num_heads"):
    scaling.size_config(30, 10_000)
  with pytest.raises(ConfigError, match="less than one batch"):
    scaling.size_config(32, 100)


def test_size_config_sets_width_steps_and_keeps_the_optimizer():
  """Steps = budget / (B·T); the nanoGPT optimizer knobs come from shakespeare_char; N is the
  hand formula's count minus the token and position tables (12·L·D² + biases/gains)."""
  c = scaling.size_config(64, 768_000)
  base = shakespeare_char.get_config()
  assert c.num_train_steps == 1000 and c.model.d_model == 64 and c.model.num_layers == 4
  for k in ("b2", "decay_mask", "min_lr_ratio", "learning_rate", "weight_decay"):
    assert c[k] == base[k]
  n = scaling.non_embedding_params(c, 84)
  L, D = 4, 64
  # qkv + out biases 4D, MLP biases 4D + D; 2 LayerNorms (gain + bias) a layer and a final one
  biases_and_gains = L * (4 * D + 5 * D) + (2 * L + 1) * 2 * D
  assert n == 12 * L * D * D + biases_and_gains
  total = gpt.param_count(gpt.GPTConfig(vocab_size=84, context_len=64, num_layers=4,
                                        num_heads=4, d_model=64))
  assert n == total - 84 * 64 - 64 * 64


@pytest.mark.slow  # two tiny trainings through the launcher loop in a subprocess (~20-40 s)
def test_driver_trains_two_tiny_sizes_end_to_end(tmp_path):
  workdir = str(tmp_path / "study")
  cmd = [sys.executable, "-m", "genfm.experiments.scaling", f"--workdir={workdir}",
         "--budget_tokens=6144", "--sizes=16,32", "--num_layers=1", "--num_heads=2",
         "--context_len=16", "--batch_size=8", "--eval_windows=40", "--learning_rate=1e-2"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "scaling.json")) as f:
    result = json.load(f)
  runs = result["runs"]
  assert [r["d_model"] for r in runs] == [16, 32]
  assert all(r["steps"] == 6144 // (8 * 16) == 48 for r in runs)
  assert runs[0]["non_embedding_params"] < runs[1]["non_embedding_params"]
  for r in runs:  # trained: well below the uniform-guess loss ln 84 = 4.43
    assert 0 < r["validation_loss"] < np.log(84) - 0.5
    with open(os.path.join(workdir, f"d{r['d_model']}", "summary.json")) as f:
      assert json.load(f)["validation_loss"] == r["validation_loss"]
  assert result["fit"] is None  # 2 sizes: nothing to fit
  assert os.path.getsize(os.path.join(workdir, "scaling.png")) > 1000
  # One line, status 2, for a width the heads do not divide.
  bad = subprocess.run(cmd[:5] + ["--sizes=15", "--num_heads=2"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode == 2 and "genfm: error: width 15" in bad.stderr
