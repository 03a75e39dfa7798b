"""The one launcher for every genfm experiment.

    python -m genfm.experiments.run --config=experiments/configs/<name>.py[:variant] \
        --workdir=DIR [--config.key=value ...]

(also installed as the console script `genfm-run`). Rerunning the same command with the same
workdir resumes from its latest checkpoint. Errors the user can fix (unknown config keys or
choices, missing data sets, a workdir of another run, a corrupt checkpoint, a NaN loss) print one
line saying what to do and exit with status 2.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host: "
                  "TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keep our progress lines readable: only warnings and errors from Orbax / grain / TFDS."""

  def filter(self, record):
    noisy = any(lib in record.pathname for lib in ("orbax", "grain", "tensorflow_datasets", "xla_bridge"))
    return record.levelno >= py_logging.WARNING or not noisy


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # after flag parsing so --help is fast

  if FLAGS.distributed:
    jax.distributed.initialize()
  from genfm.experiments.errors import UserError
  from genfm.experiments.train import train_and_evaluate

  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"genfm: error: {e}", file=sys.stderr)
    sys.exit(2)


def main():
  """Console-script entry point (`genfm-run`)."""
  app.run(_main)


if __name__ == "__main__":
  main()
