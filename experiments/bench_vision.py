"""Vision benchmarks: `genfm-bench vit_vs_resnet` and `genfm-bench clip_step`.

vit_vs_resnet: the launcher's jitted train step (forward + backward + AdamW, crop/flip
  augmentation included) of `fashion_vit.py` (ViT, patch 4, D 64, 4 layers: 205,066 params) and
  `fashion_resnet.py` (ResNet 16-32-64: 174,970 params) on one real Fashion-MNIST batch of 128:
  seconds per step, FLOPs per step from XLA's cost analysis, and the fraction of this machine's
  matmul peak measured in the same run (`bench.train_step_record`, `bench.matmul_peak`). On a GPU
  the ViT is also timed with `attention_impl` "xla" and "pallas" (the genfm flash kernel).
clip_step: one CLIP train step (both towers, forward + backward + AdamW) at the sizes of
  `captions_clip.py` (ViT 28×28 patch 4, D 64, 3 layers, mean pool; GPT D 64, 2 layers,
  16 tokens; E = 64) on random uint8 images and captions, at batch B = 256 and 1024, for the
  "clip" and "siglip" losses: seconds, step FLOPs, the FLOPs of the loss alone (value and gradient
  of `clip.clip_loss` / `clip.siglip_loss` on given [B, E] embeddings: the B×B logits and their
  softmax / log-sigmoid), their share of the step, and the bytes of one B×B fp32 matrix (4·B²).
  The towers cost O(B); the loss O(B²·E): its share grows linearly with B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments import bench
from genfm.transformers import clip, gpt, vit

CLIP_BATCHES = (256, 1024)
ITERS = 3


def vit_vs_resnet(emit) -> None:
  from genfm.experiments.configs import fashion_resnet, fashion_vit
  from genfm.experiments.models import ModelSet
  from genfm.experiments.tasks import get_task

  peak = bench.matmul_peak()["flops_per_sec"]
  runs = [("vit", fashion_vit.get_config()), ("resnet", fashion_resnet.get_config())]
  if jax.default_backend() != "cpu":
    for impl in ("xla", "pallas"):
      cfg = fashion_vit.get_config()
      cfg.model.attention_impl = impl
      runs.append((f"vit_{impl}", cfg))
  for label, cfg in runs:
    cfg.batch_size = 128
    task = get_task(cfg)
    row = bench.train_step_record(task, cfg, name="vit_vs_resnet", config_label=cfg.name,
                                  peak=peak, iters=ITERS)
    row.update(model=label, params=ModelSet(task, cfg).counts()[1],
               device=jax.devices()[0].device_kind)
    emit(row)


def clip_bench_config(loss: str) -> clip.CLIPConfig:
  """The tower sizes of `captions_clip.py`."""
  return clip.CLIPConfig(
      vision=vit.ViTConfig(patch=4, num_layers=3, d_model=64, num_heads=4, pool="mean"),
      text=gpt.GPTConfig(vocab_size=64, context_len=16, num_layers=2, d_model=64, num_heads=4),
      embed_dim=64, loss=loss)


def _compiled(jitted, *args):
  """(compiled callable, its FLOPs from XLA's cost analysis): compile once, time that."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # a list of one dict on older jax
    cost = cost[0] if cost else {}
  return compiled, (float(cost["flops"]) if cost and cost.get("flops") else None)


def _loss_fn(loss: str):
  """Value and gradient of the contrastive loss alone w.r.t. both embeddings and the scales."""
  if loss == "clip":
    f = lambda i, t, s, b: clip.clip_loss(i, t, s)
  else:
    f = clip.siglip_loss
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))


def clip_step_record(cfg: clip.CLIPConfig, batch_size: int, *, peak: float | None = None,
                     iters: int = ITERS) -> dict:
  """One row: the CLIP train step at `batch_size` and the share of its B×B loss.

  `loss_equals_towers_batch` extrapolates where the loss would cost as much as the towers: the
  towers' FLOPs grow as B and the loss's as B², so it is B · (step − loss) / loss."""
  B, E, T = batch_size, cfg.embed_dim, cfg.text.context_len
  # Built under one jit: eagerly, every initialiser of every shape compiles on its own (~30 s).
  model = nnx.jit(lambda: clip.CLIP(cfg, rngs=nnx.Rngs(0)))()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=0.1)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, images, text):
    f = lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(images, text)[0]
    value, grads = jax.value_and_grad(f)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  rng = np.random.default_rng(0)
  h, w = cfg.vision.image_size
  images = jnp.asarray(rng.integers(0, 256, (B, h, w, cfg.vision.channels)), jnp.uint8)
  lengths = rng.integers(3, T, B)  # BOS words EOS PAD…, ragged
  text = rng.integers(3, cfg.text.vocab_size, (B, T))
  text[:, 0] = 1
  text[np.arange(B), lengths] = cfg.eos_id
  text[np.arange(T)[None, :] > lengths[:, None]] = cfg.pad_id
  text = jnp.asarray(text, jnp.int32)

  step_c, step_flops = _compiled(step, params, opt, images, text)
  seconds = bench.time_fn(lambda: step_c(params, opt, images, text)[2], warmup=1, iters=iters)
  emb = jax.random.normal(jax.random.key(0), (2, B, E))
  emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
  loss_args = (emb[0], emb[1], jnp.float32(10.0), jnp.float32(-10.0))
  loss_c, loss_flops = _compiled(_loss_fn(cfg.loss), *loss_args)
  loss_seconds = bench.time_fn(lambda: loss_c(*loss_args)[0], warmup=1, iters=max(iters, 3))
  row = {"name": "clip_step", "loss": cfg.loss, "batch_size": B, "embed_dim": E,
         "params": clip.param_count(cfg), "seconds": seconds,
         "examples_per_sec": B / seconds, "flops_per_step": step_flops,
         "flops_per_sec": step_flops / seconds if step_flops else None,
         "loss_flops": loss_flops, "loss_seconds": loss_seconds,
         "loss_share_of_step_flops": loss_flops / step_flops if step_flops else None,
         "loss_share_of_step_seconds": loss_seconds / seconds,
         "loss_equals_towers_batch": (B * (step_flops - loss_flops) / loss_flops
                                      if step_flops and loss_flops else None),
         "logits_bytes": 4 * B * B, "device": jax.devices()[0].device_kind}
  if peak and step_flops:
    row["fraction_of_matmul_peak"] = step_flops / seconds / peak
  return row


def clip_step(emit) -> None:
  peak = bench.matmul_peak()["flops_per_sec"]
  for loss in clip.LOSSES:
    cfg = clip_bench_config(loss)
    for batch_size in CLIP_BATCHES:  # B = 1024 takes seconds per step on a CPU: time it once
      emit(clip_step_record(cfg, batch_size, peak=peak, iters=1 if batch_size > 256 else ITERS))
