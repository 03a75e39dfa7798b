"""Benchmark `controlnet` (`genfm-bench controlnet`): the cost of ControlNet (arXiv:2302.05543)
beside its locked U-Net — one training step of the ControlNet (the base's forward and backward
through its decoder to the control residuals, the copy's forward and backward) against the
base's own DDPM train step, and guided DDIM sampling images/s with and without control — on
`fashion_ddpm`'s U-Net (`:gpu`'s on an accelerator). Untrained weights: the cost does not
depend on them, so the bench needs no run. Steps are plain `jax.jit` of value_and_grad + Adam.

Measured 2026-12-03 on the 2-core CPU under load ~14 (other agents' runs; medians of 5 / 3, so
±30%): base DDPM train step (268,017 params, batch 32) 0.97 s, ControlNet step (120,896
trainable) 0.51 s — ratio 0.53: the ControlNet step needs no weight gradients of the locked
base and no backward through its encoder; guided DDIM-25 (batch 16) 5.26 images/s without
control, 4.47 with (the copy adds ~18%). No GPU row: none lent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.diffusion import controlnet as cn
from genfm.diffusion import gaussian
from genfm.diffusion import guidance
from genfm.diffusion import samplers
from genfm.experiments import bench
from genfm.experiments.bench_diffusion import _image_task

SAMPLE_STEPS = 25


def controlnet_bench(emit) -> None:
  task, label = _image_task()
  on_cpu = jax.default_backend() == "cpu"
  train_batch, sample_batch = (32, 16) if on_cpu else (128, 500)
  rngs = nnx.Rngs(0)
  base = task.build_model(rngs)
  control = cn.ControlNet(base.cfg, rngs=rngs)
  shape = task.image_shape
  x0 = jax.random.uniform(jax.random.key(0), (train_batch,) + shape, minval=-1, maxval=1)
  hint = (jax.random.uniform(jax.random.key(1), (train_batch,) + shape[:2] + (1,)) < 0.16
          ).astype(jnp.float32)
  labels = jnp.arange(train_batch) % task.num_classes
  tx = optax.adam(1e-3)
  gb, sb = nnx.split(base)
  gc, sc = nnx.split(control)

  def train_step(trained: str):
    opt_state = tx.init(sc if trained == "controlnet" else sb)

    @jax.jit
    def step(sb, sc, opt_state, key):
      t_key, z_key = jax.random.split(key)
      t = jax.random.randint(t_key, (train_batch,), 0, task.sched.num_timesteps)
      z = jax.random.normal(z_key, x0.shape)

      def loss(sb, sc):
        b, c = nnx.merge(gb, sb), nnx.merge(gc, sc)
        fn = ((lambda x, t: cn.controlled(b, c, x, t, labels, hint)) if trained == "controlnet"
              else (lambda x, t: b(x, t, labels)))
        return jnp.mean(gaussian.per_example_loss(fn, task.sched, x0, t, z))

      argnum = 1 if trained == "controlnet" else 0
      value, grads = jax.value_and_grad(loss, argnums=argnum)(sb, sc)
      params = sc if trained == "controlnet" else sb
      updates, opt_state = tx.update(grads, opt_state, params)
      return value, optax.apply_updates(params, updates), opt_state
    return step, opt_state

  rows = {}
  for trained in ("base", "controlnet"):
    step, opt_state = train_step(trained)
    t = bench.time_fn(lambda: step(sb, sc, opt_state, jax.random.key(2))[0], warmup=1,
                      iters=5 if on_cpu else 20)
    rows[trained] = t
    emit({"name": "controlnet", "what": f"{trained}_train_step", "model": f"{label} U-Net",
          "batch_size": train_batch, "seconds": t, "examples_per_sec": train_batch / t,
          "trainable_params": sum(x.size for x in jax.tree.leaves(
              nnx.state(control if trained == "controlnet" else base, nnx.Param))),
          "backend": jax.default_backend()})
  emit({"name": "controlnet", "train_step_ratio_controlnet_over_base":
        rows["controlnet"] / rows["base"], "backend": jax.default_backend()})

  lab = jnp.arange(sample_batch) % task.num_classes
  h = hint[:1].repeat(sample_batch, 0)

  def sampler(with_control: bool):
    @jax.jit
    def fn(sb, sc, key):
      b, c = nnx.merge(gb, sb), nnx.merge(gc, sc)

      def apply(x, t, l):
        if not with_control:
          return b(x, t, l)
        return cn.controlled(b, c, x, t, l, jnp.concatenate([h] * (x.shape[0] // h.shape[0])))
      model_fn = guidance.guided_model(apply, lab, task.num_classes,
                                       task.config.diffusion.guidance_scale)
      return samplers.sample("ddim", model_fn, task.sched, key, (sample_batch,) + shape,
                             num_steps=SAMPLE_STEPS)
    return fn

  for with_control in (False, True):
    t = bench.time_fn(sampler(with_control), sb, sc, jax.random.key(3), warmup=1,
                      iters=3 if on_cpu else 10)
    emit({"name": "controlnet", "what": "sample", "control": with_control,
          "sampler": f"ddim_{SAMPLE_STEPS}_guided", "batch_size": sample_batch, "seconds": t,
          "images_per_sec": sample_batch / t, "backend": jax.default_backend()})
