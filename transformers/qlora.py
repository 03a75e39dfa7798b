"""QLoRA: LoRA on a frozen 4-bit NormalFloat base, Dettmers et al. 2023, arXiv:2305.14314.

    Y = X · doubleDequant(c1, c2, W^NF4) + X L1 L2                              — eq. (5)

The frozen base kernel is stored as NF4 codes with blockwise absmax constants, themselves double
quantized (`genfm.transformers.nf4`: block 64, then 8-bit blocks of 256 — about 4.127 bits per
weight instead of 32). Every forward dequantizes the kernel on the fly under jit, in the compute
dtype (bf16 as in the paper, or fp32), and adds the LoRA path (`lora.py`, B = 0 at init, α/r),
whose A, B stay fp32 and are the only trained parameters. Gradients flow through the
dequantized weight to X, never to the codes (they are not `nnx.Param`s).

`apply_qlora` retypes the matching projections to `QLoRALinear` / `QLoRAEinsum`: the bias keeps
its name and the kernel becomes `nf4_codes`, `nf4_absmax_q`, ... (an `NF4Storage` variable each).
A pretrained fp32 checkpoint loads into such a model through `quantize_arrays`, which replaces
each adapted `<path>/kernel` by its NF4 storage. Merging a LoRA into an NF4 base is lossy — the
merged weight must be quantized again, which moves the weights by up to half an NF4 step per
block — so `merge` returns the error it made and cannot be undone (HF PEFT's bnb layers warn
the same).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.transformers import lora, nf4, surgery

Array = jax.Array


class NF4Storage(nnx.Variable):
  """Quantized, frozen weight storage (codes and constants); never differentiated."""


class _QLoRA(lora._LoRA):  # pylint: disable=protected-access
  __slots__ = ()

  nf4_keys: tuple                # the keys of nf4.quantize's result stored here
  nf4_shape: tuple               # the kernel's shape
  nf4_settings: dict             # block_size, double_quant, dq_block_size
  nf4_compute: str               # dtype of the dequantized kernel and the matmul

  def nf4_store(self, w: Array) -> None:
    q = nf4.quantize(w, **self.nf4_settings)
    for k in self.nf4_keys:
      getattr(self, f"nf4_{k}")[...] = q[k]

  def dequantized_kernel(self, dtype=jnp.float32) -> Array:
    q = {k: getattr(self, f"nf4_{k}")[...] for k in self.nf4_keys}
    return nf4.dequantize(q, self.nf4_shape, dtype)

  def __call__(self, x: Array, *args, **kwargs) -> Array:
    del args, kwargs
    x_spec, k_spec, out_spec = surgery.einsum_parts(self)
    dt = jnp.dtype(self.nf4_compute)
    w = self.dequantized_kernel(dt)                       # doubleDequant(c1, c2, W^NF4), eq. (5)
    y = jnp.einsum(f"{x_spec},{k_spec}->{out_spec}", x.astype(dt), w)
    if self.bias is not None:
      outs = [c for c in k_spec if c in out_spec]
      y = y + _broadcast_bias(self.bias[...].astype(dt), outs, out_spec)
    return self.lora_add(x, y)                             # + X L1 L2 (α/r), eq. (5)


def _broadcast_bias(bias: Array, outs: list[str], out_spec: str) -> Array:
  """The bias (over the kernel's output axes) laid out to broadcast against the output."""
  spec = out_spec.replace("...", "")
  shape = [bias.shape[outs.index(c)] if c in outs else 1 for c in spec]
  return bias.reshape(shape)


class QLoRALinear(nnx.Linear, _QLoRA):
  __call__ = _QLoRA.__call__


class QLoRAEinsum(nnx.Einsum, _QLoRA):
  __call__ = _QLoRA.__call__


def attach(module: nnx.Module, rank: int, alpha: float, *, rslora: bool, key: Array,
           block_size: int, double_quant: bool, dq_block_size: int, compute_dtype: str,
           where: str) -> nnx.Module:
  """The QLoRA copy of one projection: NF4 storage of its kernel, LoRA on top."""
  with_lora = lora.attach(module, rank, alpha, rslora=rslora, key=key, where=where)
  cls = QLoRALinear if isinstance(module, nnx.Linear) else QLoRAEinsum
  new = surgery.retype(module, cls)
  for name in ("lora_a", "lora_b", "lora_scale", "lora_merged", "lora_specs"):
    setattr(new, name, getattr(with_lora, name))
  w = module.kernel[...]
  settings = dict(block_size=block_size, double_quant=double_quant, dq_block_size=dq_block_size)
  try:
    q = nf4.quantize(w, **settings)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  new.nf4_keys, new.nf4_shape = tuple(sorted(q)), tuple(w.shape)
  new.nf4_settings, new.nf4_compute = settings, jnp.dtype(compute_dtype).name
  for k in new.nf4_keys:
    setattr(new, f"nf4_{k}", NF4Storage(q[k]))
  del new.kernel                                            # the fp32 kernel is gone
  return new


def apply_qlora(model: nnx.Module, targets: str, rank: int, alpha: float | None = None, *,
                rslora: bool = False, block_size: int = 64, double_quant: bool = True,
                dq_block_size: int = 256, compute_dtype: str = "bfloat16",
                rngs: nnx.Rngs) -> list[str]:
  """Quantize every projection matching `targets` to NF4 and put LoRA on it, in place; returns
  the adapted paths. The paper quantizes every linear layer and adapts them all (§4)."""
  if compute_dtype not in ("bfloat16", "float32"):
    raise ValueError(f"QLoRA compute_dtype must be 'bfloat16' or 'float32', got {compute_dtype!r}")
  alpha = float(rank) if alpha is None else alpha
  done = []
  for path, module in surgery.select(model, targets, "QLoRA"):
    where = surgery.path_str(path)
    if isinstance(module, lora._LoRA):  # pylint: disable=protected-access
      raise ValueError(f"{where} already has a LoRA adapter")
    surgery.replace(model, path, attach(
        module, rank, alpha, rslora=rslora, key=rngs.params(), block_size=block_size,
        double_quant=double_quant, dq_block_size=dq_block_size, compute_dtype=compute_dtype,
        where=where))
    done.append(where)
  return done


def qlora_layers(model: nnx.Module) -> list[tuple[str, _QLoRA]]:
  return [(surgery.path_str(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, _QLoRA)]


def quantize_arrays(model: nnx.Module, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A checkpoint's flat arrays ({'layers/0/attn/q_proj/kernel': ...}) in `model`'s layout:
  each QLoRA layer's fp32 kernel replaced by its NF4 storage (`init_from` of a QLoRA run)."""
  out = dict(arrays)
  for where, layer in qlora_layers(model):
    key = f"{where}/kernel"
    if key not in out:
      continue                                   # a source without it fails by path later
    w = out.pop(key)
    if tuple(np.shape(w)) != layer.nf4_shape:
      raise ValueError(f"{key} has shape {list(np.shape(w))} in the source but "
                       f"{list(layer.nf4_shape)} in this model")
    q = nf4.quantize(jnp.asarray(w, jnp.float32), **layer.nf4_settings)
    out.update({f"{where}/nf4_{k}": np.asarray(v) for k, v in q.items()})
  return out


def storage_bytes(model: nnx.Module) -> tuple[int, int]:
  """(bytes of the NF4 storage, parameters it stands for) over the QLoRA layers."""
  nbytes = sum(int(getattr(m, f"nf4_{k}")[...].nbytes) for _, m in qlora_layers(model)
               for k in m.nf4_keys)
  return nbytes, sum(math.prod(m.nf4_shape) for _, m in qlora_layers(model))


def merge(model: nnx.Module) -> float:
  """Fold (α/r)·BA into the NF4 base by quantizing W_deq + ΔW again. Lossy: returns the largest
  |merged weight − (W_deq + ΔW)| it made, and warns; there is no unmerge."""
  worst = 0.0
  for where, layer in qlora_layers(model):
    if layer.lora_merged:
      raise ValueError(f"{where} is already merged")
    want = layer.dequantized_kernel() + layer.lora_delta_w()
    layer.nf4_store(want)
    worst = max(worst, float(jnp.max(jnp.abs(layer.dequantized_kernel() - want))))
    layer.lora_merged = True
  warnings.warn(f"merging LoRA into an NF4 base is lossy: the merged weights were quantized "
                f"again (max |error| {worst:.3g}); keep the adapter unmerged for exact outputs",
                stacklevel=2)
  return worst
