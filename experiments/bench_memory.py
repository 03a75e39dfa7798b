"""Activation memory of the GPT train step under each remat policy: `genfm-bench memory`.

For a small-width GPT at context 1024 and each policy of `foundations/remat.py` (none / full /
dots), the compiled AdamW train step's `memory_analysis()` gives the activation (temp) bytes;
parameter and optimizer-state bytes are the state's arrays (their sum with the batch is the
step's argument bytes). Beside it, a hand formula, after Korthikanti et al. 2022
(arXiv:2205.05198, sec. 4.1, eq. (1): 34·s·b·h + 5·a·s²·b bytes per layer in 16-bit with
dropout), adapted to our fp32 pre-LN block without dropout (s = context, b = batch, h = width,
a = heads, V = vocabulary):

  kept per layer, none   (32·s·b·h + 2·a·s²·b)·2 + a·s²·b = 64·s·b·h + 5·a·s²·b bytes
      [LN inputs 2+2, QKV input 2, Q and K 4, V 2, out-proj input 2, FFN input 2, GELU input 8
       and output 8 (·s·b·h, 16-bit); softmax output 2·a·s²·b; no dropout masks; fp32 doubles
       it; plus the boolean causal mask a·s²·b of the reference attention]
  kept per layer, full   4·s·b·h (the block input only, 1604.06174)
  kept per layer, dots   36·s·b·h (input 4, q/k/v 12, attention output 4, FFN up 16: the
                         matmul outputs; the attention scores are batched dots, recomputed)
  working set            one layer's none-activations (its backward temporaries; under remat
                         also its recomputed forward): + 64·s·b·h + 5·a·s²·b, once
  head                   logits and their softmax, fp32: + 8·s·b·V, once

So bytes = L · per-layer + constant. The bench measures two depths (L and L/2, same width) and
splits the measured temp bytes into a slope (bytes per layer) and an intercept; their ratios to
the formula's two parts (`calibration`) scale the formula when it extrapolates to GPT-2/3 shapes.
The last record states the largest of those that fits 16 GiB per device at context 1024, batch 8
per device, fp32 (params, grads and Adam's two moments: 16 bytes per parameter), for each
policy, without and with FSDP over 8 devices (1910.02054: those 16·N bytes / 8, plus one layer's
gathered weights and gradients). The constant's calibration, measured with a 256-token
vocabulary, is applied to GPT-2's 50,257-token head too (an assumption).

XLA:CPU's default scheduler is concurrency-optimised: it runs the recomputation as early as it
can, which keeps the recomputed activations alive and erases the saving (measured and reported
as `default_scheduler_temp_bytes`). On CPU the measurement therefore runs in a subprocess with
`--xla_cpu_enable_concurrency_optimized_scheduler=false` (memory-minimising scheduling, what
GPU and TPU compilers do by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import optax

from genfm.experiments import bench
from genfm.transformers import gpt

CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
POLICIES = ("none", "full", "dots")
# Small width so a step runs in seconds on a CPU; context 1024 as the issue asks; GPT-2 head dim.
BENCH_CONFIG = gpt.GPTConfig(vocab_size=256, context_len=1024, num_layers=8, d_model=256,
                             num_heads=4)
BENCH_BATCH = 2
GiB = 2**30
DEVICE_BYTES = 16 * GiB
FIT_BATCH = 8
# (name, layers, width, heads): GPT-2 (Radford et al. 2019, Table 2) and GPT-3 (2005.14165,
# Table 2.1) shapes, context 1024, GPT-2's vocabulary.
FAMILY = (("gpt2-small", 12, 768, 12), ("gpt2-medium", 24, 1024, 16),
          ("gpt2-large", 36, 1280, 20), ("gpt2-xl", 48, 1600, 25),
          ("gpt3-2.7b", 32, 2560, 32), ("gpt3-6.7b", 32, 4096, 32),
          ("gpt3-13b", 40, 5120, 40))


def formula_parts(policy: str, *, context: int, batch: int, width: int, heads: int,
                  vocab: int) -> tuple[int, int]:
  """The module docstring's hand formula (fp32 bytes) as (per layer, constant): the bytes each
  layer keeps, and the working set of one recomputed layer plus the head."""
  s, b, h, a = context, batch, width, heads
  layer_none = 64 * s * b * h + 5 * a * s * s * b
  kept = {"none": layer_none, "full": 4 * s * b * h, "dots": 36 * s * b * h}[policy]
  return kept, layer_none + 8 * s * b * vocab   # one layer's working set + the head


def activation_bytes(policy: str, *, layers: int, calibration: tuple[float, float] = (1.0, 1.0),
                     **shape) -> float:
  """layers · per-layer + constant bytes, each scaled by its `calibration` factor."""
  per_layer, constant = formula_parts(policy, **shape)
  return calibration[0] * layers * per_layer + calibration[1] * constant


def state_bytes(n_params: int, fsdp: int = 1) -> int:
  """fp32 parameters, gradients and Adam's two moments: 16 bytes per parameter, / fsdp."""
  return 16 * n_params // fsdp


def _train_step(cfg: gpt.GPTConfig):
  graphdef, params, rest = nnx.split(gpt.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=0.1)

  def step(state, tokens_BT1):
    params, opt_state = state

    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest, copy=True)
      return gpt.lm_loss(model(tokens_BT1[:, :-1]), tokens_BT1[:, 1:])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=0), (params, tx.init(params))


def measure(cfg: gpt.GPTConfig, batch: int, policy: str, *, iters: int = 2,
            time_it: bool = True) -> dict:
  """One record: memory_analysis of the compiled train step (and its step time)."""
  cfg = dataclasses.replace(cfg, remat=policy)
  step, state = _train_step(cfg)
  tokens = jax.random.randint(jax.random.key(1), (batch, cfg.context_len + 1), 0,
                              cfg.vocab_size)
  mem = step.lower(state, tokens).compile().memory_analysis()
  nbytes = lambda tree: int(sum(x.nbytes for x in jax.tree.leaves(tree)))
  kw = dict(context=cfg.context_len, batch=batch, width=cfg.d_model, heads=cfg.num_heads,
            vocab=cfg.vocab_size)
  rec = {"name": "memory", "policy": policy, "layers": cfg.num_layers, "width": cfg.d_model,
         "heads": cfg.num_heads, "vocab": cfg.vocab_size, "context_len": cfg.context_len,
         "batch_size": batch, "params": gpt.param_count(cfg),
         "param_bytes": nbytes(state[0]), "optimizer_state_bytes": nbytes(state[1]),
         "argument_bytes": int(mem.argument_size_in_bytes),
         "activation_temp_bytes": int(mem.temp_size_in_bytes),
         "formula_activation_bytes": int(activation_bytes(policy, layers=cfg.num_layers, **kw))}
  rec["measured_over_formula"] = rec["activation_temp_bytes"] / rec["formula_activation_bytes"]
  if time_it:
    holder = [state]

    def run(tokens):  # the state is donated: thread it through so every call is a real step
      holder[0], loss = step(holder[0], tokens)
      return loss

    rec["seconds"] = bench.time_fn(run, tokens, warmup=1, iters=iters)
  rec["device"] = jax.devices()[0].device_kind
  return rec


def largest_fit(calibration: dict[str, tuple[float, float]], *,
                fsdp: int = 1) -> dict[str, str | None]:
  """Per policy, the largest `FAMILY` shape whose calibrated bytes fit `DEVICE_BYTES`."""
  out = {}
  for policy in POLICIES:
    best = None
    for name, L, D, N in FAMILY:
      cfg = gpt.GPTConfig(num_layers=L, d_model=D, num_heads=N)
      act = activation_bytes(policy, layers=L, calibration=calibration[policy], context=1024,
                             batch=FIT_BATCH, width=D, heads=N, vocab=cfg.vocab_size)
      gathered = 0 if fsdp == 1 else 2 * 4 * 12 * D * D   # one layer's weights + grads
      if state_bytes(gpt.param_count(cfg), fsdp) + gathered + act <= DEVICE_BYTES:
        best = name
    out[policy] = best
  return out


def run_measurements(emit, cfg: gpt.GPTConfig = BENCH_CONFIG, batch: int = BENCH_BATCH,
                     iters: int = 2) -> list[dict]:
  rows = [measure(cfg, batch, p, iters=iters) for p in POLICIES]
  for r in rows:
    emit(r)
  by = {r["policy"]: r for r in rows}
  emit({"name": "memory_ratios", "context_len": cfg.context_len,
        "activation_none_over_full": by["none"]["activation_temp_bytes"]
        / by["full"]["activation_temp_bytes"],
        "activation_none_over_dots": by["none"]["activation_temp_bytes"]
        / by["dots"]["activation_temp_bytes"],
        "time_full_over_none": by["full"]["seconds"] / by["none"]["seconds"],
        "time_dots_over_none": by["dots"]["seconds"] / by["none"]["seconds"],
        "goal": "full: activation >= 3x smaller for <= 1.4x step time"})
  # Calibration: a second, shallower depth (compile only) separates the measured per-layer
  # bytes (the slope) from the constant (intercept); each is divided by its formula part.
  half = dataclasses.replace(cfg, num_layers=cfg.num_layers // 2)
  calib, slopes = {}, {}
  for p in POLICIES:
    shallow = measure(half, batch, p, time_it=False)
    slope = ((by[p]["activation_temp_bytes"] - shallow["activation_temp_bytes"])
             / (cfg.num_layers - half.num_layers))
    intercept = by[p]["activation_temp_bytes"] - slope * cfg.num_layers
    per_layer, constant = formula_parts(p, context=cfg.context_len, batch=batch,
                                        width=cfg.d_model, heads=cfg.num_heads,
                                        vocab=cfg.vocab_size)
    calib[p] = (slope / per_layer, intercept / constant)
    slopes[p] = slope
    emit({"name": "memory_per_layer", "policy": p, "measured_bytes_per_layer": slope,
          "formula_bytes_per_layer": per_layer, "measured_constant_bytes": intercept,
          "formula_constant_bytes": constant, "layers_compared": [half.num_layers,
                                                                  cfg.num_layers]})
  emit({"name": "memory_ratios_deep_limit",
        "note": "per-layer bytes none / policy: the activation ratio as depth grows",
        "none_over_full": slopes["none"] / slopes["full"],
        "none_over_dots": slopes["none"] / slopes["dots"]})
  unit = {p: (1.0, 1.0) for p in POLICIES}
  fits = {"name": "memory_largest_gpt_16gib", "device_bytes": DEVICE_BYTES,
          "context_len": 1024, "batch_per_device": FIT_BATCH, "dtype": "float32",
          "calibration": calib, "one_device": largest_fit(calib),
          "fsdp_8": largest_fit(calib, fsdp=8),
          # The formula alone (calibration 1): what a memory-aware scheduler should reach.
          "one_device_formula": largest_fit(unit), "fsdp_8_formula": largest_fit(unit, fsdp=8),
          "params": {n: gpt.param_count(gpt.GPTConfig(num_layers=L, d_model=D, num_heads=N))
                     for n, L, D, N in FAMILY}}
  emit(fits)
  return rows


def memory_bench(emit) -> None:
  if jax.default_backend() == "cpu" and CPU_FLAG not in os.environ.get("XLA_FLAGS", ""):
    # What the default scheduler gives (compile only), then the real run in a subprocess.
    for p in ("none", "full"):
      r = measure(BENCH_CONFIG, BENCH_BATCH, p, time_it=False)
      emit({"name": "memory_default_scheduler", "policy": p,
            "default_scheduler_temp_bytes": r["activation_temp_bytes"]})
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + CPU_FLAG).strip())
    proc = subprocess.run([sys.executable, "-m", "genfm.experiments.bench_memory"], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"bench_memory subprocess failed: {proc.stderr[-2000:]}")
    for line in proc.stdout.splitlines():
      if line.startswith("{"):
        emit(json.loads(line))
    return
  run_measurements(emit)


if __name__ == "__main__":
  run_measurements(bench.emit)
