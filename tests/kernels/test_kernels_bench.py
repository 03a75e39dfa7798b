"""The flash attention bench runs on CPU, labels itself, and counts FLOPs by the stated formula."""

import pytest

from genfm.kernels import bench_flash


def test_attention_flops_formula():
  # 4·B·N·T·S·H: B=2, N=16, T=S=1024, H=128 -> 2·16·4·1024²·128 = 17,179,869,184.
  assert bench_flash.attention_flops(2, 16, 1024, 1024, 128, False) == 17_179_869_184
  assert bench_flash.attention_flops(2, 16, 1024, 1024, 128, True) == 17_179_869_184 / 2
  assert bench_flash.attention_flops(1, 1, 8, 8, 8, False, backward=True) == 3.5 * 4 * 8**3


@pytest.mark.slow
def test_run_on_cpu_emits_labelled_interpret_records():
  records = []
  bench_flash.run(records.append)
  timed = [r for r in records if "seconds" in r]
  assert {(r["impl"], r["pass"]) for r in timed} == {
      (i, p) for i in ("pallas", "xla") for p in ("fwd", "fwd+bwd")}
  for r in timed:
    assert r["note"] == {"pallas": "interpret mode, not a speed figure",
                         "xla": "CPU reference, not a speed figure"}[r["impl"]]
    assert r["seconds"] > 0 and r["tflops_per_sec"] > 0
    assert r["flops"] == bench_flash.attention_flops(1, 2, 128, 128, 64, True, r["pass"] != "fwd")
  assert any(r.get("skipped") == "needs a CUDA GPU" for r in records)
