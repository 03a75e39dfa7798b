"""The workspace's import contract: everything is `genfm.<area>.<module>`, nothing shadows the
PyPI packages named like our folders, and both the editable and the wheel install import every
module."""

import os
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AREAS = ("foundations", "transformers", "diffusion", "kernels", "experiments")


def package_dirs() -> dict[str, str]:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def source_modules() -> list[str]:
  """Every importable module under the area folders, as its `genfm.` dotted name."""
  mods = []
  for area in AREAS:
    for root, dirs, files in os.walk(os.path.join(REPO, area)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      rel = os.path.relpath(root, REPO).replace(os.sep, ".")
      for f in files:
        if f.endswith(".py") and f != "__init__.py":
          mods.append(f"genfm.{rel}.{f[:-3]}")
  return sorted(mods)


def test_area_folders_are_mapped_and_never_regular_packages():
  mapping = package_dirs()
  for area in AREAS:
    assert mapping[f"genfm.{area}"] == area
    assert not os.path.exists(os.path.join(REPO, area, "__init__.py")), (
        f"{area}/__init__.py would let `import {area}` resolve to our folder")
  # Every sub-folder holding Python files is listed, or a wheel would silently drop it.
  for area in AREAS:
    for root, dirs, files in os.walk(os.path.join(REPO, area)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      if any(f.endswith(".py") for f in files):
        rel = os.path.relpath(root, REPO)
        assert f"genfm.{rel.replace(os.sep, '.')}" in mapping, f"{rel} missing from pyproject"


@pytest.mark.parametrize("name", AREAS)
def test_installed_package_of_same_name_wins_from_repo_root(tmp_path, name):
  """A stand-in PyPI package (Hugging Face `transformers` on Colab) resolves before our folder,
  even with the repo root first on sys.path (python run from the repo root)."""
  standin = tmp_path / name
  standin.mkdir()
  (standin / "__init__.py").write_text("STANDIN = True\n")
  out = subprocess.run(
      [sys.executable, "-c", f"import {name}; print({name}.__file__); print({name}.STANDIN)"],
      cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == [str(standin / "__init__.py"), "True"]


def test_editable_install_resolves_every_module_to_the_repo():
  code = ("import importlib.util, sys\n"
          "for m in sys.argv[1:]:\n"
          "  s = importlib.util.find_spec(m); assert s and s.origin, m; print(s.origin)\n")
  mods = source_modules()
  out = subprocess.run([sys.executable, "-c", code, *mods], cwd="/", capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  origins = out.stdout.split()
  assert len(origins) == len(mods) and all(o.startswith(REPO) for o in origins)


@pytest.mark.slow
def test_wheel_install_imports_every_module(tmp_path):
  """Build a regular wheel, install it to a bare folder, and import every module from it."""
  wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(wheel_dir), REPO],
                         capture_output=True, text=True, cwd=tmp_path)
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = wheel_dir.glob("genfm-*.whl")
  inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                         str(site), str(wheel)], capture_output=True, text=True)
  assert inst.returncode == 0, inst.stderr[-3000:]
  code = ("import importlib, sys\n"
          "for m in sys.argv[1:]:\n"
          "  f = importlib.import_module(m).__file__\n"
          f"  assert f.startswith({str(site)!r}), (m, f)\n"
          "print('imported', len(sys.argv) - 1)\n")
  mods = source_modules()
  out = subprocess.run([sys.executable, "-c", code, *mods], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(site),
                                       "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == f"imported {len(mods)}"


LIBRARY_AREAS = ("foundations", "transformers", "diffusion", "kernels")


def test_library_areas_never_import_experiments():
  """The layering runs one way: the platform imports the library, never the reverse (the error
  classes live in foundations/errors.py for that). Checked on the source, imports anywhere in a
  file included (a function-local import would hide from an import-time check)."""
  import ast  # pylint: disable=g-import-not-at-top
  offenders = []
  for area in LIBRARY_AREAS:
    for root, _, files in os.walk(os.path.join(REPO, area)):
      for f in files:
        if not f.endswith(".py"):
          continue
        path = os.path.join(root, f)
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
          names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
          offenders += [f"{os.path.relpath(path, REPO)}: {n}" for n in names
                        if n.startswith("genfm.experiments")]
  assert not offenders, offenders


def test_workspace_map_names_only_files_that_exist():
  """Every `area/file.py` (and `tests/...py`) that WORKSPACE.md names exists, so the map never
  points at a module that was planned but not written."""
  import re  # pylint: disable=g-import-not-at-top
  text = open(os.path.join(REPO, "WORKSPACE.md"), encoding="utf-8").read()
  named = set(re.findall(r"`((?:%s|tests)/[\w/]+\.py)" % "|".join(AREAS), text))
  assert len(named) > 40, named                       # the table really was parsed
  missing = sorted(p for p in named if not os.path.isfile(os.path.join(REPO, p)))
  assert not missing, missing
