"""Shared test fixtures: where the real photos are, and quiet TensorFlow logs."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI lays ../shared beside the checkout; the photos are never copied into the repo.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not found at {SHARED_DATA}")
    return SHARED_DATA
