"""LoRA: low-rank adaptation of frozen projections, Hu et al. 2021, arXiv:2106.09685.

A frozen projection W (d_in → d_out) gains a trainable low-rank update,

    h = W x + ΔW x = W x + (α/r) · B A x,   A ∈ R^{r×d_in}, B ∈ R^{d_out×r}     — eq. (3), §4.1

with A random Gaussian and B = 0 at init (so the adapted model *is* the base model at step 0),
and α/r scaling (α fixed while r varies, §4.1); rsLoRA's α/√r (Kalajdzievski 2023,
arXiv:2312.03732) is an option. Any `nnx.Linear` or `nnx.Einsum` qualifies: an einsum kernel is
read as a matrix from its contracted axes (those of the input) to its output axes, so
'BTD,DNH->BTNH' (a query projection) has d_in = D, d_out = N·H and A: [D, r], B: [r, N, H].
Each adapted matrix adds r·(d_in + d_out) parameters.

`apply_lora` swaps the matching projections for `LoRALinear` / `LoRAEinsum`, subclasses that keep
the base weights under their own names (`kernel`, `bias`), so a pretrained checkpoint loads by
path, and store A, B as `nnx.LoRAParam` (the loop's trainable filter and `init_from`'s "new
parameters" select that type). `merge` folds (α/r)·BA into W for inference at the base model's
cost and `unmerge` takes it out again; `adapter_state` / `set_adapter` switch between adapters
on one base without reloading it; `save_adapter` / `load_adapter` write and read the adapter
alone (a small .npz), refusing a file trained on another base.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.transformers import surgery

Array = jax.Array
_META = "__lora_meta__"


class _LoRA:
  """The low-rank update shared by the Linear and Einsum subclasses (attributes set by `attach`)."""

  __slots__ = ()  # a pure mixin: the subclasses keep their base's layout

  lora_a: nnx.LoRAParam       # [*in dims, r]
  lora_b: nnx.LoRAParam       # [r, *out dims]
  lora_scale: float           # α/r (or α/√r)
  lora_merged: bool           # ΔW already folded into `kernel`
  lora_specs: tuple           # (x_spec, in letters, out letters, kernel spec, out spec, rank letter)

  def lora_delta_x(self, x: Array) -> Array:
    """(α/r) · B A x in the layout of the projection's output."""
    x_spec, ins, outs, _, out_spec, r = self.lora_specs
    x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
    h_spec = "".join(c for c in x_spec if c not in ins) + r
    h = jnp.einsum(f"{x_spec},{ins}{r}->{h_spec}", x, a)              # A x: [..., r]
    return self.lora_scale * jnp.einsum(f"{h_spec},{r}{outs}->{out_spec}", h, b)  # (α/r)·B(Ax)

  def lora_delta_w(self) -> Array:
    """ΔW = (α/r) · B A in the kernel's own layout (fp32, the parameters' dtype)."""
    _, ins, outs, k_spec, _, r = self.lora_specs
    return self.lora_scale * jnp.einsum(f"{ins}{r},{r}{outs}->{k_spec}", self.lora_a[...],
                                        self.lora_b[...])

  def lora_add(self, x: Array, y: Array) -> Array:
    return y if self.lora_merged else y + self.lora_delta_x(x).astype(y.dtype)  # eq. (3)


# The mixin comes second in the bases: first, it would change the instance layout and `retype`'s
# __class__ swap would be refused; so each class spells out its __call__.
class LoRALinear(nnx.Linear, _LoRA):
  """`nnx.Linear` + LoRA; built by `apply_lora`."""

  def __call__(self, x: Array, *args, **kwargs) -> Array:
    return self.lora_add(x, super().__call__(x, *args, **kwargs))  # W x + b, bit for bit, + ΔW x


class LoRAEinsum(nnx.Einsum, _LoRA):
  """`nnx.Einsum` + LoRA; built by `apply_lora`."""

  def __call__(self, x: Array, *args, **kwargs) -> Array:
    return self.lora_add(x, super().__call__(x, *args, **kwargs))


def matrix_dims(module: nnx.Module) -> tuple[int, int]:
  """(d_in, d_out) of a projection read as a matrix."""
  _, k_spec, out_spec = surgery.einsum_parts(module)
  shape = module.kernel[...].shape
  d_in = math.prod(n for c, n in zip(k_spec, shape) if c not in out_spec)
  return d_in, math.prod(shape) // d_in


def attach(module: nnx.Module, rank: int, alpha: float, *, rslora: bool, key: Array,
           where: str = "") -> nnx.Module:
  """A LoRA copy of one projection (same base Variables), A ~ N(0, 1/d_in), B = 0."""
  cls = LoRALinear if isinstance(module, nnx.Linear) else LoRAEinsum
  x_spec, k_spec, out_spec = surgery.einsum_parts(module)
  d_in, d_out = matrix_dims(module)
  if not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
    raise ValueError(f"LoRA rank r={rank!r} must be an integer in 1..min(d_in, d_out)="
                     f"{min(d_in, d_out)} for {where or 'this projection'} ({d_in} → {d_out})")
  if not alpha > 0:
    raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
  shape = dict(zip(k_spec, module.kernel[...].shape))
  ins = "".join(c for c in k_spec if c not in out_spec)
  outs = "".join(c for c in k_spec if c in out_spec)
  r = surgery.free_letter(x_spec, k_spec, out_spec)
  new = surgery.retype(module, cls)
  # "random Gaussian initialization for A and zero for B, so ΔW = BA is zero at the beginning of
  # training" (§4.1). The paper gives no scale; 1/d_in keeps A x at the input's scale.
  a = jax.random.normal(key, tuple(shape[c] for c in ins) + (rank,), jnp.float32)
  new.lora_a = nnx.LoRAParam(a / math.sqrt(d_in))
  new.lora_b = nnx.LoRAParam(jnp.zeros((rank,) + tuple(shape[c] for c in outs), jnp.float32))
  new.lora_scale = float(alpha / (math.sqrt(rank) if rslora else rank))  # α/r, or rsLoRA α/√r
  new.lora_merged = False
  new.lora_specs = (x_spec, ins, outs, k_spec, out_spec, r)
  return new


def apply_lora(model: nnx.Module, targets: str, rank: int, alpha: float | None = None, *,
               rslora: bool = False, rngs: nnx.Rngs) -> list[str]:
  """Adapt, in place, every projection whose path matches the regex `targets` ('attn/(q|v)_proj':
  the paper's W_q and W_v, §7.1; 'proj|up|down|gate': every projection). `alpha` defaults to
  `rank` (scale 1). Returns the adapted paths; ValueError (one line) for a bad rank or a pattern
  that matches nothing."""
  alpha = float(rank) if alpha is None else alpha
  hits = surgery.select(model, targets, "LoRA")
  done = []
  for path, module in hits:
    if isinstance(module, _LoRA):
      raise ValueError(f"{surgery.path_str(path)} already has a LoRA adapter; use set_adapter "
                       "to switch adapters on one base")
    where = surgery.path_str(path)
    surgery.replace(model, path, attach(module, rank, alpha, rslora=rslora,
                                        key=rngs.params(), where=where))
    done.append(where)
  return done


def lora_layers(model: nnx.Module) -> list[tuple[str, _LoRA]]:
  return [(surgery.path_str(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, _LoRA)]


def _layers_or_raise(model) -> list[tuple[str, _LoRA]]:
  layers = lora_layers(model)
  if not layers:
    raise ValueError("the model has no LoRA layers; call apply_lora first")
  return layers


def merge(model: nnx.Module) -> None:
  """W ← W + (α/r)·BA in every LoRA layer; the forward then costs what the base model's does."""
  for where, layer in _layers_or_raise(model):
    if layer.lora_merged:
      raise ValueError(f"{where} is already merged; unmerge it first")
    layer.kernel[...] = (layer.kernel[...] + layer.lora_delta_w()).astype(layer.kernel.dtype)
    layer.lora_merged = True


def unmerge(model: nnx.Module) -> None:
  """W ← W − (α/r)·BA: the base weights back, up to one fp32 rounding of W + ΔW per element."""
  for where, layer in _layers_or_raise(model):
    if not layer.lora_merged:
      raise ValueError(f"{where} is not merged")
    layer.kernel[...] = (layer.kernel[...] - layer.lora_delta_w()).astype(layer.kernel.dtype)
    layer.lora_merged = False


def count(model: nnx.Module) -> int:
  """Trainable LoRA parameters: Σ r·(d_in + d_out) over the adapted matrices."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))))


# --- several adapters on one base ---------------------------------------------------------------


def adapter_state(model: nnx.Module) -> nnx.State:
  """The LoRA parameters alone (a copy): keep several, switch with `set_adapter`."""
  _layers_or_raise(model)
  return jax.tree.map(jnp.copy, nnx.state(model, nnx.LoRAParam))


def _flat(state) -> dict[str, np.ndarray]:
  return {surgery.path_str(p): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
          for p, v in nnx.to_flat_state(state)}


def set_adapter(model: nnx.Module, state: nnx.State) -> None:
  """Load another adapter's A, B into the LoRA layers (the base is untouched, not reloaded)."""
  layers = _layers_or_raise(model)
  if any(m.lora_merged for _, m in layers):
    raise ValueError("unmerge the current adapter before switching to another")
  _check_same(_flat(nnx.state(model, nnx.LoRAParam)), _flat(state), "this adapter")
  nnx.update(model, state)


def _check_same(have: dict, got: dict, what: str) -> None:
  if set(have) != set(got):
    diff = sorted(set(have) ^ set(got))
    raise ValueError(f"{what} adapts other projections than this model's LoRA layers (first "
                     f"difference: {diff[0]}); apply_lora with the adapter's targets first")
  for p in have:
    if have[p].shape != got[p].shape:
      raise ValueError(f"{what}: {p} has shape {list(got[p].shape)} but this model's is "
                       f"{list(have[p].shape)} (another rank or another base width)")


def base_digest(model: nnx.Module) -> str:
  """sha1 of the adapted layers' base weights: which base an adapter was trained on."""
  h = hashlib.sha1()
  for where, layer in _layers_or_raise(model):
    if layer.lora_merged:
      raise ValueError(f"{where} is merged; unmerge before fingerprinting or saving the adapter")
    for name in ("kernel", "bias"):
      v = getattr(layer, name, None)
      if v is not None:
        h.update(where.encode() + name.encode() + np.asarray(v[...], np.float32).tobytes())
  return h.hexdigest()


def save_adapter(model: nnx.Module, path: str, **meta) -> int:
  """Write the adapter alone to `path` (.npz: A, B by path, the scale, the base's digest);
  returns the file's size in bytes."""
  layers = _layers_or_raise(model)
  arrays = _flat(nnx.state(model, nnx.LoRAParam))
  info = {"base_digest": base_digest(model), "scales": {w: m.lora_scale for w, m in layers},
          **meta}
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **arrays, **{_META: np.frombuffer(json.dumps(info).encode(), np.uint8)})
  os.replace(tmp, path)   # whole or not at all
  return os.path.getsize(path)


def load_adapter(model: nnx.Module, path: str) -> dict:
  """Load an adapter written by `save_adapter` onto `model` (its base, with `apply_lora` of the
  same targets and rank); ValueError in one line for a file of another base. Returns its meta."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files if k != _META}
    info = json.loads(bytes(f[_META]).decode()) if _META in f.files else None
  if info is None:
    raise ValueError(f"{path} is not a genfm LoRA adapter file (no metadata)")
  have = _flat(nnx.state(model, nnx.LoRAParam))
  _check_same(have, arrays, f"the adapter file {path}")
  digest = base_digest(model)
  if info["base_digest"] != digest:
    raise ValueError(f"the adapter file {path} was trained on another base model (base weights "
                     f"digest {info['base_digest'][:12]}, this model's {digest[:12]}); load it "
                     "onto the base it was trained on")
  for where, layer in lora_layers(model):
    layer.lora_scale = float(info["scales"][where])
  flat = [(p, v.replace(jnp.asarray(arrays[surgery.path_str(p)])))
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))]
  nnx.update(model, nnx.from_flat_state(flat))
  return info
