"""Fine-tuning benchmarks: `genfm-bench lora` (registered in `bench.py`).

Rows, all through the launcher's own step (`ModelSet` + `make_train_step`, AdamW):
  lora_train_step  GPT-2-small shape (124M; context 256, batch 2 on CPU; context 1024, batch 8,
                   bf16 on a GPU): full fine-tuning vs LoRA (r 8 on W_q, W_v, the paper's §7.1
                   choice) vs QLoRA (NF4 + double quantization, the same LoRA): step time,
                   trainable parameters, optimizer-state bytes and model bytes (parameters,
                   frozen base, NF4 storage), each also as a ratio to full fine-tuning. QLoRA
                   stores every projection in NF4 (embeddings, norms and biases stay fp32).
  nf4_matmul       x @ dequantize(W_nf4) vs x @ W for a [768, 3072] weight (GPT-2's FFN up):
                   the cost of dequantizing on the fly, in the compute dtype (fp32 CPU, bf16 GPU).
  nf4_storage      bits per parameter of the stored base (goal ≈ 4.127 with double quant).
  lora_merged_forward  the char CPU config's forward: base vs LoRA unmerged vs merged (the merged
                   model should run at the base's speed, ±3 %).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.experiments import bench
from genfm.experiments.models import path_pattern
from genfm.experiments.bench_lm import (CPU_CONFIG, GPT2_SMALL, GPTTask, launcher_step_row,
                                        optimizer_config)
from genfm.transformers import gpt, lora, nf4, qlora

TARGETS, RANK = "attn/(q|v)_proj", 8
NF4_MATMUL_CPU, NF4_MATMUL_GPU = (512, 768, 3072), (8192, 768, 3072)   # [M, K] @ [K, N]


def _methods(compute_dtype: str):
  """label → (adapt(model, rngs), trained filter)."""
  only_qv = nnx.All(nnx.LoRAParam, path_pattern(TARGETS))
  return {
      "full": (None, None),
      "lora": (lambda m, rngs: lora.apply_lora(m, TARGETS, RANK, 16.0, rngs=rngs), nnx.LoRAParam),
      # QLoRA stores every projection in NF4 (§4 of 2305.14314); the LoRAs of W_q, W_v train
      # (the same set as the LoRA row), the others stay at B = 0, frozen.
      "qlora": (lambda m, rngs: qlora.apply_qlora(m, "proj|up|down", RANK, 16.0,
                                                  compute_dtype=compute_dtype, rngs=rngs),
                only_qv),
  }


def lora_bench(emit) -> None:
  peak = bench.matmul_peak()
  emit(peak)
  on_cpu = jax.default_backend() == "cpu"
  cfg_model = GPT2_SMALL if on_cpu else dataclasses.replace(GPT2_SMALL, context_len=1024,
                                                            dtype="bfloat16")
  compute = "float32" if on_cpu else "bfloat16"
  B, iters = (2, 3) if on_cpu else (8, 10)
  batch = {"tokens": jax.random.randint(jax.random.key(1), (B, cfg_model.context_len + 1), 0,
                                        cfg_model.vocab_size)}
  rows = {}
  for label, (adapt, trained) in _methods(compute).items():
    cfg = optimizer_config()
    task = GPTTask(cfg, cfg_model, adapt, trained)
    rows[label] = {"name": "lora_train_step", "method": label, "context_len":
                   cfg_model.context_len, "batch_size": B, "dtype": cfg_model.dtype,
                   **launcher_step_row(task, cfg, batch, iters=iters)}
  for r in rows.values():
    for k in ("seconds", "optimizer_state_bytes", "model_bytes", "trainable_params"):
      r[f"{k}_vs_full"] = r[k] / rows["full"][k]
    emit(r)

  # NF4 dequantize-on-the-fly matmul vs the plain matmul of the same shape
  dt = jnp.float32 if on_cpu else jnp.bfloat16
  M, K, N = NF4_MATMUL_CPU if on_cpu else NF4_MATMUL_GPU
  x = jax.random.normal(jax.random.key(0), (M, K), dt)
  w = jax.random.normal(jax.random.key(1), (K, N), jnp.float32) * 0.02
  q = nf4.quantize(w)
  plain = jax.jit(lambda x, w: x @ w)
  deq = jax.jit(lambda x, q: x @ nf4.dequantize(q, (K, N), dt))
  t_plain = bench.time_fn(plain, x, w.astype(dt), iters=20)
  t_nf4 = bench.time_fn(deq, x, q, iters=20)
  emit({"name": "nf4_matmul", "shape": [M, K, N], "dtype": jnp.dtype(dt).name,
        "plain_seconds": t_plain, "nf4_seconds": t_nf4, "nf4_vs_plain": t_nf4 / t_plain,
        "plain_flops_per_sec": 2 * M * K * N / t_plain, "nf4_flops_per_sec": 2 * M * K * N / t_nf4})
  n = K * N
  emit({"name": "nf4_storage", "params": n,
        "bits_per_param_double_quant": nf4.bits_per_param(q, n),
        "bits_per_param_single": nf4.bits_per_param(nf4.quantize(w, double_quant=False), n),
        "paper_constant_bits": nf4.constant_bits_per_param()})

  emit(merged_forward_row())


def merged_forward_row(rounds: int = 3) -> dict:
  """The char CPU config's forward (batch 12 × 64): base vs LoRA (r 8, every projection)
  unmerged vs merged. The three alternate, `rounds` times, best median of 50 each, so a slow
  spell of the machine hits all three alike."""
  tokens = jax.random.randint(jax.random.key(2), (12, CPU_CONFIG.context_len), 0,
                              CPU_CONFIG.vocab_size)
  base = gpt.GPT(CPU_CONFIG, rngs=nnx.Rngs(0))
  unmerged = nnx.clone(base)
  lora.apply_lora(unmerged, "proj|up|down", 8, rngs=nnx.Rngs(1))
  merged = nnx.clone(unmerged)
  lora.merge(merged)

  def compiled(model):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    return f, state

  fns = {"base": compiled(base), "unmerged": compiled(unmerged), "merged": compiled(merged)}
  times = {k: float("inf") for k in fns}
  for _ in range(rounds):
    for k, (f, state) in fns.items():
      times[k] = min(times[k], bench.time_fn(f, state, tokens, iters=50))
  return {"name": "lora_merged_forward", "config": "char CPU config, batch 12 x 64, LoRA r 8 on "
          "every projection", **{f"{k}_seconds": v for k, v in times.items()},
          "unmerged_vs_base": times["unmerged"] / times["base"],
          "merged_vs_base": times["merged"] / times["base"]}
