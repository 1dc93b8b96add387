"""Fixtures of the unit tests: an in-memory database, cache, wake-ups and metrics, nothing
else (no server, no network)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import `fakes` by name; make that work whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from fakes import (
    LIMITATIONS_HIT,
    FakeIdempotencyCache,
    FakeStore,
    RecordingMetrics,
    RecordingWake,
)


@pytest.fixture(autouse=True)
def _fake_stayed_faithful() -> Iterator[None]:
    """A test that made the fake do what it cannot mirror proves nothing about PostgreSQL."""
    LIMITATIONS_HIT.clear()
    yield
    assert LIMITATIONS_HIT == [], "the test went beyond what the fake can mirror"


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def cache() -> FakeIdempotencyCache:
    return FakeIdempotencyCache()


@pytest.fixture
def wake(store: FakeStore) -> RecordingWake:
    return RecordingWake(store)


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()
