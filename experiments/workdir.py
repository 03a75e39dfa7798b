"""The run's directory: created (or refused) in one line, one writer at a time, its config
recorded once the config is known to be valid, and compared on every rerun.

Files it owns in `--workdir`:
  config.json  the run's config, written atomically (temp file + rename) only after the task
               and its models were built from it: a typo in a data set or model name fails
               before anything is recorded, so the corrected command is not refused.
  .lock        {"pid", "host", "since"} of the launcher writing here, created with O_EXCL. A
               second launcher on the same workdir is refused while that process lives; a lock
               left by a killed run (its pid gone on this host) is taken over, so a resume is
               never blocked. A lock from another host cannot be checked and is reported.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

from absl import logging

from genfm.experiments.errors import CheckpointError

# Keys a resumed run may change; any other difference means the workdir holds another run.
RESUMABLE_KEYS = ("num_train_steps", "learning_rate", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps", "fid_classifier_config",
                  # a checkpoint restores under any mesh (Orbax reshards to the new layout)
                  "mesh.data", "mesh.fsdp", "mesh.model")
# Keys added to every config after runs were recorded without them, with the value that gives
# those runs' behaviour: a workdir whose config.json lacks one resumes if the value is this.
ADDED_KEYS = {"ema_decay": 0.0, "diffusion.clip_x0": 0.0, "init_from": "", "init_from_step": 0,
              "trainable": "", "mesh.data": -1, "mesh.fsdp": 1, "mesh.model": 1,
              "model.remat": "none"}
LOCK = ".lock"


def create(workdir: str) -> None:
  """`workdir` exists as a writable directory after this, or a one-line CheckpointError."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(f"--workdir={workdir} is a file, not a directory; give a directory "
                          "path (it is created if missing)")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise CheckpointError(f"--workdir={workdir} cannot be created ({e.strerror}); give a path "
                          "in a directory you can write") from None
  if not os.access(workdir, os.W_OK):
    raise CheckpointError(f"--workdir={workdir} is not writable; give a directory you can write")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def recorded_config(workdir: str) -> dict | None:
  """The config.json of the run in `workdir` as a dict, None if it has none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    raise CheckpointError(
        f"{path} cannot be read (truncated or not JSON). If you know the run's config, delete "
        "the file and rerun that command to resume; otherwise use a new --workdir") from None


def compare_config(config, workdir: str) -> list[str]:
  """Refuse a workdir whose recorded config differs outside RESUMABLE_KEYS; returns the
  resumable keys that changed, as 'key: old → new' strings."""
  before = recorded_config(workdir)
  if before is None:
    return []
  b = _flatten(json.loads(config.to_json_best_effort()))
  a = {**{k: v for k, v in ADDED_KEYS.items() if k in b}, **_flatten(before)}
  changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  differ = [k for k in changed if k not in RESUMABLE_KEYS]
  if differ:
    shown = ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in differ[:6])
    raise CheckpointError(
        f"--workdir={workdir} holds a run of a different config ({shown}). Use a new --workdir "
        f"for this config, or rerun with the original one to resume. Only "
        f"{', '.join(RESUMABLE_KEYS)} may change on resume.")
  return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in changed]


def record_config(config, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(json.loads(config.to_json_best_effort()), indent=2))
  os.replace(tmp, path)          # atomic: a kill never leaves half a config


def check_workdir(config, workdir: str) -> None:
  """Refuse a workdir that holds a run of a different config; record this config otherwise."""
  compare_config(config, workdir)
  record_config(config, workdir)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM           # exists, owned by someone else
  return True


class Lock:
  """`with Lock(workdir):` — this process is the only launcher writing to `workdir`."""

  def __init__(self, workdir: str):
    self.path, self.workdir, self._held = os.path.join(workdir, LOCK), workdir, False

  def __enter__(self):
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return self
    raise CheckpointError(f"--workdir={self.workdir}: could not take its lock {self.path}")

  def _take_over_if_stale(self) -> None:
    try:
      with open(self.path) as f:
        owner = json.load(f)
      pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
      owner, pid, host = None, None, None       # a lock cut short by a kill: stale
    if owner is not None and host == socket.gethostname() and _alive(pid) and pid != os.getpid():
      since = time.strftime("%H:%M:%S", time.localtime(owner.get("since", 0)))
      raise CheckpointError(
          f"--workdir={self.workdir} is in use by another genfm run (pid {pid}, since {since}); "
          "wait for it to finish or stop it, or use another --workdir")
    if owner is not None and host != socket.gethostname():
      raise CheckpointError(
          f"--workdir={self.workdir} is locked by a run on host {host} (pid {pid}); if no run "
          f"is alive there, delete {self.path} and rerun")
    logging.warning("removing the stale lock of a run that is gone (%s)", owner or "unreadable")
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def __exit__(self, *exc):
    if self._held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self._held = False
    return False
