"""genfm-bench memory: its byte accounting agrees with the state's arrays and a hand count, and
its 16 GiB fit table is ordered as the formula says (remat and FSDP only ever help)."""

from genfm.experiments import bench_memory
from genfm.transformers import gpt


def test_formula_by_hand():
  s, b, h, a, V, L = 8, 2, 4, 2, 5, 3
  layer_none = 64 * s * b * h + 5 * a * s * s * b
  head = 8 * s * b * V
  kw = dict(layers=L, context=s, batch=b, width=h, heads=a, vocab=V)
  assert bench_memory.activation_bytes("none", **kw) == L * layer_none + layer_none + head
  assert bench_memory.activation_bytes("full", **kw) == L * 4 * s * b * h + layer_none + head
  assert bench_memory.activation_bytes("dots", **kw) == L * 36 * s * b * h + layer_none + head
  assert bench_memory.state_bytes(1000, fsdp=8) == 2000


def test_measure_accounts_params_optimizer_and_batch():
  """argument bytes of the compiled step = fp32 params + AdamW's μ, ν and step count + tokens."""
  cfg = gpt.GPTConfig(vocab_size=16, context_len=32, num_layers=2, d_model=16, num_heads=2)
  rec = bench_memory.measure(cfg, 2, "full", time_it=False)
  n = gpt.param_count(cfg)
  assert rec["params"] == n and rec["param_bytes"] == 4 * n
  assert rec["optimizer_state_bytes"] == 2 * 4 * n + 4          # μ, ν, int32 count
  assert rec["argument_bytes"] == rec["param_bytes"] + rec["optimizer_state_bytes"] + 2 * 33 * 4
  assert rec["activation_temp_bytes"] > 0
  assert rec["formula_activation_bytes"] == bench_memory.activation_bytes(
      "full", layers=2, context=32, batch=2, width=16, heads=2, vocab=16)


def test_largest_fit_ordering():
  kw = dict(context=8, batch=2, width=4, heads=2, vocab=5)
  order = [name for name, *_ in bench_memory.FAMILY]
  rank = lambda name: -1 if name is None else order.index(name)
  unit = {p: (1.0, 1.0) for p in bench_memory.POLICIES}
  one, fsdp = bench_memory.largest_fit(unit), bench_memory.largest_fit(unit, fsdp=8)
  assert rank(one["full"]) >= rank(one["dots"]) >= rank(one["none"])
  for p in bench_memory.POLICIES:
    assert rank(fsdp[p]) >= rank(one[p])
  # GPT-2 small at batch 8 × 1024 tokens with full remat, by the formula: 16·124M = 2.0 GB of
  # state plus 12·4·8192·768 + (64·8192·768 + 5·12·1024²·8) + 8·8192·50257 = 4.5 GB: it fits.
  assert rank(one["full"]) >= 0
  assert bench_memory.activation_bytes("full", layers=2, calibration=(2.0, 3.0), **kw) == (
      2 * 2 * 4 * 8 * 2 * 4 + 3 * (64 * 8 * 2 * 4 + 5 * 2 * 64 * 2 + 8 * 8 * 2 * 5))
