"""Scalar heads on a GPT: the reward model of RLHF and the value function of PPO.

Reward model (Ouyang et al. 2022, arXiv:2203.02155, §3.5 "Reward modeling"; Stiennon et al.
2020, arXiv:2009.01325, §3.4): the SFT model with its unembedding replaced by a projection of the
final hidden state to one number, read at the last token of the response, r_θ(x, y); trained on
preference pairs with the Bradley–Terry loss (`preference.bradley_terry_loss`, eq. (1) of
2203.02155). The head starts at N(0, 1/(D + 1)) as in Ziegler et al.'s lm-human-preferences
(arXiv:1909.08593), so initial rewards are O(1) for a unit-scale hidden state.

Value head (PPO, InstructGPT §3.5 "RL"; 1707.06347): the same projection at every position,
V(prefix up to t), starting at 0 (W = 0, b = 0) so the first advantages are the rewards.

A head is attached to a GPT instance (`add_head(model, "reward_head")`) instead of wrapping it,
so every GPT path stays the path of the pretrained checkpoint (`init_from` loads by path) and the
head's `HeadParam`s are the only new parameters. Heads compute in fp32: a reward is compared
across sequences, and a bf16 hidden state rounds away differences of 1e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
HEADS = ("reward_head", "value_head")


class HeadParam(nnx.Param):
  """A scalar head's weights: new parameters on top of a pretrained GPT."""


class ScalarHead(nnx.Module):
  """h [..., D] → s [...] = h·w + b (fp32)."""

  def __init__(self, d_model: int, *, init_std: float, rngs: nnx.Rngs):
    w = (jax.random.normal(rngs.params(), (d_model,), jnp.float32) * init_std if init_std > 0
         else jnp.zeros((d_model,), jnp.float32))
    self.kernel = HeadParam(w)
    self.bias = HeadParam(jnp.zeros((), jnp.float32))

  def __call__(self, h_BTD: Array) -> Array:
    return jnp.einsum("...D,D->...", h_BTD.astype(jnp.float32), self.kernel[...]) + self.bias[...]


def add_head(model: nnx.Module, name: str, *, rngs: nnx.Rngs,
             init_std: float | None = None) -> ScalarHead:
  """Attach `model.<name>` (a `ScalarHead` on its width). Default init: N(0, 1/(D + 1)) for the
  reward head, 0 for the value head."""
  if name not in HEADS:
    raise ValueError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
  D = model.cfg.d_model
  if init_std is None:
    init_std = (D + 1) ** -0.5 if name == "reward_head" else 0.0
  head = ScalarHead(D, init_std=init_std, rngs=rngs)
  setattr(model, name, head)
  return head


def token_scores(model: nnx.Module, tokens_BT: Array, *, head: str = "value_head",
                 positions_BT: Array | None = None, segment_ids_BT: Array | None = None) -> Array:
  """The head at every position, [B, T]: position t scores the prefix tokens[:t + 1]."""
  if not isinstance(getattr(model, head, None), ScalarHead):
    raise ValueError(f"the model has no {head}; attach one with reward_model.add_head(model, "
                     f"{head!r}, rngs=...)")
  h_BTD = model.hidden_states(tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
  return getattr(model, head)(h_BTD)


def sequence_scores(model: nnx.Module, tokens_BT: Array, last_B: Array, *,
                    head: str = "reward_head", positions_BT: Array | None = None) -> Array:
  """r(x, y) [B]: the head read at index `last_B` (the last response token of each row)."""
  s_BT = token_scores(model, tokens_BT, head=head, positions_BT=positions_BT)
  return jnp.take_along_axis(s_BT, last_B[:, None].astype(jnp.int32), axis=1)[:, 0]
