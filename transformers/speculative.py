"""Speculative sampling: a small draft model proposes γ tokens, the target model scores them all
in one forward pass, and a modified rejection step keeps the output distributed exactly as the
target's (Leviathan et al. 2022, arXiv:2211.17192, Algorithm 1; Chen et al. 2023,
arXiv:2302.01318, Algorithm 2).

One round, for a row whose prefix has length n:
  1. draft: x_j ~ q_j = q(· | prefix, x_<j) for j = 1..γ (γ draft forward passes);
  2. target: p_1..p_{γ+1} from ONE forward pass over prefix + x_1..x_γ;
  3. accept x_j while r_j ≤ p_j(x_j) / q_j(x_j), r_j ~ U(0, 1) (Alg. 1 of 2211.17192);
  4. after m accepted tokens: if m < γ sample the replacement from
     p'(x) = norm(max(0, p_{m+1}(x) − q_{m+1}(x))) (sec. 2.3 of 2211.17192), else sample the
     bonus token from p_{γ+1}. Each round emits m + 1 tokens.
Theorem 1 of 2302.01318 / appendix A.1 of 2211.17192: the emitted tokens are distributed as
the target model's. The expected acceptance rate per token is β = Σ_x min(p(x), q(x)) =
1 − TV(p, q) (Definition 3.1 and Corollary 3.6 of 2211.17192).

Temperature 0 uses one-hot p and q (arg-max): the same algorithm then accepts a drafted token iff
it is the target's arg-max and otherwise emits the target's arg-max — greedy target decoding.

Implementation: fixed shapes, one `lax.while_loop` over rounds inside `jax.jit`. Rows accept
different numbers of tokens, so each row keeps its own length n_B in a shared token buffer and
both models recompute the (causally masked) buffer; no KV cache (a cache would need per-row
rollback of rejected slots). Letters: B rows, T buffer positions, V vocabulary, J = γ draft
positions of a round (J is not in the WORKSPACE table; it is local to this module).
"""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from genfm.transformers import sampling

Array = jax.Array


def _probs(logits_XV: Array, temperature: float) -> Array:
  """Sampling distribution in fp32; temperature 0 → one-hot arg-max."""
  logits_XV = logits_XV.astype(jnp.float32)
  if temperature == 0.0:
    return jax.nn.one_hot(jnp.argmax(logits_XV, -1), logits_XV.shape[-1], dtype=jnp.float32)
  return jax.nn.softmax(logits_XV / temperature, axis=-1)


def _categorical(key: Array, probs_XV: Array) -> Array:
  # log 0 = -inf: zero-probability tokens are never drawn (one-hot → deterministic arg-max).
  return jax.random.categorical(key, jnp.log(probs_XV), axis=-1).astype(jnp.int32)


def _round(draft, target, buf_BT, n_B, key, *, gamma: int, temperature: float, t_end: int):
  """One round for every row with n_B < t_end; returns (buf, n, accepted [B], active [B])."""
  B, T = buf_BT.shape
  rows_B = jnp.arange(B)
  pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  active_B = n_B < t_end
  k_draft, k_accept, k_final = jax.random.split(key, 3)

  # 1. γ draft steps; the draft at prefix length n + j predicts slot n + j.
  q_list, x_list = [], []
  for j, k in enumerate(jax.random.split(k_draft, gamma)):
    logits_BV = draft(buf_BT, positions_BT=pos_BT)[rows_B, jnp.minimum(n_B - 1 + j, T - 1)]
    q_BV = _probs(logits_BV, temperature)
    x_B = _categorical(k, q_BV)
    # Finished rows are not written (their slots may lie past the buffer: mode="drop").
    buf_BT = buf_BT.at[rows_B, n_B + j].set(jnp.where(active_B, x_B, 0), mode="drop")
    q_list.append(q_BV)
    x_list.append(x_B)
  q_BJV, x_BJ = jnp.stack(q_list, 1), jnp.stack(x_list, 1)

  # 2. the target scores prefix + x_1..x_γ in one pass: p_j at slots n − 1 .. n + γ − 1.
  logits_BTV = target(buf_BT, positions_BT=pos_BT)
  slots_BJ = jnp.minimum(n_B[:, None] - 1 + jnp.arange(gamma + 1), T - 1)  # [B, γ + 1]
  p_BJV = _probs(jnp.take_along_axis(logits_BTV, slots_BJ[:, :, None], axis=1), temperature)

  # 3. accept x_j iff r_j ≤ p_j(x_j) / q_j(x_j), written r·q ≤ p: no division, and p = q
  # accepts always since r < 1 (Algorithm 1 of 2211.17192).
  px_BJ = jnp.take_along_axis(p_BJV[:, :gamma], x_BJ[:, :, None], axis=2)[..., 0]
  qx_BJ = jnp.take_along_axis(q_BJV, x_BJ[:, :, None], axis=2)[..., 0]
  r_BJ = jax.random.uniform(k_accept, (B, gamma))
  ok_BJ = r_BJ * qx_BJ <= px_BJ
  m_B = jnp.sum(jnp.cumprod(ok_BJ.astype(jnp.int32), axis=1), axis=1)  # leading accepts

  # 4. replacement from norm(max(0, p − q)) at the first rejection (sec. 2.3 of 2211.17192),
  # or the bonus token from p_{γ+1} when all γ were accepted (q padded with zeros there).
  q_pad_BJV = jnp.concatenate([q_BJV, jnp.zeros_like(q_BJV[:, :1])], axis=1)
  p_m_BV = p_BJV[rows_B, m_B]
  resid_BV = jnp.maximum(p_m_BV - q_pad_BJV[rows_B, m_B], 0.0)
  mass_B1 = jnp.sum(resid_BV, axis=-1, keepdims=True)
  # A rejection has p(x) < q(x), so the residual has mass > 0 in exact arithmetic; guard the
  # rounding case by falling back to p.
  resid_BV = jnp.where(mass_B1 > 0, resid_BV / jnp.where(mass_B1 > 0, mass_B1, 1.0), p_m_BV)
  t_B = _categorical(k_final, resid_BV)
  buf_BT = buf_BT.at[rows_B, n_B + m_B].set(jnp.where(active_B, t_B, 0), mode="drop")
  # Drafts past the accepted ones stay in the buffer beyond n: causal masking hides them and the
  # next round overwrites them.
  n_B = jnp.where(active_B, n_B + m_B + 1, n_B)
  return buf_BT, n_B, jnp.where(active_B, m_B, 0), active_B


def check_pair(draft_cfg, target_cfg, gamma: int) -> None:
  """Raise ValueError for γ < 1 or draft/target with different vocabularies."""
  if not (isinstance(gamma, int) and gamma >= 1):
    raise ValueError(f"gamma (draft tokens per round) must be an integer >= 1, got {gamma!r}")
  if draft_cfg.vocab_size != target_cfg.vocab_size:
    raise ValueError(f"draft and target need the same vocabulary: draft vocab_size="
                     f"{draft_cfg.vocab_size}, target vocab_size={target_cfg.vocab_size}")


def speculative_generate(target: Any, draft: Any, prompt_BT: Array, max_new_tokens: int, *,
                         key: Array | None = None, gamma: int = 4,
                         temperature: float = 1.0) -> tuple[Array, dict[str, Array]]:
  """Extend each row of `prompt_BT` by `max_new_tokens` tokens distributed as the target's.

  Returns (tokens [B, T0 + n], stats) with stats: `accepted` and `proposed` draft tokens per row
  (acceptance rate = accepted / proposed; the last round's surplus tokens are counted), and
  `rounds` per row (target forward passes). Models follow `gpt.GPT`'s interface, eval mode.
  Needs T0 + n + γ − 1 ≤ context_len of both models (the last round drafts past the end).
  """
  check_pair(draft.cfg, target.cfg, gamma)
  if not temperature >= 0.0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if temperature > 0.0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a PRNG key")
  V = target.cfg.vocab_size
  B, T0 = sampling.check_prompt(
      prompt_BT, max_new_tokens, vocab_size=V,
      context_len=min(target.cfg.context_len, draft.cfg.context_len),
      extra=gamma - 1, extra_text=f" + gamma ({gamma}) - 1")
  t_end = T0 + max_new_tokens
  T = t_end + gamma - 1
  key = jax.random.key(0) if key is None else key  # unused at temperature 0
  buf_BT = jnp.zeros((B, T), jnp.int32).at[:, :T0].set(prompt_BT.astype(jnp.int32))
  tokens, accepted, rounds = _run(target, draft, buf_BT, key, t0=T0, gamma=gamma,
                                  temperature=float(temperature), t_end=t_end)
  return tokens[:, :t_end], {"accepted": accepted, "proposed": rounds * gamma, "rounds": rounds}


@nnx.jit(static_argnames=("t0", "gamma", "temperature", "t_end"))
def _run(target, draft, buf_BT, key, *, t0: int, gamma: int, temperature: float, t_end: int):
  B = buf_BT.shape[0]
  n0_B = jnp.full((B,), t0, jnp.int32)  # current length of every row
  zero_B = jnp.zeros((B,), jnp.int32)

  def cond(state):
    _, n_B, *_ = state
    return jnp.any(n_B < t_end)

  def body(state):
    buf_BT, n_B, key, acc_B, rounds_B = state
    key, k = jax.random.split(key)
    buf_BT, n_B, m_B, active_B = _round(draft, target, buf_BT, n_B, k, gamma=gamma,
                                        temperature=temperature, t_end=t_end)
    return buf_BT, n_B, key, acc_B + m_B, rounds_B + active_B.astype(jnp.int32)

  state = (buf_BT, n0_B, key, zero_B, zero_B)
  buf_BT, _, _, acc_B, rounds_B = jax.lax.while_loop(cond, body, state)
  return buf_BT, acc_B, rounds_B
