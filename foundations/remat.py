"""Activation checkpointing (rematerialisation): keep fewer activations for the backward pass and
recompute the rest, trading FLOPs for memory.

Chen et al. 2016, arXiv:1604.06174 (sec. 3: store only each segment's input, recompute the
segment in the backward pass); per transformer layer as in Megatron-LM (Korthikanti et al. 2022,
arXiv:2205.05198, sec. 4: "full" recomputation keeps only the layer input, 2·s·b·h bytes in
16-bit). JAX expresses it as `jax.checkpoint` with a *policy* naming which intermediates may be
saved (`jax.checkpoint_policies`); `remat` applies it to a module call.

Policies (`POLICIES`), applied per block (a transformer layer, a U-Net ResBlock/level):
  none  save everything the backward needs (no remat; the block is not wrapped at all);
  full  save nothing inside the block: only its inputs survive the forward pass, and the
        backward recomputes the whole block (≈ one extra forward: +33 % FLOPs at 6N);
  dots  save the outputs of matmuls without batch dimensions (the projections and FFN matmuls)
        and recompute the cheap elementwise ops and the attention scores/softmax (batched
        dot_generals), close to Megatron's selective recomputation (2205.05198 sec. 4.1).
Numerics: recomputation replays the same ops on the same inputs, so outputs and gradients equal
the un-rematerialised ones (the tests check it in fp32 on CPU).

Memory is up to the compiler's scheduler: XLA:CPU's default (concurrency-optimised) scheduler
runs the recomputation early and saves nothing; with
`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false` it saves part of it
(`genfm-bench memory` measures both).
"""

from collections.abc import Callable
from typing import Any

from flax import nnx
import jax

POLICIES = ("none", "full", "dots")


def check_policy(name: str) -> str:
  """`name` if it is one of `POLICIES`, else a one-line ValueError listing them."""
  if name not in POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; valid choices: {', '.join(POLICIES)}")
  return name


def checkpoint_policy(name: str) -> Callable[..., bool]:
  """The `jax.checkpoint` policy of `name` (see the module docstring)."""
  policies = jax.checkpoint_policies
  return {"none": policies.everything_saveable,
          "full": policies.nothing_saveable,
          "dots": policies.dots_with_no_batch_dims_saveable}[check_policy(name)]


def remat(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
  """`fn(module, *args)` rematerialised under policy `name`; "none" returns `fn` itself, so the
  un-checkpointed program is exactly the original one.

  `jax.checkpoint` over a pure function of the module's state (split / merge) rather than
  `nnx.remat`: nnx.remat writes every Variable back after the call, which fails for a module
  built in an outer trace and called inside `lax.scan` (a sampler's loop). Here only the
  non-Param state (RNG counters of dropout) is written back, and only when the call changed it.
  """
  if check_policy(name) == "none":
    return fn
  policy = checkpoint_policy(name)

  def wrapped(module: nnx.Module, *args):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    changed = []

    def pure(params, rest, *args):
      m = nnx.merge(graphdef, params, rest)
      out = fn(m, *args)
      new_rest = nnx.split(m, nnx.Param, ...)[2]
      changed.append(any(a is not b for a, b in zip(jax.tree.leaves(new_rest),
                                                     jax.tree.leaves(rest))))
      return out, new_rest

    out, new_rest = jax.checkpoint(pure, policy=policy)(params, rest, *args)
    if changed[-1]:  # e.g. dropout advanced its RNG counter: keep the stream in step
      nnx.update(module, new_rest)
    return out

  return wrapped
