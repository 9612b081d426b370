"""Shared test helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(relpath)``: a script of ``benchmarks/`` (not a package) imported as a module, by path."""

    def load(relpath: str):
        path = REPO / "benchmarks" / relpath
        spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (tiny models gain nothing from more; a shared CPU loses a
    lot); the module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
