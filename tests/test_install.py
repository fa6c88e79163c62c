"""Installing and importing: the top-level kernels/ folder shadows nothing (issue 24), the suite runs without xdist.

The name `kernels` belongs to Hugging Face's kernel-hub package, which transformers >= 5.25 imports. Our kernels/
folder has no __init__.py: with the repo root first on sys.path (python -m, pytest, xdist workers, scripts run from
the root) it is only a namespace-package candidate, and the regular package in site-packages wins. These tests run
real interpreters from the repo root, as a user would.
"""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, cwd: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def test_kernels_folder_has_no_init():
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py")), (
        "kernels/__init__.py makes the folder a regular package that shadows Hugging Face's `kernels` whenever the "
        "repo root is on sys.path; siglip2.kernels' __init__ is siglip2/kernels/__init__.py"
    )


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_import_kernels_is_hugging_faces_and_transformers_imports(cwd, tmp_path):
    where = ROOT if cwd == "root" else str(tmp_path)
    out = _python(
        "import kernels, transformers, siglip2.kernels as ours\n"
        "from transformers import Siglip2Model\n"
        "print(kernels.__file__); print(ours.varlen_attention.__module__); print(transformers.__version__)",
        where,
    )
    hf_file, ours_module, _version = out.splitlines()[-3:]
    assert "site-packages" in hf_file and not hf_file.startswith(os.path.join(ROOT, "kernels")), hf_file
    assert ours_module == "siglip2.kernels.attention"


def test_python_dash_m_from_root_keeps_hugging_faces_kernels():
    """`python -m siglip2 ...` puts the repo root first on sys.path, like `python -m pytest`."""
    res = subprocess.run(
        [sys.executable, "-m", "siglip2", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_wheel_ships_the_package_under_siglip2(tmp_path):
    """A built wheel has siglip2/kernels/ with its __init__ and modules, and no top-level `kernels`."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"siglip2/kernels/__init__.py", "siglip2/kernels/attention.py", "siglip2/kernels/py.typed"} <= names
    assert not any(n.startswith("kernels/") for n in names)
    # every module of every subpackage (pyproject lists the packages one by one)
    ours = {
        os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
        for top in ("siglip2", "kernels")
        for d, _, files in os.walk(os.path.join(ROOT, top))
        for f in files
        if f.endswith(".py")
    }
    want = {("siglip2/" + n if n.startswith("kernels/") else n) for n in ours}
    assert want <= names, sorted(want - names)


def test_suite_collects_without_xdist():
    """`pytest -q` works with or without pytest-xdist (conftest's xdist hook is optional)."""
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "--collect-only", "-q", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
