"""GPT benchmarks: `genfm-bench gpt_train_step gpt_decode` (registered in `bench.py`).

gpt_train_step: one AdamW step (`jax.jit` of `value_and_grad` of next-token CE, as the launcher
  does) for the char CPU config (4 layers, width 128, context 64, batch 12) and the GPT-2-small
  shape (124M parameters; context and batch cut to fit this CPU). Reports tokens/s, the model
  FLOP/s from 6N + 12·L·H·T per token (PaLM 2204.02311 app. B, `gpt.flops_per_token`), XLA's
  own count of the compiled step, and both as fractions of `matmul_peak` measured in this run.
  On a GPU/TPU three more rows run GPT-2 small at context 1024 in bf16 (`GPTConfig.dtype`) with
  XLA, cuDNN and our Pallas flash attention: their fraction of the bf16 matmul peak is the MFU.
  Measured on an H200 (jax 0.11.2): 28.5 % (XLA), 48.7 % (cuDNN), 47.0 % (Pallas) of the
  645 TFLOP/s measured peak; see WORKSPACE.md, *GPU benchmarks*.
gpt_partial_train_step: the launcher's own step (`ModelSet` + `make_train_step`) for the char CPU
  config trained fully vs with only its last layer trainable (`config.trainable`): optimizer-state
  bytes (AdamW's two moments of the trainable part only), step time, XLA's FLOPs per step (the
  frozen layers' weight gradients are not computed) — the costs a fine-tune saves.
gpt_decode: greedy decoding of 256 new tokens after a 64-token prompt, with the preallocated
  KV cache vs recomputing the whole buffer at every step, through `sampling.generate` (a host
  loop, one dispatch per token) and fused into one `lax.scan`; all four must give the same tokens.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genfm.experiments import bench
from genfm.transformers import gpt, sampling

CPU_CONFIG = gpt.GPTConfig(vocab_size=84, context_len=64, num_layers=4, num_heads=4, d_model=128)
# GPT-2 small widths and vocabulary; context 256 (not 1024) and batch 2 keep a step to seconds.
GPT2_SMALL = gpt.GPTConfig(context_len=256)


def _train_step(cfg: gpt.GPTConfig, batch: int):
  """(jitted step, state, tokens): the launcher's step without the data pipeline."""
  model = gpt.GPT(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=0.1)
  state = (params, tx.init(params))

  def step(state, tokens_BT1):
    params, opt_state = state

    def loss_fn(p):
      logits_BTV = nnx.merge(graphdef, p, rest)(tokens_BT1[:, :-1])
      return gpt.lm_loss(logits_BTV, tokens_BT1[:, 1:])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  tokens = jax.random.randint(jax.random.key(1), (batch, cfg.context_len + 1), 0, cfg.vocab_size)
  return jax.jit(step, donate_argnums=0), state, tokens


def gpt_train_step(emit) -> None:
  peak = bench.matmul_peak()
  emit(peak)
  cases = [("cpu_config", CPU_CONFIG, 12, 20), ("gpt2_small_shape", GPT2_SMALL, 2, 3)]
  if jax.default_backend() != "cpu":  # the accelerator row: bf16 compute, full GPT-2 context,
    # MFU against the bf16 matmul peak that `matmul_peak` measures there.
    # One row per attention path: the GPT's default (the jnp reference with FlashAttention-2's
    # closed-form backward), XLA's, cuDNN's fused kernel and our Pallas flash attention.
    for impl in ("reference_vjp", "xla", "cudnn", "pallas"):
      cases.append((f"gpt2_small_bf16_{impl}", dataclasses.replace(
          GPT2_SMALL, context_len=1024, dtype="bfloat16", attention_impl=impl), 16, 10))
  for label, cfg, batch, iters in cases:
    step, state, tokens = _train_step(cfg, batch)
    xla_flops = bench.compiled_flops(step, state, tokens)
    holder = [state]

    def run(tokens):  # the state is donated: thread it through so every call is a real step
      holder[0], loss = step(holder[0], tokens)
      return loss

    t = bench.time_fn(run, tokens, warmup=1 if iters < 10 else 2, iters=iters)
    n_tok = batch * cfg.context_len
    model_flops = gpt.flops_per_token(cfg) * n_tok
    emit({"name": "gpt_train_step", "shape": label, "params": gpt.param_count(cfg),
          "batch_size": batch, "context_len": cfg.context_len, "dtype": cfg.dtype, "seconds": t,
          "tokens_per_sec": n_tok / t, "model_flops_per_step": model_flops,
          "model_flops_per_sec": model_flops / t,
          "model_fraction_of_matmul_peak": model_flops / t / peak["flops_per_sec"],
          "xla_flops_per_step": xla_flops,
          "xla_fraction_of_matmul_peak": (xla_flops / t / peak["flops_per_sec"]
                                          if xla_flops else None),
          "device": jax.devices()[0].device_kind})


class GPTTask:
  """Next-token CE on a fixed batch, as the lm task computes it; `adapt(model, rngs)` applies a
  fine-tuning method to the freshly built GPT and `trained` is its parameter filter."""

  def __new__(cls, config, model_cfg, adapt=None, trained=None):
    from genfm.experiments.tasks.base import Task  # pylint: disable=g-import-not-at-top

    class _Task(Task):
      def train_source(self):
        return None

      def build_model(self, rngs):
        model = gpt.GPT(model_cfg, rngs=rngs)
        if adapt is not None:
          adapt(model, rngs)
        return model

      def trainable(self, name):
        return super().trainable(name) if trained is None else trained

      def loss(self, model, batch, key):
        del key
        return gpt.lm_loss(model(batch["tokens"][:, :-1]), batch["tokens"][:, 1:]), {}

    return _Task(config)


def launcher_step_row(task, cfg, batch, *, iters: int) -> dict:
  """The launcher's own step (`ModelSet` + `make_train_step`) for `task`: seconds, XLA FLOPs,
  parameter counts, optimizer-state and model bytes (measured on the state's arrays)."""
  from genfm.experiments.models import ModelSet  # pylint: disable=g-import-not-at-top
  from genfm.experiments.step import make_train_step  # pylint: disable=g-import-not-at-top

  models = ModelSet(task, cfg)
  state = models.initial_state()
  step = jax.jit(make_train_step(task, cfg, models), donate_argnums=0)
  flops = bench.compiled_flops(step, state, batch)
  holder = [state]

  def run(batch):
    holder[0], metrics = step(holder[0], batch)
    return metrics["loss"]

  t = bench.time_fn(run, batch, warmup=1 if iters < 10 else 2, iters=iters)
  trainable, total = models.counts()
  nbytes = lambda tree: int(sum(x.nbytes for x in jax.tree.leaves(tree)))
  return {"params": total, "trainable_params": trainable,
          "optimizer_state_bytes": nbytes(holder[0]["opt_state"]),
          "model_bytes": nbytes(holder[0]["models"]), "seconds": t, "xla_flops_per_step": flops,
          "device": jax.devices()[0].device_kind}


def optimizer_config(trainable: str = ""):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"seed": 0, "optimizer": "adamw", "learning_rate": 1e-3,
                                    "weight_decay": 0.1, "schedule": "constant",
                                    "num_train_steps": 1000, "trainable": trainable})


def gpt_partial_train_step(emit) -> None:
  peak = bench.matmul_peak()
  emit(peak)
  batch = {"tokens": jax.random.randint(jax.random.key(1), (12, CPU_CONFIG.context_len + 1), 0,
                                        CPU_CONFIG.vocab_size)}
  last = f"^layers/{CPU_CONFIG.num_layers - 1}/"
  rows = {}
  for label, pattern in (("full", ""), ("last_layer_only", last)):
    cfg = optimizer_config(pattern)
    rows[label] = {"name": "gpt_partial_train_step", "trained": label, "trainable": pattern,
                   **launcher_step_row(GPTTask(cfg, CPU_CONFIG), cfg, batch, iters=20)}
  for label, r in rows.items():
    r["seconds_vs_full"] = r["seconds"] / rows["full"]["seconds"]
    r["optimizer_state_bytes_vs_full"] = (r["optimizer_state_bytes"]
                                          / rows["full"]["optimizer_state_bytes"])
    emit(r)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def fused_greedy(graphdef, state, prompt_BT, new_tokens: int, use_cache: bool):
  """Greedy decoding as one compiled `lax.scan`: the same math as `sampling.generate`, without
  a host round trip per token, so the timing shows the cache's arithmetic saving."""
  model = nnx.merge(graphdef, state)
  B, T0 = prompt_BT.shape
  total = T0 + new_tokens
  pos = lambda start, n: jnp.broadcast_to(start + jnp.arange(n), (B, n))
  if use_cache:
    logits_BTV, caches = model(prompt_BT, positions_BT=pos(0, T0),
                               caches=model.init_cache(B, total))
    tok_B = jnp.argmax(logits_BTV[:, -1], -1).astype(jnp.int32)

    def step(carry, i):  # feed token T0 + i, one position, into the cache
      tok_B, caches = carry
      logits_B1V, caches = model(tok_B[:, None], positions_BT=pos(T0 + i, 1), caches=caches)
      return (jnp.argmax(logits_B1V[:, 0], -1).astype(jnp.int32), caches), tok_B

    _, new_NB = jax.lax.scan(step, (tok_B, caches), jnp.arange(new_tokens))
  else:
    buf_BT = jnp.zeros((B, total), jnp.int32).at[:, :T0].set(prompt_BT)

    def step(buf_BT, i):  # recompute the whole causally masked buffer, read position T0+i−1
      logits_BTV = model(buf_BT, positions_BT=pos(0, total))
      last_BV = jax.lax.dynamic_index_in_dim(logits_BTV, T0 + i - 1, axis=1, keepdims=False)
      tok_B = jnp.argmax(last_BV, -1).astype(jnp.int32)
      return jax.lax.dynamic_update_slice_in_dim(buf_BT, tok_B[:, None], T0 + i, axis=1), tok_B

    _, new_NB = jax.lax.scan(step, buf_BT, jnp.arange(new_tokens))
  return jnp.concatenate([prompt_BT, new_NB.T], axis=1)


def gpt_decode(emit, new_tokens: int = 256, prompt_len: int = 64) -> None:
  """KV cache vs full recompute, both through `sampling.generate` (one jitted call per token,
  as the launcher's samples) and fused into one compiled scan (`fused_greedy`)."""
  cfg = gpt.GPTConfig(vocab_size=84, context_len=prompt_len + new_tokens, num_layers=4,
                      num_heads=4, d_model=128)
  model = gpt.GPT(cfg, rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  prompt_BT = jax.random.randint(jax.random.key(2), (1, prompt_len), 0, cfg.vocab_size)
  cache_bytes = sum(c.nbytes for c in model.init_cache(1, cfg.context_len))
  runs = {}
  for loop in ("generate", "fused_scan"):
    for use_cache in (True, False):
      if loop == "generate":
        fn = lambda p, c=use_cache: sampling.generate(model, p, new_tokens, use_cache=c)[0]
      else:
        fn = lambda p, c=use_cache: fused_greedy(graphdef, state, p, new_tokens, c)
      runs[loop, use_cache] = (bench.time_fn(fn, prompt_BT, warmup=1, iters=3), fn(prompt_BT))
  reference = runs["generate", False][1]
  for (loop, use_cache), (t, tokens) in runs.items():
    emit({"name": "gpt_decode", "loop": loop, "kv_cache": use_cache,
          "params": gpt.param_count(cfg), "prompt_len": prompt_len, "new_tokens": new_tokens,
          "seconds": t, "tokens_per_sec": new_tokens / t,
          "speedup_vs_recompute": runs[loop, False][0] / t,
          "cache_bytes": cache_bytes if use_cache else 0,
          "greedy_tokens_equal_recompute": bool(jnp.array_equal(tokens, reference)),
          "device": jax.devices()[0].device_kind})
