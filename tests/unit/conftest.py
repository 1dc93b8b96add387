"""Fixtures of the unit tests: an in-memory database, cache and task queue, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The test modules import `fakes` by name; make that work whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeIdempotencyCache, FakeStore, RecordingEnqueue


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def cache() -> FakeIdempotencyCache:
    return FakeIdempotencyCache()


@pytest.fixture
def enqueue(store: FakeStore) -> RecordingEnqueue:
    return RecordingEnqueue(store)
