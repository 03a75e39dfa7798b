"""Mixture-of-Experts feed-forward layer with top-k routing and expert capacity.

Switch Transformer (Fedus et al. 2021, arXiv:2101.03961): router, capacity with token dropping
(sec. 2.2) and the load-balancing loss (eqs. 4–6); top-k > 1 as in GShard (arXiv:2006.16668) and
Mixtral (arXiv:2401.04088, renormalized top-k gates); router z-loss from ST-MoE (Zoph et al.
2022, arXiv:2202.08906, eq. 5).

Local shape letters: M = B·T tokens routed together, C = capacity (slots per expert), k = the
k of top-k. Experts are one batched einsum over E, so their weights ([E, D, F], [E, F, D]) can be
sharded along a mesh axis (`shard_experts`); XLA then inserts the all-to-alls.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array
EXPERT_FFNS = ("gelu", "swiglu")


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
  """C = ⌈capacity_factor · tokens · k / E⌉ (sec. 2.2 of 2101.03961, times k for top-k)."""
  if capacity_factor <= 0:
    raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
  return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def load_balancing_loss(probs_ME: Array, expert_idx_Mk: Array) -> Array:
  """E · Σ_i f_i · P_i (eq. 4 of 2101.03961, without the α weight).

  f_i (eq. 5) = fraction of the M·k routing choices that picked expert i (counted before
  capacity dropping, as in Switch); P_i (eq. 6) = mean router probability of expert i.
  Convention: 1.0 at perfect balance for every k (f_i = P_i = 1/E), E when all tokens go to one
  expert with probability 1. (HF Mixtral sums over the k choices instead and gets k at balance.)
  """
  E = probs_ME.shape[-1]
  f_E = jnp.mean(jax.nn.one_hot(expert_idx_Mk, E, dtype=jnp.float32), axis=(0, 1))  # eq. (5)
  P_E = jnp.mean(probs_ME.astype(jnp.float32), axis=0)  # eq. (6)
  return E * jnp.sum(f_E * P_E)  # eq. (4)


def router_z_loss(logits_ME: Array) -> Array:
  """L_z = 1/M Σ_m (log Σ_e exp x_{m,e})² (eq. 5 of 2202.08906): keeps router logits small."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits_ME.astype(jnp.float32), axis=-1)))


def route(logits_ME: Array, *, top_k: int, capacity: int, renormalize: bool = True):
  """Top-k routing with capacity. Returns (dispatch_MEC, combine_MEC, aux).

  Slots are filled in priority order: every token's first choice (in token order), then every
  token's second choice, ... (GShard's order); a choice whose expert is full is dropped, and a
  token dropped by all its choices passes through the layer as zero (the residual carries it).
  Router softmax in fp32: gate values multiply the outputs, and bf16 probabilities near 1 lose
  the distinction between experts.
  """
  M, E = logits_ME.shape
  if not 1 <= top_k <= E:
    raise ValueError(f"top_k must be in 1..{E} (the number of experts), got {top_k}")
  probs_ME = jax.nn.softmax(logits_ME.astype(jnp.float32), axis=-1)
  gate_Mk, idx_Mk = jax.lax.top_k(probs_ME, top_k)
  if renormalize:  # Mixtral: softmax over the top-k logits = renormalized top-k probabilities
    gate_Mk = gate_Mk / jnp.sum(gate_Mk, axis=-1, keepdims=True)
  # Choice-major order [k, M]: all first choices before any second choice.
  choice_kME = jax.nn.one_hot(idx_Mk.T, E, dtype=jnp.int32)
  flat_ME = choice_kME.reshape(top_k * M, E)
  slot_kME = (jnp.cumsum(flat_ME, axis=0) - 1).reshape(top_k, M, E)
  slot_kM = jnp.sum(slot_kME * choice_kME, axis=-1)  # slot this choice takes in its expert
  keep_kM = slot_kM < capacity
  onehot_kMEC = (choice_kME[..., None].astype(jnp.float32)
                 * jax.nn.one_hot(slot_kM, capacity, dtype=jnp.float32)[:, :, None, :]
                 * keep_kM[..., None, None])
  dispatch_MEC = jnp.sum(onehot_kMEC, axis=0)
  combine_MEC = jnp.sum(onehot_kMEC * gate_Mk.T[:, :, None, None], axis=0)
  aux = {
      "load_balance": load_balancing_loss(probs_ME, idx_Mk),
      "router_z": router_z_loss(logits_ME),
      "dropped_fraction": 1.0 - jnp.mean(keep_kM.astype(jnp.float32)),
  }
  return dispatch_MEC, combine_MEC, aux


class MoE(nnx.Module):
  """Top-k routed FFN experts; call returns (y_BTD, aux) with aux the router losses/metrics."""

  def __init__(self, d_model: int, d_ff: int, num_experts: int, *, top_k: int = 2,
               capacity_factor: float = 1.25, ffn: str = "gelu", renormalize: bool = True,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               out_kernel_init: nnx.Initializer | None = None, rngs: nnx.Rngs):
    if ffn not in EXPERT_FFNS:
      raise ValueError(f"unknown expert ffn {ffn!r}; valid choices: {EXPERT_FFNS}")
    if not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k must be in 1..{num_experts} (num_experts), got {top_k}")
    capacity(1, num_experts, top_k, capacity_factor)  # validates capacity_factor
    D, F, E = d_model, d_ff, num_experts
    self.num_experts, self.top_k = E, top_k
    self.capacity_factor, self.ffn, self.renormalize = capacity_factor, ffn, renormalize
    self.router = nnx.Linear(D, E, use_bias=False, kernel_init=kernel_init, rngs=rngs)
    out_init = out_kernel_init or kernel_init

    def batched(init, shape):  # E experts, each initialized like its dense counterpart
      return nnx.Param(jax.vmap(lambda k: init(k, shape))(jax.random.split(rngs.params(), E)))

    self.w_up = batched(kernel_init, (D, F))  # [E, D, F]
    self.w_gate = batched(kernel_init, (D, F)) if ffn == "swiglu" else None  # [E, D, F]
    self.w_down = batched(out_init, (F, D))  # [E, F, D]

  def experts(self, x_ECD: Array) -> Array:
    """All experts at once: [E, C, D] → [E, C, D], same math as ffn.GeluMLP / ffn.SwiGLU.

    The experts compute in the dtype of their input (bf16 in a bf16 model; the fp32 weights are
    cast), while the router (`__call__`) promotes to its fp32 weights: top-k choices and the
    softmax are precision-sensitive and cost D·E per token, nothing beside the experts.
    """
    def w(param: nnx.Param) -> Array:
      return param[...].astype(x_ECD.dtype)

    up_ECF = jnp.einsum("ECD,EDF->ECF", x_ECD, w(self.w_up))
    if self.ffn == "swiglu":
      h_ECF = jax.nn.silu(jnp.einsum("ECD,EDF->ECF", x_ECD, w(self.w_gate))) * up_ECF
    else:
      h_ECF = jax.nn.gelu(up_ECF, approximate=True)
    return jnp.einsum("ECF,EFD->ECD", h_ECF, w(self.w_down))

  def __call__(self, x_BTD: Array) -> tuple[Array, dict[str, Array]]:
    B, T, D = x_BTD.shape
    x_MD = x_BTD.reshape(B * T, D)
    C = capacity(B * T, self.num_experts, self.top_k, self.capacity_factor)
    logits_ME = self.router(x_MD)
    dispatch_MEC, combine_MEC, aux = route(
        logits_ME, top_k=self.top_k, capacity=C, renormalize=self.renormalize)
    x_ECD = jnp.einsum("MEC,MD->ECD", dispatch_MEC.astype(x_MD.dtype), x_MD)
    y_ECD = self.experts(x_ECD)
    # y(x) = Σ_{i ∈ top-k} g_i(x) E_i(x) (eq. 1 of 2101.03961, summed over the k kept choices)
    y_MD = jnp.einsum("MEC,ECD->MD", combine_MEC.astype(y_ECD.dtype), y_ECD)
    return y_MD.reshape(B, T, D), aux


def shard_experts(moe: MoE, mesh: jax.sharding.Mesh, axis_name: str = "expert") -> None:
  """Place each expert weight with its E axis split over `axis_name` of `mesh` (in place)."""
  if moe.num_experts % mesh.shape[axis_name]:
    raise ValueError(f"num_experts={moe.num_experts} is not divisible by mesh axis "
                     f"{axis_name!r} of size {mesh.shape[axis_name]}")
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
  for name in ("w_up", "w_gate", "w_down"):
    w = getattr(moe, name)
    if w is not None:
      setattr(moe, name, nnx.Param(jax.device_put(w[...], spec)))
