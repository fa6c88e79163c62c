"""Test setup shared by every file.

Without CUDA, Triton kernels run through Triton's CPU interpreter: TRITON_INTERPRET must be set before any
kernel module is imported (the @triton.jit decorator reads it), so it is set here, at collection time.
Tests marked `gpu` are skipped without CUDA.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
