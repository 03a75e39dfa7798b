"""Orbax checkpoints of the whole run: parameters, other model state (BatchNorm statistics, RNG
streams), optimizer state, step, and the data iterator's position — so that a resumed run
continues exactly where it stopped (bitwise on CPU; tests/experiments hold it to that).

Typed PRNG keys are stored as their raw uint32 key data and re-wrapped on restore.
Saves are synchronous: each returns after the checkpoint is committed on disk (Orbax writes a
temporary directory and renames it, so a run killed mid-save leaves the previous one intact).
"""

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from genfm.experiments.errors import CheckpointError


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _from_saveable(saved, like):
  return jax.tree.map(lambda s, l: jax.random.wrap_key_data(s, impl=jax.random.key_impl(l))
                      if _is_key(l) else s, saved, like)


class Checkpointer:
  """`save(step, state, data_state)` / `restore_latest(abstract_state)` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, max_to_keep: int = 2, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_saveable(state)),
        data=ocp.args.JsonSave(data_state)))

  def _restore(self, step: int, abstract_state):
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        _to_saveable(abstract_state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return _from_saveable(restored["state"], abstract_state), restored["data"]

  def restore_latest(self, abstract_state, legacy=None) -> tuple[Any, dict] | None:
    """(state, data_state) of the newest checkpoint, or None when there is none.

    `legacy` = (to_old, from_old) reads a checkpoint written in an older layout of the same
    state: tried when the current layout fails, with `to_old(abstract_state)` as the target.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    try:
      try:
        return self._restore(step, abstract_state)
      except Exception:  # noqa: BLE001 — maybe the older layout; else re-raise below
        old = legacy[0](abstract_state) if legacy else None
        if old is None:
          raise
        try:
          state, data_state = self._restore(step, old)
        except Exception:  # noqa: BLE001
          pass
        else:
          return legacy[1](state, abstract_state), data_state
        raise
    except Exception:  # noqa: BLE001 — any failure to read means the files are damaged
      path = os.path.join(self.directory, str(step))
      older = [s for s in self._manager.all_steps() if s < step]
      where = (f"Delete {path} to resume from the checkpoint at step {max(older)}"
               if older else f"Delete {path} to start again from step 0")
      raise CheckpointError(
          f"the checkpoint at {path} could not be read: it is corrupt, truncated, or from a "
          f"different model. {where}, or use a fresh --workdir.") from None

  def close(self):
    self._manager.close()


def json_safe(state: dict) -> dict:
  """A grain iterator state made JSON-serialisable (numpy scalars → Python)."""
  return json.loads(json.dumps(state, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
