"""The bench entry point: JSON lines whose FLOP counts agree with a hand count."""

import json

from genfm.experiments import bench


def test_matmul_peak_and_mlp_step_report_consistent_flops(capsys):
  assert bench.main(["matmul_peak", "mlp_train_step"]) == 0
  peak, mlp = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  n = peak["shape"][0]
  assert abs(peak["flops_per_sec"] * peak["seconds"] - 2 * n**3) / (2 * n**3) < 1e-9
  # MLP 784-512-256-10 at batch B: forward 2·B·W FLOPs (W = weights), weight gradients 2·B·W,
  # input gradients 2·B·(W − 784·512) (none needed for the data), plus a few % elementwise.
  weights = 784 * 512 + 512 * 256 + 256 * 10
  hand = 2 * mlp["batch_size"] * (3 * weights - 784 * 512)
  assert 1.0 * hand < mlp["flops_per_step"] < 1.1 * hand, (mlp["flops_per_step"], hand)
  assert 0 < mlp["fraction_of_matmul_peak"] < 2


def test_unknown_benchmark_names_the_valid_ones(capsys):
  assert bench.main(["nope"]) == 2
  err = capsys.readouterr().err
  assert "unknown benchmark" in err and "matmul_peak" in err
