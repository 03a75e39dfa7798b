"""Logical axis names → mesh axes: how a model's parameters are laid out over a device mesh.

GSPMD (Xu et al., 2105.04663): give each array a sharding over a named device mesh and let XLA
partition the program and insert the collectives. Each model class declares, per parameter, a
*logical* name for every dimension (`PARAM_AXES`, a class attribute: rows of (regex over the
parameter path, names)); a table of *rules* maps logical names to mesh axes, as MaxText's
`logical_axis_rules` and flax's `logical_to_mesh_axes` do, so one model serves every layout:

  data parallel    mesh {"data": n}: parameters replicated, batch split.
  FSDP / ZeRO-3    mesh {"fsdp": n} (1910.02054, 2304.11277): every matrix's `embed` dimension
                   split too; XLA all-gathers a weight before its matmul and reduce-scatters
                   its gradient, so parameters, gradients and optimizer state are 1/n each.
  tensor parallel  mesh {"model": n} (Megatron-LM, 1909.08053 §3): q/k/v and the FFN's first
                   matmul split by output column (`heads`, `mlp`), the attention output and
                   the FFN's second matmul by input row, so each block needs one all-reduce.

The vocabulary of logical names (`DEFAULT_RULES` gives each its mesh axis):
  vocab     vocabulary / class-table rows            embed     the width a matmul contracts
  heads     q/k/v features N·H, attn-out input       kv_heads  k/v features K·H (GQA / MQA)
  mlp       FFN hidden units                         conv_out  conv output channels
  layers    a stacked-layer axis
  batch     the leading dim of every batch (data and fsdp together)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from flax import nnx
from jax.sharding import PartitionSpec as P

Axes = tuple[str | None, ...]
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

MESH_AXES = ("data", "fsdp", "model")
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("conv_out", None),
    ("layers", None),
)
LOGICAL_AXES = tuple(name for name, _ in DEFAULT_RULES)


def path_str(path) -> str:
  """('layers', 0, 'attn', 'q', 'kernel') → 'layers/0/attn/q/kernel'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _params(model: nnx.Module):
  return [(path_str(p), v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def _table(model: nnx.Module):
  table = getattr(type(model), "PARAM_AXES", ())
  return [(re.compile(rx), tuple(axes)) for rx, axes in table]


def _row(table, path: str, ndim: int):
  """The axes of the first row whose regex matches `path` and whose rank is `ndim`, or None.
  Rank is part of the match: a parameter added to a model later (a reward head's scalar bias,
  an adapter) that a generic row like 'bias$' names with another rank is replicated."""
  return next((a for rx, a in table if rx.search(path) and len(a) == ndim), None)


def _shape(v):
  return tuple(v.shape if hasattr(v, "shape") else v.value.shape)


def unmatched(model: nnx.Module) -> list[str]:
  """Paths of the model's parameters that no row of its `PARAM_AXES` matches (regex and rank):
  the model's own tests hold this to [] so a table with a wrong rank cannot pass."""
  table = _table(model)
  return [p for p, v in _params(model) if _row(table, p, len(_shape(v))) is None]


def param_axes(model: nnx.Module) -> dict[str, Axes]:
  """Path → logical axes of each parameter (first row matching its path and rank; no row →
  all None, i.e. replicated)."""
  table = _table(model)
  out = {}
  for path, v in _params(model):
    shape = _shape(v)
    axes = _row(table, path, len(shape)) or (None,) * len(shape)
    bad = [a for a in axes if a is not None and a not in LOGICAL_AXES]
    if bad:
      raise ValueError(f"{type(model).__name__}.PARAM_AXES names unknown logical axes {bad} "
                       f"for {path}; use {', '.join(LOGICAL_AXES)} or None")
    out[path] = axes
  return out


def _mesh_axes(entry: MeshAxes) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def logical_to_spec(axes: Sequence[str | None], rules: Rules | Mapping = DEFAULT_RULES,
                    mesh_shape: Mapping[str, int] | None = None) -> P:
  """PartitionSpec of one array from its logical axes: each name → its rule's mesh axes,
  dropping mesh axes of size 1 (given `mesh_shape`) and any mesh axis an earlier dimension
  already uses (one mesh axis can split only one dimension)."""
  rules = dict(rules)
  used, spec = set(), []
  for name in axes:
    mesh = [a for a in _mesh_axes(rules.get(name)) if name is not None]
    mesh = [a for a in mesh if a not in used and (mesh_shape is None or mesh_shape.get(a, 1) > 1)]
    used.update(mesh)
    spec.append(None if not mesh else mesh[0] if len(mesh) == 1 else tuple(mesh))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def shards(spec: P, mesh_shape: Mapping[str, int]) -> list[int]:
  """Number of pieces each dimension of an array with `spec` is split into."""
  return [_prod(mesh_shape[a] for a in _mesh_axes(e)) for e in spec]


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def check_divisible(path: str, shape: Sequence[int], spec: P, mesh_shape: Mapping[str, int],
                    axes: Sequence[str | None] | None = None) -> None:
  """ValueError (one line) if a dimension of `shape` is not divisible by its mesh axes."""
  for d, (n, k) in enumerate(zip(shape, shards(spec, mesh_shape))):
    if n % k:
      name = f" (logical axis {axes[d]!r})" if axes else ""
      mesh = " × ".join(f"{a!r} = {mesh_shape[a]}" for a in _mesh_axes(spec[d]))
      raise ValueError(
          f"parameter {path} has dimension {d} of size {n}{name}, not divisible by mesh axis "
          f"{mesh}; choose config.mesh sizes that divide {n}, or map {axes[d] if axes else 'it'!r} "
          "to None in config.sharding_rules")


def specs(axes_by_path: Mapping[str, Axes], shapes: Mapping[str, Sequence[int]],
          rules: Rules | Mapping = DEFAULT_RULES, mesh_shape: Mapping[str, int] | None = None,
          prefix: str = "") -> dict[str, P]:
  """Path → PartitionSpec from logical axes and shapes, divisibility checked (the message names
  `prefix + path`)."""
  out = {}
  for path, axes in axes_by_path.items():
    spec = logical_to_spec(axes, rules, mesh_shape)
    if mesh_shape is not None:
      check_divisible(prefix + path, shapes[path], spec, mesh_shape, axes)
    out[path] = spec
  return out


def model_specs(model: nnx.Module, rules: Rules | Mapping = DEFAULT_RULES,
                mesh_shape: Mapping[str, int] | None = None) -> dict[str, P]:
  """Path → PartitionSpec of each parameter of `model`, divisibility checked."""
  return specs(param_axes(model), {p: _shape(v) for p, v in _params(model)}, rules, mesh_shape)
