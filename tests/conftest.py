"""Shared test fixtures: where the real data lives, and skips with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (the shared data folder is only on project machines)")
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(0)
