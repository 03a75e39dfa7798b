"""The flash bench runs on CPU and labels itself; FLOPs by the stated formula; memory scaling."""

import jax
import jax.numpy as jnp
import pytest

from genfm.kernels import bench_flash
from genfm.kernels import flash_attention as fa


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


def _fwd_bwd_temp_bytes(impl, t):
  def loss(q, k, v):
    out = fa.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    return jnp.sum(out.astype(jnp.float32))

  x = jax.ShapeDtypeStruct((1, t, 2, 64), jnp.bfloat16)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_flash_temp_memory_is_linear_in_length_xla_quadratic():
  """Doubling T doubles the Pallas fwd+bwd scratch; the XLA reference's [B, N, T, S] grows 4x."""
  pallas = [_fwd_bwd_temp_bytes("pallas", t) for t in (256, 512)]
  xla = [_fwd_bwd_temp_bytes("xla", t) for t in (256, 512)]
  assert 1.8 < pallas[1] / pallas[0] < 2.2, pallas
  assert xla[1] / xla[0] > 3.5, xla
  assert pallas[1] < xla[1]


def test_tune_records_each_setting_and_reports_bad_ones_as_rows():
  """The tile sweep for a lent GPU, run tiny in interpret mode: one fwd and one fwd+bwd row per
  valid setting, labelled with its options; an invalid tile becomes an error row, not a raise."""
  rows = []
  configs = ((fa.BlockSizes(32, 32, 32, 32), 4, 2), (fa.BlockSizes(0, 32, 32, 32), 4, 2))
  bench_flash.tune(rows.append, t=64, h=16, causal=True, configs=configs, iters=1, b=1, n=2)
  ok = [r for r in rows if "error" not in r]
  assert [r["pass"] for r in ok] == ["fwd", "fwd+bwd"]
  assert ok[0]["pallas_options"]["block_sizes"]["block_q"] == 32
  assert ok[0]["flops"] == bench_flash.attention_flops(1, 2, 64, 64, 16, True)
  (bad,) = [r for r in rows if "error" in r]
  assert "positive" in bad["error"] and bad["pallas_options"]["block_sizes"]["block_q"] == 0
  with pytest.raises(ValueError, match="impl='pallas' only"):
    bench_flash.measure("xla", 1, 8, 1, 16, False, pallas_options={"num_warps": 4})
