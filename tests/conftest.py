"""Shared fixtures: tiny deterministic data and models, and the location of the real sample photos."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mem_toolkit.data.shapes import make_shapes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config) -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_shapes():
    """48 images x 5 captions at 64 px: enough for a batch of real rows, fast to protect."""
    return make_shapes(48, 64, seed=3, name="tiny")


@pytest.fixture()
def shared_data() -> Path:
    """The real sample photos beside the repository; skips where they are absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (only present on the project's machines)")
    return SHARED_DATA
