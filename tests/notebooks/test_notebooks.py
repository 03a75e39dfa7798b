"""The Colab notebooks (notebooks/*.ipynb) run top to bottom on CPU and keep their promise.

Each notebook is executed with nbclient in a fresh ipykernel running THIS interpreter (a
kernelspec written to a temp dir, so the kernel is the venv's Python whatever `python3` is on
PATH), with GENFM_NOTEBOOK_SMALL=1 (tiny sizes, a few steps) and 2 virtual CPU devices, so the
mesh, the batch split and the padded eval batches of the multi-device path run in CI too. The
last cell of each notebook prints `RESULT <metric> <value> <op> <bound>` lines; the bounds are
restated here, so a notebook cannot loosen its own promise. Each run prints its wall time and
the kernel's CPU seconds (the load-independent cost; ~10-40 CPU-s per notebook).
"""

import json
import operator
import pathlib
import re
import sys
import time

import nbformat
import psutil  # an ipykernel dependency
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
BADGE = "https://colab.research.google.com/github/genfm/genfm/blob/main/notebooks/{}.ipynb"
CELL_TIMEOUT_S = 120
# metric → (op, bound) of the SMALL run, per notebook: every one must be printed and hold.
EXPECT = {
    "quickstart": {"test_accuracy": (">=", 0.85)},
    "llm": {"validation_loss": ("<=", 3.0), "test_exact_match": (">=", 0.2)},
    "diffusion": {"test_loss": ("<=", 0.6)},
    "kernels": {"attention_max_abs_err": ("<=", 1e-5), "attention_grad_max_abs_err": ("<=", 1e-5),
                "rmsnorm_max_abs_err": ("<=", 1e-5), "rmsnorm_grad_max_rel_err": ("<=", 1e-5)},
}
OPS = {"<=": operator.le, ">=": operator.ge}
RESULT = re.compile(r"^RESULT (\w+) (\S+) (<=|>=) (\S+)$", re.M)


def test_every_notebook_is_listed_and_expected():
  assert set(NAMES) == set(EXPECT) == {"quickstart", "llm", "diffusion", "kernels"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_notebook_has_no_outputs_and_a_colab_badge(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(c.outputs == [] and c.execution_count is None for c in code)
  assert BADGE.format(path.stem) in nb.cells[0].source  # the first cell opens it in Colab
  install, setup = code[0].source, code[1].source
  assert "!git clone" in install and "GENFM_VENV=0 bash install.sh" in install
  assert 'SMALL = os.environ.get("GENFM_NOTEBOOK_SMALL") == "1"' in setup
  assert "RESULT" in code[-1].source


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
  """A kernelspec running this interpreter's ipykernel with the CI environment."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("kernels")
  spec_dir, tmp = root / "genfm-notebook-test", root / "tmp"
  spec_dir.mkdir()
  tmp.mkdir()
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "genfm notebook test", "language": "python",
      "env": {"GENFM_NOTEBOOK_SMALL": "1", "MPLBACKEND": "agg",
              "TMPDIR": str(tmp),  # the notebooks' tempfile workdirs land under pytest's tmp
              "JAX_PLATFORMS": "cpu",  # CPU even on a GPU host: the interpreter's tolerances
              "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
              # CI speed only: the rbg PRNG compiles each eager initializer ~2x faster on CPU
              # than threefry (the U-Net's init halves); the default stream is tested elsewhere.
              "JAX_DEFAULT_PRNG_IMPL": "rbg"}}))
  return KernelSpecManager(kernel_dirs=[str(root)]), "genfm-notebook-test", tmp


def _run(path, kernel, cwd):
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  ksm, name, _ = kernel
  nb = nbformat.read(path, as_version=4)
  km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
  cpu = []

  def kernel_cpu_seconds(**_):  # after each cell, while the kernel still lives
    t = psutil.Process(km.provisioner.process.pid).cpu_times()
    cpu.append(t.user + t.system)

  client = NotebookClient(nb, km=km, kernel_name=name, timeout=CELL_TIMEOUT_S,
                          allow_errors=False, resources={"metadata": {"path": str(cwd)}},
                          on_cell_executed=kernel_cpu_seconds)
  client.execute()  # raises CellExecutionError naming the cell on the first error
  return nb, cpu[-1]


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs_top_to_bottom_and_keeps_its_promise(path, kernel, tmp_path):
  t0 = time.time()
  nb, cpu = _run(path, kernel, tmp_path)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert not [o for c in code for o in c.outputs if o.output_type == "error"]
  got = {m[1]: (float(m[2]), m[3], float(m[4])) for m in RESULT.finditer(_text(code[-1]))}
  assert got.keys() == EXPECT[path.stem].keys(), _text(code[-1])
  for metric, (op, bound) in EXPECT[path.stem].items():
    value, printed_op, printed_bound = got[metric]
    assert (printed_op, printed_bound) == (op, bound), (metric, got[metric])
    assert OPS[op](value, bound), (metric, value, op, bound)
  setup = _text(code[1])
  assert "backend cpu: 2 x cpu; SMALL = True; workdirs under " + str(kernel[2]) in setup, setup
  print(f"{path.stem}: {time.time() - t0:.1f} s wall, kernel {cpu:.1f} CPU-s, "
        + ", ".join(f"{k} {v[0]:.4g}" for k, v in got.items()))
