"""Bottleneck adapters, Houlsby et al. 2019, arXiv:1902.00751.

A small bottleneck with a skip connection is inserted after the attention block's output
projection and after the feed-forward block's output projection of each layer, before the
residual add (Fig. 2):

    a(h) = h + W_up · g(W_down · h + b_down) + b_up,   W_down: D → m, W_up: m → D,  m ≪ D  (§2.1)

and only the adapters train (the paper also trains the layer norms; `adapter_filter` can add
them). "Near-identity initialisation": W_down, W_up ~ N(0, σ²) with σ = 1e-2 truncated at 2σ,
biases 0 (§3.6), so at init |a(h) − h| ≤ ‖W_up‖ ‖g(W_down h)‖, a few 1e-4 of ‖h‖ at D = 128
(`init_deviation_bound` gives the exact bound; tested). g is GELU. Each adapter adds
2·m·D + m + D parameters.

`apply_adapters` retypes the matching projections (by default the GPT's attention output
`attn/o_proj` and FFN output `ffn/down`) to `AdapterLinear` / `AdapterEinsum`, which keep the
base weights under their own names so a pretrained checkpoint loads by path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.transformers import surgery

Array = jax.Array
DEFAULT_TARGETS = "attn/o_proj|ffn/down"
INIT_STD = 1e-2


class AdapterParam(nnx.Param):
  """Bottleneck-adapter parameters (the only trained ones)."""


class _Adapter:
  __slots__ = ()  # a pure mixin placed second in the bases: the instance layout stays the base's

  adapter_down: AdapterParam   # [D, m]
  adapter_down_bias: AdapterParam
  adapter_up: AdapterParam     # [m, D]
  adapter_up_bias: AdapterParam

  def adapter(self, h: Array) -> Array:
    h, wd, bd, wu, bu = self.promote_dtype(
        (h, self.adapter_down[...], self.adapter_down_bias[...], self.adapter_up[...],
         self.adapter_up_bias[...]), dtype=self.dtype)
    z = jax.nn.gelu(h @ wd + bd)           # g(W_down h + b_down): [..., m]
    return h + (z @ wu + bu)               # skip connection around the bottleneck, §2.1


class AdapterLinear(nnx.Linear, _Adapter):
  def __call__(self, x: Array, *args, **kwargs) -> Array:
    return self.adapter(super().__call__(x, *args, **kwargs))


class AdapterEinsum(nnx.Einsum, _Adapter):
  def __call__(self, x: Array, *args, **kwargs) -> Array:
    return self.adapter(super().__call__(x, *args, **kwargs))


def attach(module: nnx.Module, size: int, *, key: Array, where: str = "") -> nnx.Module:
  """An adapter copy of one projection whose output ends in one feature axis D."""
  _, k_spec, out_spec = surgery.einsum_parts(module)
  outs = [c for c in k_spec if c in out_spec]
  if len(outs) != 1 or out_spec[-1] != outs[0]:
    raise ValueError(f"{where}: an adapter goes after a projection to one feature axis "
                     f"(output '{out_spec}'); pick the output projections, e.g. 'attn/o_proj'")
  D = module.kernel.shape[k_spec.index(outs[0])]
  if not isinstance(size, int) or not 1 <= size <= D:
    raise ValueError(f"adapter size m={size!r} must be an integer in 1..{D} (the width) for "
                     f"{where or 'this projection'}")
  cls = AdapterLinear if isinstance(module, nnx.Linear) else AdapterEinsum
  new = surgery.retype(module, cls)
  k1, k2 = jax.random.split(key)
  init = lambda k, shape: INIT_STD * jax.random.truncated_normal(k, -2.0, 2.0, shape)  # §3.6
  new.adapter_down = AdapterParam(init(k1, (D, size)))
  new.adapter_down_bias = AdapterParam(jnp.zeros((size,)))
  new.adapter_up = AdapterParam(init(k2, (size, D)))
  new.adapter_up_bias = AdapterParam(jnp.zeros((D,)))
  return new


def apply_adapters(model: nnx.Module, size: int, targets: str = DEFAULT_TARGETS, *,
                   rngs: nnx.Rngs) -> list[str]:
  """Insert an adapter of bottleneck `size` after every projection matching `targets`, in place;
  returns the adapted paths."""
  done = []
  for path, module in surgery.select(model, targets, "adapter"):
    if isinstance(module, _Adapter):
      raise ValueError(f"{surgery.path_str(path)} already has an adapter")
    where = surgery.path_str(path)
    surgery.replace(model, path, attach(module, size, key=rngs.params(), where=where))
    done.append(where)
  return done


def init_deviation_bound(layer: _Adapter, h: Array) -> Array:
  """max over rows of |a(h) − h| ≤ ‖g(W_down h)‖₂ · ‖W_up‖₂ (biases 0 at init), per row [...]."""
  z = jax.nn.gelu(h @ layer.adapter_down[...])
  return jnp.linalg.norm(z, axis=-1) * jnp.linalg.norm(layer.adapter_up[...], ord=2)
