"""Model surgery for parameter-efficient fine-tuning: find projections by path, swap their class.

LoRA (2106.09685), QLoRA (2305.14314) and Houlsby adapters (1902.00751) all attach trainable
parameters to existing dense / einsum projections (`nnx.Linear`, `nnx.Einsum`) of a model that
is already built (GPT, BERT, T5, the U-Net). `select` finds them by a regex over their path
('layers/0/attn/q_proj'); `retype` returns a copy of a projection as a subclass of its own class,
so the base weights keep their names ('.../q_proj/kernel') and an `init_from` source or a
pretrained checkpoint loads into the adapted model by path, and the subclass's `super().__call__`
is the base forward bit for bit. `replace` puts the new module where the old one was.
"""

from __future__ import annotations

import copy
import re

from flax import nnx

PROJECTIONS = (nnx.Linear, nnx.Einsum)


def path_str(path) -> str:
  """('layers', 0, 'attn', 'q_proj') → 'layers/0/attn/q_proj'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def projections(model: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
  """Every dense / einsum projection of `model` (including already adapted ones), in graph order."""
  return [(tuple(p), m) for p, m in nnx.iter_graph(model)
          if isinstance(m, PROJECTIONS) and len(p) > 0]


def _pattern_of_paths(paths: list[str], n: int = 12) -> str:
  """Distinct paths with layer indices folded ('layers/*/attn/q_proj'), for error messages."""
  folded = sorted(set(re.sub(r"/\d+/", "/*/", f"/{p}/").strip("/") for p in paths))
  return ", ".join(folded[:n]) + (f", ... ({len(folded)} in all)" if len(folded) > n else "")


def select(model: nnx.Module, pattern: str, what: str) -> list[tuple[tuple, nnx.Module]]:
  """The projections whose path matches the regex `pattern` (`re.search`); one-line ValueError
  listing what exists when it matches none (`what` names the method in the message)."""
  try:
    rx = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{what} targets {pattern!r} is not a regular expression ({e})") from None
  found = projections(model)
  hits = [(p, m) for p, m in found if rx.search(path_str(p))]
  if not hits:
    raise ValueError(
        f"{what} targets {pattern!r} match none of the model's projections; they are: "
        f"{_pattern_of_paths([path_str(p) for p, _ in found])} (a regex searched in each path, "
        "e.g. 'attn/(q|v)_proj' or 'proj|up|down')")
  return hits


def retype(module: nnx.Module, cls: type) -> nnx.Module:
  """A shallow copy of `module` whose class is `cls` (a subclass of its class): the same
  Variables under the same names, plus whatever the caller adds."""
  if not issubclass(cls, type(module)):
    raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
  new = copy.copy(module)
  new.__class__ = cls
  return new


def replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
  """Put `new` at `path` of `model` (attributes and `nnx.List` items alike)."""
  parent = model
  for key in path[:-1]:
    parent = parent[key] if isinstance(key, int) else getattr(parent, key)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def einsum_parts(module: nnx.Module) -> tuple[str, str, str]:
  """(input spec, kernel spec, output spec) of a projection: nnx.Linear is '...i,io->...o'."""
  spec = "...i,io->...o" if isinstance(module, nnx.Linear) else module.einsum_str.replace(" ", "")
  lhs, out = spec.split("->")
  x_spec, k_spec = lhs.split(",")
  return x_spec, k_spec, out


def free_letter(*specs: str) -> str:
  """A letter used by none of `specs` (the rank axis of a low-rank factor)."""
  used = set("".join(specs))
  return next(c for c in "rRzZyYxXwWqQ" if c not in used)
