"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

# The parity fixture made with the original Groma code lives next to the repository:
# /work/main (repo) and /work/shared/fixtures/groma_official_tiny.
OFFICIAL_TINY_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "groma_official_tiny"


def official_tiny_fixture() -> Path:
    """Path of ``../shared/fixtures/groma_official_tiny``; skips the calling test if it is missing."""
    if not (OFFICIAL_TINY_FIXTURE / "checkpoint" / "tokenizer.model").is_file():
        pytest.skip(f"parity fixture not found at {OFFICIAL_TINY_FIXTURE} (expected ../shared/fixtures next to the repo)")
    return OFFICIAL_TINY_FIXTURE


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
    """The groma_official_tiny fixture directory (test skipped if absent)."""
    return official_tiny_fixture()
