"""Test setup shared by every file.

Without CUDA, Triton kernels run through Triton's CPU interpreter: TRITON_INTERPRET must be set before any
kernel module is imported (the @triton.jit decorator reads it), so it is set here, at collection time.
Tests marked `gpu` are skipped without CUDA.
The README's command runs the suite under pytest-xdist (`-n auto`): the worker count is capped below, and each
worker gets its share of the cores as torch threads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

# Under xdist, N workers each running torch's default (one thread per core) would oversubscribe the cores N times;
# most of the suite is single-threaded Python in Triton's interpreter anyway.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without pytest-xdist installed, pytest must not reject it
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 8 (each imports torch and transformers, ~0.5 GB, and more
    workers only add contention on the torchrun and AOT tests, which start their own processes), 2 with CUDA
    (the workers share one device)."""
    cap = 2 if torch.cuda.is_available() else 8
    return max(1, min(os.cpu_count() or 1, cap))


def _old_interpreter() -> str | None:
    """Why this Triton's CPU interpreter cannot run the kernel tests, or None.

    Triton 3.6's interpreter converts 1-element arrays with int(), which NumPy >= 2.4 refuses ("only 0-dimensional
    arrays can be converted"), and even with an older NumPy its fp32 tl.dot misses the float64-oracle bounds.
    Triton 3.6 is still a supported GPU version: tests/test_aot.py compiles every kernel with it, and on a GPU the
    kernels run compiled, not interpreted.
    """
    if torch.cuda.is_available():
        return None
    try:
        import triton
    except ImportError:
        return None
    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    if (major, minor) >= (3, 8):
        return None
    return (
        f"triton {triton.__version__}'s CPU interpreter cannot run these tests (needs triton >= 3.8 or a CUDA "
        "device); kernel compilation for this version is covered by tests/test_aot.py"
    )


def pytest_report_header(config):
    import transformers
    import triton

    return (
        f"torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU: Triton interpreter (TRITON_INTERPRET=1)'}"
    )


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    old = _old_interpreter()
    skip_old = pytest.mark.skip(reason=old or "")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
        elif old is not None and item.path.name != "test_aot.py":
            item.add_marker(skip_old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
