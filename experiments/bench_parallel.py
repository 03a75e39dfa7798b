"""Per-device FLOPs and bytes of the train step under data, FSDP and tensor parallelism.

    python -m genfm.experiments.bench parallel

On 8 virtual CPU devices (the bench re-runs itself with
XLA_FLAGS=--xla_force_host_platform_device_count=8 when this process has fewer): the GPT and
U-Net smoke configs' steps, built as the loop builds them (`parallel_check.py`), under each mesh.
Per device, from the compiled step: FLOPs (XLA cost analysis) and their ratio to the
one-device step (ideal 1/8 under DP and FSDP), argument bytes (parameters + Adam moments +
batch) beside the hand formula Σ size · 4 B · 3 / (its shards), and temp bytes (activations
and gradients). Virtual devices share the host's cores, so no times are reported: layout and
work per device are what this CPU can show; times come from a real multi-device machine
(`experiments/gpu_check.sh`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax

from genfm.experiments.bench import emit

PLAN = {"gpt": ["dp", "fsdp", "dp_tp", "fsdp_tp"], "unet": ["dp", "fsdp"], "mlp": ["dp"]}


def records(report: dict) -> list[dict]:
  out = []
  for model, runs in report.items():
    if not isinstance(runs, dict) or "one_device" not in runs:
      continue
    one = runs["one_device"]
    for mesh, r in runs.items():
      if mesh not in PLAN.get(model, ()):        # the reference itself; the resharding check
        continue
      fr = r.get("fractions", {})
      # parameters + Adam's two moments, fp32, each split as its spec says
      state_by_hand = sum(size * frac * 4 * 3 for _, _, frac, size in fr.values())
      out.append({"name": "parallel", "model": model, "layout": mesh, "mesh": r["mesh"],
                  "device_count": report["device_count"],
                  "flops_per_device": r["flops"], "flops_one_device": one["flops"],
                  "flops_ratio": r["flops"] / one["flops"],
                  "argument_bytes_per_device": r["bytes"].get("argument"),
                  "argument_bytes_one_device": one["bytes"].get("argument"),
                  "state_bytes_by_hand": int(state_by_hand),
                  "temp_bytes_per_device": r["bytes"].get("temp"),
                  "temp_bytes_one_device": one["bytes"].get("temp"),
                  "max_loss_difference_vs_one_device": max(
                      abs(a - b) for a, b in zip(r["losses"], one["losses"][-len(r["losses"]):]))})
  return out


def parallel_bench(emit_fn=emit, steps: int = 4) -> None:
  if jax.device_count() >= 8:
    from genfm.experiments import parallel_check  # pylint: disable=g-import-not-at-top
    report = parallel_check.main([str(steps), json.dumps(PLAN)])
  else:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "genfm.experiments.parallel_check", str(steps),
                          json.dumps(PLAN)], capture_output=True, text=True, env=env, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
  for r in records(report):
    emit_fn(r)
