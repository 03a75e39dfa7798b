"""The one launcher for every genfm experiment.

    python -m genfm.experiments.run --config=experiments/configs/<name>.py[:variant] \
        --workdir=DIR [--config.key=value ...]

(also installed as the console script `genfm-run`). Rerunning the same command with the same
workdir resumes from its latest checkpoint. A multi-process run (several hosts, or several
processes on one) adds `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to
every process's command, or `--distributed` on a TPU pod / SLURM; experiments/distributed.py
gives the commands. Errors the user can fix (unknown config keys or
choices, missing data sets, a workdir of another run or in use by one, a corrupt checkpoint, a
NaN loss, a storage error such as a full disk) print one line saying what to do and exit with
status 2.
"""

import ast
import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from genfm.experiments.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host: "
                  "TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set).")
flags.DEFINE_string("coordinator_address", None, "Multi-process run: HOST:PORT of process 0, "
                    "reachable from every process (e.g. 127.0.0.1:12355 on one machine).")
flags.DEFINE_integer("num_processes", None, "Multi-process run: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's id in "
                     "[0, --num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keep our progress lines readable: only warnings and errors from Orbax / grain / TFDS."""

  def filter(self, record):
    noisy = any(lib in record.pathname for lib in ("orbax", "grain", "tensorflow_datasets", "xla_bridge"))
    return record.levelno >= py_logging.WARNING or not noisy


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from genfm.experiments import distributed  # after flag parsing so --help is fast

  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    # Before anything touches a JAX backend: the devices of every process join one mesh.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=FLAGS.distributed)
    from genfm.experiments.train import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (UserError, OSError) as e:
    print(f"genfm: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


def one_line(e: Exception) -> str:
  """The message the launcher prints for an error the user can act on."""
  if not isinstance(e, OSError) or isinstance(e, UserError):
    return str(e)
  # The machine, not the code: a full disk, a permission, a lost mount.
  where = f" ({e.filename})" if getattr(e, "filename", None) else ""
  return (f"the run stopped on a storage error: {e.strerror or e}{where}. Its checkpoints are "
          "written whole or not at all, so the last one is intact: fix the cause (free space, "
          "permissions) and rerun the same command to resume.")


def _config_keys(argv) -> list[str]:
  """Dotted keys of the config named by --config=path[:variant] (for error messages)."""
  import importlib.util

  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  path, _, variant = spec.partition(":")
  try:
    mod_spec = importlib.util.spec_from_file_location("_genfm_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
  except Exception:  # noqa: BLE001 — only used to enrich a message
    return []
  def walk(d, prefix=""):
    for k, v in d.items():
      yield from walk(v, f"{prefix}{k}.") if hasattr(v, "items") else [f"{prefix}{k}"]
  return sorted(walk(config))


def _parse_flags(argv):
  """absl flag parsing, with a bad `--config.key=value` override reported in one line."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    print(f"genfm: error: no config file {spec.partition(':')[0]!r}; configs live in "
          "experiments/configs/ (run from the repo root, or give an absolute path)",
          file=sys.stderr)
    sys.exit(2)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # ml_collections embeds the config file's own traceback in the message: keep its last line.
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    flag = lines[0].split(":", 1)[0] if lines else "flags"
    last = lines[-1].rstrip(".") if lines else type(e).__name__
    msg = last if last.startswith(flag) else f"{flag}: {last}"
    print(f"genfm: error: {msg}. See --helpshort.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    keys = _config_keys(argv)
    # ml_collections wraps a KeyError, whose str() is the repr of its message: unwrap, one line.
    reason = str(e)
    while len(reason) > 1 and reason[0] == reason[-1] and reason[0] in "'\"":
      try:
        reason = str(ast.literal_eval(reason))
      except (ValueError, SyntaxError):
        break
    reason = " ".join(reason.split())
    print(f"genfm: error: cannot apply config override(s) {overrides}: {reason}. Valid keys: "
          f"{', '.join(keys) if keys else '(see the config file)'}", file=sys.stderr)
    sys.exit(2)


def _show_our_flags_in_help() -> None:
  """`--help` / `--helpshort` list the key flags of the main module, which for the console
  script `genfm-run` is the script, not this module: register ours under its name too."""
  for name in ("config", "workdir", "distributed", "coordinator_address", "num_processes",
               "process_id"):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def main():
  """Console-script entry point (`genfm-run`)."""
  _show_our_flags_in_help()
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
