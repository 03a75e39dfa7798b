"""Benchmarks (not tests): `python -m genfm.experiments.bench NAME [NAME ...]` or `all`.

Prints one JSON line per measurement: name, shape/config, seconds per call, throughput, achieved
FLOP/s, and its ratio to this machine's matmul peak *measured in the same run* (`matmul_peak`),
so a ratio never mixes numbers from two machines or two loads. FLOPs come from XLA's cost
analysis of the compiled step. Also installed as `genfm-bench`.
"""

import functools
import importlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def time_fn(fn, *args, warmup: int = 2, iters: int = 10) -> float:
  """Median wall-clock seconds of `fn(*args)`, blocking on the result."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def compiled_flops(jitted, *args) -> float | None:
  """FLOPs of one call from XLA's cost analysis (a dict, or a list of one dict on older jax)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost["flops"]) if cost and cost.get("flops") else None


@functools.cache
def matmul_peak() -> dict:
  """Best-of achieved FLOP/s of a square matmul: fp32 on CPU, bf16 on GPU/TPU."""
  on_cpu = jax.default_backend() == "cpu"
  n, dtype = (2048, jnp.float32) if on_cpu else (8192, jnp.bfloat16)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  t = min(time_fn(f, a, b, iters=5) for _ in range(3))
  return {"name": "matmul_peak", "shape": [n, n, n], "dtype": jnp.dtype(dtype).name,
          "seconds": t, "flops_per_sec": 2 * n**3 / t, "device": jax.devices()[0].device_kind,
          "backend": jax.default_backend(), "device_count": jax.device_count()}


def bench_matmul_peak() -> None:
  emit(matmul_peak())


def train_step_record(task, cfg, *, name: str, config_label: str, peak: float,
                      iters: int = 20) -> dict:
  """Step time and FLOP/s of `task`'s jitted launcher train step on one real batch of
  `cfg.batch_size`, with the fraction of `peak` (FLOP/s)."""
  from genfm.experiments import data, train

  models, state = train.init_state(task, cfg)
  step = jax.jit(train.make_train_step(task, cfg, models))
  batch = jax.tree.map(jnp.asarray, next(data.make_iterator(task.train_source(),
                                                            batch_size=cfg.batch_size, seed=0)))
  flops = compiled_flops(step, state, batch)
  t = time_fn(lambda s: step(s, batch)[1]["loss"], state, iters=iters)
  return {"name": name, "config": config_label, "batch_size": cfg.batch_size, "seconds": t,
          "examples_per_sec": cfg.batch_size / t, "flops_per_step": flops,
          "flops_per_sec": flops / t if flops else None,
          "fraction_of_matmul_peak": flops / t / peak if flops else None}


def bench_train_step(config_name: str, label: str, batch_size: int = 128) -> None:
  """Step time and FLOP/s of a config's jitted train step on one real batch."""
  from genfm.experiments.tasks import get_task

  cfg = importlib.import_module(f"genfm.experiments.configs.{config_name}").get_config()
  cfg.batch_size = batch_size
  emit(train_step_record(get_task(cfg), cfg, name=label, config_label=config_name,
                         peak=matmul_peak()["flops_per_sec"]))


# name -> a function of no arguments, or "module:function" (imported lazily) taking `emit`.
BENCHES = {
    "matmul_peak": bench_matmul_peak,
    "mlp_train_step": functools.partial(bench_train_step, "fashion_mlp", "mlp_train_step"),
    "cnn_train_step": functools.partial(bench_train_step, "fashion_lenet", "cnn_train_step"),
    "resnet_train_step": functools.partial(bench_train_step, "fashion_resnet", "resnet_train_step"),
    "flash_attention": "genfm.kernels.bench_flash:run",
    "backprop_step": "genfm.experiments.bench_foundations:backprop_step",
    "optimizer_update": "genfm.experiments.bench_foundations:optimizer_update",
    "gpt_train_step": "genfm.experiments.bench_lm:gpt_train_step",
    "gpt_partial_train_step": "genfm.experiments.bench_lm:gpt_partial_train_step",
    "gpt_decode": "genfm.experiments.bench_lm:gpt_decode",
    "lora": "genfm.experiments.bench_peft:lora_bench",
    "rl": "genfm.experiments.bench_rl:rl_bench",
    "ddpm_train_step": "genfm.experiments.bench_diffusion:ddpm_train_step",
    "diffusion_sample": "genfm.experiments.bench_diffusion:diffusion_sample",
    "lstm_vs_gpt": "genfm.experiments.bench_rnn:lstm_vs_gpt",
    "gan_step": "genfm.experiments.bench_gan:gan_step",
    "cnf_nfe": "genfm.experiments.bench_cnf:cnf_nfe",
    "vit_vs_resnet": "genfm.experiments.bench_vision:vit_vs_resnet",
    "clip_step": "genfm.experiments.bench_vision:clip_step",
    "flow_sample": "genfm.experiments.bench_flow:flow_sample",
    "dit_vs_unet": "genfm.experiments.bench_dit:dit_vs_unet",
    "cm_vs_ddim": "genfm.experiments.bench_consistency:cm_vs_ddim",
    "autoencoder": "genfm.experiments.bench_autoencoder:autoencoder_throughput",
    "latent_vs_pixel": "genfm.experiments.bench_ldm:latent_vs_pixel",
    "text2image": "genfm.experiments.bench_t2i:text2image_bench",
    "controlnet": "genfm.experiments.bench_controlnet:controlnet_bench",
    "parallel": "genfm.experiments.bench_parallel:parallel_bench",
    "memory": "genfm.experiments.bench_memory:memory_bench",
    "gpt_vs_nanogpt": "genfm.experiments.bench_peers:gpt_vs_nanogpt",
}


def run_bench(name: str) -> None:
  target = BENCHES[name]
  if isinstance(target, str):
    module, fn = target.split(":")
    getattr(importlib.import_module(module), fn)(emit)
  else:
    target()


def main(argv=None) -> int:
  names = (sys.argv[1:] if argv is None else argv) or ["all"]
  if names == ["all"]:
    names = list(BENCHES)
  unknown = [n for n in names if n not in BENCHES]
  if unknown:
    print(f"genfm-bench: unknown benchmark(s) {unknown}; valid: {', '.join(BENCHES)} or all",
          file=sys.stderr)
    return 2
  for n in names:
    run_bench(n)
  return 0


if __name__ == "__main__":
  sys.exit(main())
