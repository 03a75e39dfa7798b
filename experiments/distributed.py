"""Multi-process runs: the launcher's `jax.distributed` setup, and the commands to start one.

One run, many processes (hosts): every process runs the same launcher command, plus its own
`--process_id`; `jax.distributed.initialize` connects them through a coordinator (process 0's
address), after which `jax.devices()` lists the devices of every process and the loop's mesh
spans them all. Each process reads only its slice of every global batch (`data/pipeline.py`:
one shuffled stream of all records, the same for any process count), `to_global` assembles the
global batch with `jax.make_array_from_process_local_data`, and XLA (GSPMD, 2105.04663) inserts the
cross-host collectives. Process 0 writes metrics, figures and summary.json; every process takes
part in each Orbax checkpoint, so the workdir must be ONE directory that every host sees (NFS,
a gcsfuse-mounted bucket, or the local disk when all processes share a machine).

Commands
--------
Two processes on one machine (what tests/experiments/test_experiments_multiprocess.py runs;
CPU collectives go through gloo over loopback):

    python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py:smoke \\
        --workdir=runs/mlp_2proc --coordinator_address=127.0.0.1:12355 \\
        --num_processes=2 --process_id=0 &
    python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py:smoke \\
        --workdir=runs/mlp_2proc --coordinator_address=127.0.0.1:12355 \\
        --num_processes=2 --process_id=1

Two hosts (say 10.0.0.1 and 10.0.0.2, the workdir on a file system both mount, port 12355 open
between them) — the same command on each, differing only in `--process_id`:

    # on 10.0.0.1 (process 0 hosts the coordinator):
    python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py \\
        --workdir=/shared/runs/fashion_mlp --coordinator_address=10.0.0.1:12355 \\
        --num_processes=2 --process_id=0
    # on 10.0.0.2:
    python -m genfm.experiments.run --config=experiments/configs/fashion_mlp.py \\
        --workdir=/shared/runs/fashion_mlp --coordinator_address=10.0.0.1:12355 \\
        --num_processes=2 --process_id=1

A TPU pod slice (e.g. v4-32: 4 hosts): `--distributed` lets JAX read the coordinator, the
process count and this host's id from the TPU metadata. Install on every worker once, then run
the same command on every worker:

    gcloud compute tpus tpu-vm ssh MY_TPU --zone=MY_ZONE --worker=all --command="\\
        git clone <this repo's URL> genfm && cd genfm && ./install.sh \\
        && .venv/bin/pip install -U 'jax[tpu]'"
    gcloud compute tpus tpu-vm ssh MY_TPU --zone=MY_ZONE --worker=all --command="\\
        cd genfm && .venv/bin/python -m genfm.experiments.run \\
        --config=experiments/configs/fashion_mlp.py --config.batch_size=256 \\
        --config.eval_batch_size=2000 --workdir=/mnt/shared/runs/fashion_mlp_pod --distributed"

(`config.batch_size` and `config.eval_batch_size` are global and must divide by the device
count — 16 on a v4-32 — and the process count; the launcher names the key to change otherwise.)

`--distributed` also auto-detects SLURM (`srun python -m genfm.experiments.run ...
--distributed`). The run's numbers do not depend on the process count: `config.batch_size` is
the global batch, each of P processes reads batch_size / P examples per step, and the losses of
a P-process run equal those of a one-process run to float round-off (the multiprocess test holds
P = 2 to 1e-5). Rerunning the same commands resumes from the newest checkpoint. Stop a run by
stopping every process: when process 0 (the coordinator) dies the others end at once ("JAX
distributed service detected fatal errors"); a process whose peer died otherwise waits in a
collective until JAX's heartbeat timeout (100 s).
"""

from __future__ import annotations

import re

from genfm.experiments.errors import ConfigError

# HOST:PORT with HOST a name or an IPv4 address, or [IPv6]:PORT.
_ADDRESS = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d+)$")


def check_address(address: str) -> None:
  """ConfigError unless `address` is HOST:PORT with a port in 1..65535."""
  m = _ADDRESS.match(address)
  if m is None or not 1 <= int(m["port"]) <= 65535:
    raise ConfigError(f"--coordinator_address={address!r} is not HOST:PORT; give process 0's "
                      "host and a free port in 1..65535 that every process can reach, e.g. "
                      "--coordinator_address=10.0.0.1:12355 (127.0.0.1:12355 on one machine)")


def explicit_args(coordinator_address: str | None, num_processes: int | None,
                  process_id: int | None) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` that the three launcher flags give,
  or None when none is given; a ConfigError (one line) for an incomplete or invalid set."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if all(v is None for v in given.values()):
    return None
  if coordinator_address is None and num_processes is not None and num_processes > 1:
    raise ConfigError(f"--num_processes={num_processes} needs --coordinator_address=HOST:PORT, "
                      "the address of process 0 that every process can reach (e.g. "
                      "127.0.0.1:12355 when all run on one machine)")
  missing = [f"--{k}" for k, v in given.items() if v is None]
  if missing:
    raise ConfigError(f"--coordinator_address, --num_processes and --process_id go together "
                      f"(or use --distributed on a TPU pod or SLURM); missing {', '.join(missing)}")
  if num_processes < 1:
    raise ConfigError(f"--num_processes must be >= 1; got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} is outside [0, {num_processes}): give each of "
                      f"the --num_processes={num_processes} processes its own id 0.."
                      f"{num_processes - 1}")
  check_address(coordinator_address)
  return given


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
  """Connects this process to the others before any JAX computation; returns whether it did.

  With the three explicit values, `jax.distributed.initialize(coordinator_address=...,
  num_processes=..., process_id=...)`; with only `auto` (the launcher's `--distributed`),
  `jax.distributed.initialize()`, which reads them from the TPU pod / SLURM environment.
  """
  args = explicit_args(coordinator_address, num_processes, process_id)
  if args is None and not auto:
    return False
  import jax  # pylint: disable=g-import-not-at-top

  # Cross-process collectives of the CPU backend: gloo (over TCP; loopback for one machine).
  # It is jax 0.10's default, set here so an older or changed default cannot leave a CPU run
  # without collectives; GPU and TPU backends ignore it. Must precede the backend's creation.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**(args or {}))
  except (RuntimeError, ValueError) as e:
    where = (f"the coordinator at {coordinator_address}" if args else
             "the cluster (--distributed found no TPU pod or SLURM environment, or its "
             "coordinator)")
    detail = " ".join(str(e).split())[:300]
    raise ConfigError(f"jax.distributed could not connect to {where}: {detail}. Start every "
                      "process with the same --coordinator_address and --num_processes and "
                      "distinct --process_id, process 0 on the coordinator's host") from e
  return True
