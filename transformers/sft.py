"""Supervised fine-tuning on prompt/response pairs: response-only loss, packing, ragged decoding.

Instruction tuning (InstructGPT, Ouyang et al. 2022, arXiv:2203.02155, §3.5 "SFT"; FLAN, Wei et
al. 2021, arXiv:2109.01652) trains next-token prediction on the response given the prompt:

    L(θ) = − Σ_{examples} Σ_{t ∈ response} log p_θ(y_t | prompt, y_<t) / #response tokens

so the prompt is context, never a target (its tokens are masked out of the loss), and padding
weighs 0. The aggregation is a *token* mean over the batch (`gpt.lm_loss` with the mask): every
response token weighs the same, so long answers weigh more than short ones (per-example means
are the other common choice; `per_example_losses` gives them).

Packing (as in T5's input pipeline, Raffel et al. 2019, arXiv:1910.10683): several examples
share one row of `T` tokens; `segment_ids` (1, 2, ... per example, 0 for padding) keep
attention inside an example and positions restart at 0 for each, so a packed example's loss
equals its unpacked loss (tested). Rows are filled greedily, first fit, in order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


def encode_example(prompt_ids, response_ids, max_len: int) -> dict[str, np.ndarray]:
  """One example → {"inputs", "targets", "loss_mask"} int32 [n − 1] (n = prompt + response).

  targets[t] = ids[t + 1]; loss_mask[t] = 1 where that target is a response token."""
  prompt_ids, response_ids = np.asarray(prompt_ids), np.asarray(response_ids)
  n = len(prompt_ids) + len(response_ids)
  if len(prompt_ids) < 1 or len(response_ids) < 1:
    raise ValueError("an SFT example needs a non-empty prompt and a non-empty response")
  if n - 1 > max_len:
    raise ValueError(f"prompt ({len(prompt_ids)} tokens) + response ({len(response_ids)}) "
                     f"needs {n - 1} positions > context {max_len}; shorten the example or "
                     "raise context_len")
  ids = np.concatenate([prompt_ids, response_ids]).astype(np.int32)
  mask = np.zeros(n - 1, np.int32)
  mask[len(prompt_ids) - 1:] = 1          # targets ids[P..n-1]: the response tokens only
  return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask}


def pad_rows(examples: list[dict], max_len: int) -> dict[str, np.ndarray]:
  """One example per row, right-padded: inputs/targets/loss_mask/positions/segment_ids [N, T]."""
  out = {k: np.zeros((len(examples), max_len), np.int32)
         for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
  for i, ex in enumerate(examples):
    n = len(ex["inputs"])
    for k in ("inputs", "targets", "loss_mask"):
      out[k][i, :n] = ex[k]
    out["positions"][i, :n] = np.arange(n)
    out["segment_ids"][i, :n] = 1
  return out


def pack(examples: list[dict], max_len: int) -> dict[str, np.ndarray]:
  """Examples packed into rows of `max_len`, first fit in order: the same keys as `pad_rows`,
  with segment ids 1, 2, ... within a row (0 = padding) and positions restarting per example."""
  rows: list[list[dict]] = []
  room: list[int] = []
  for ex in examples:
    n = len(ex["inputs"])
    if n > max_len:
      raise ValueError(f"an example of {n} positions does not fit a row of {max_len}")
    for r, free in enumerate(room):
      if free >= n:
        rows[r].append(ex)
        room[r] -= n
        break
    else:
      rows.append([ex])
      room.append(max_len - n)
  out = {k: np.zeros((len(rows), max_len), np.int32)
         for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
  for r, row in enumerate(rows):
    at = 0
    for seg, ex in enumerate(row, start=1):
      n = len(ex["inputs"])
      for k in ("inputs", "targets", "loss_mask"):
        out[k][r, at:at + n] = ex[k]
      out["positions"][r, at:at + n] = np.arange(n)
      out["segment_ids"][r, at:at + n] = seg
      at += n
  return out


def sft_loss(logits_BTV: Array, targets_BT: Array, loss_mask_BT: Array) -> Array:
  """Token-mean cross-entropy over response tokens (nats/token); prompts and padding weigh 0."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), targets_BT)                     # fp32: the softmax over V
  mask_BT = loss_mask_BT.astype(jnp.float32)
  # where(): a masked target may be anything (even out of range) without reaching the loss.
  return jnp.sum(jnp.where(mask_BT > 0, ce_BT, 0.0)) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def per_example_losses(logits_BTV: Array, targets_BT: Array, loss_mask_BT: Array,
                       segment_ids_BT: Array, max_segments: int) -> tuple[Array, Array]:
  """(Σ response nats, response tokens) per (row, segment): [B, max_segments] each; segment s
  of row b is column s − 1."""
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32),
                                                          targets_BT)
  onehot_BTS = jax.nn.one_hot(segment_ids_BT - 1, max_segments) * loss_mask_BT[..., None]
  return jnp.einsum("BT,BTS->BS", ce_BT, onehot_BTS), jnp.sum(onehot_BTS, axis=1)


@functools.partial(jax.jit, static_argnames=("max_new_tokens",))
def _greedy(graphdef_state, prompts_BT, lengths_B, max_new_tokens: int):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.merge(*graphdef_state)
  B, T = prompts_BT.shape

  def step(i, buf_BT):
    logits_BTV = model(buf_BT)                                        # causal: later slots unseen
    at_B = lengths_B + i                                              # next slot of each row
    last_BV = jnp.take_along_axis(logits_BTV, (at_B - 1)[:, None, None], axis=1)[:, 0]
    tok_B = jnp.argmax(last_BV, axis=-1).astype(buf_BT.dtype)
    write = (at_B < T)[:, None] & (jnp.arange(T)[None] == at_B[:, None])
    return jnp.where(write, tok_B[:, None], buf_BT)

  return jax.lax.fori_loop(0, max_new_tokens, step, prompts_BT)


def complete(model, prompts: list[np.ndarray], max_new_tokens: int) -> list[np.ndarray]:
  """Greedy continuations of prompts of different lengths (each row its own length), by
  recomputing the causal forward over a fixed [B, max prompt + max_new_tokens] buffer: the
  reference decoder, and the one that works with soft prompts and prefixes (no KV cache)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min() < 1:
    raise ValueError("every prompt needs at least one token")
  T = int(lengths.max()) + max_new_tokens
  limit = model.cfg.context_len - model.num_virtual_tokens
  if T > limit:
    raise ValueError(f"the longest prompt ({lengths.max()} tokens) + {max_new_tokens} new tokens "
                     f"= {T} > the {limit} positions the model has")
  buf = np.zeros((len(prompts), T), np.int32)
  for i, p in enumerate(prompts):
    buf[i, :len(p)] = p
  out = np.asarray(_greedy(nnx.split(model), jnp.asarray(buf), jnp.asarray(lengths),
                           max_new_tokens))
  return [out[i, n:n + max_new_tokens] for i, n in enumerate(lengths)]
