"""Benchmark of the flow samplers on 2-D (`genfm-bench flow_sample`).

`flow_sample`: samples/s of `genfm.diffusion.flow.sample` (t = 0 noise → 1 data; 2210.02747,
2209.03003) with the MLP denoiser of `configs/toy2d_flow.py` at one batch, Euler at NFE 1, 2, 5,
10, 100 and Heun at NFE 10, 100 (5 and 50 steps), plus the OT-CFM training step's coupling cost
(exact minibatch OT by linear_sum_assignment on the host, 2302.00482) against the independent
step. The network is untrained (its cost does not depend on its weights); FLOPs per sample are
network FLOPs × NFE (XLA counts a scan body once).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.diffusion import flow
from genfm.experiments import bench
from genfm.experiments.configs import toy2d_flow
from genfm.experiments.tasks.diffusion2d import Diffusion2DTask

SAMPLE_BATCH = 2000
# (method, steps): NFE = flow.nfe(method, steps)
RUNS = (("euler", 1), ("euler", 2), ("euler", 5), ("euler", 10), ("euler", 100),
        ("heun", 5), ("heun", 50))


def flow_sample(emit) -> None:
  peak = bench.matmul_peak()["flops_per_sec"]
  cfg = toy2d_flow.get_config("rf_moons")
  task = Diffusion2DTask(cfg)
  graphdef, state = nnx.split(task.build_model(nnx.Rngs(0)))
  net = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t))
  net_flops = bench.compiled_flops(net, state, jnp.zeros((SAMPLE_BATCH, 2)),
                                   jnp.zeros((SAMPLE_BATCH,)))
  noise = jax.random.normal(jax.random.key(0), (SAMPLE_BATCH, 2))
  for method, steps in RUNS:
    nfe = flow.nfe(method, steps)
    fn = jax.jit(lambda s, z, method=method, steps=steps: flow.sample(
        task.velocity_fn(nnx.merge(graphdef, s)), z, method, steps))
    t = bench.time_fn(fn, state, noise, warmup=1, iters=3)
    flops = net_flops * nfe if net_flops else None
    emit({"name": "flow_sample", "sampler": f"{method}_{steps}", "batch_size": SAMPLE_BATCH,
          "network_evals": nfe, "seconds": t, "samples_per_sec": SAMPLE_BATCH / t,
          "flops_per_network_eval": net_flops, "flops_per_call": flops,
          "flops_per_sec": flops / t if flops else None,
          "fraction_of_matmul_peak": flops / t / peak if flops else None,
          "backend": jax.default_backend()})
  for variant in ("rf_moons", "otcfm_moons"):      # the coupling's share of a training step
    c = toy2d_flow.get_config(variant)
    emit({**bench.train_step_record(Diffusion2DTask(c), c, name="flow_train_step",
                                    config_label=f"toy2d_flow:{variant}", peak=peak),
          "coupling": c.diffusion.coupling, "backend": jax.default_backend()})
