"""Fixtures of the end-to-end webhook tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest


@pytest.fixture
def endpoints(client: httpx.Client) -> Iterator[Any]:
    """Creates endpoints and deletes them after the test, so later tests get no traffic."""
    created: list[str] = []

    def create(url: str, **fields: Any) -> dict[str, Any]:
        response = client.post("/v1/webhook-endpoints", json={"url": url, **fields})
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
        return response.json()

    yield create
    for endpoint_id in created:
        deleted = client.delete(f"/v1/webhook-endpoints/{endpoint_id}")
        # Deleted now, or by the test already; anything else leaves later tests its traffic.
        assert deleted.status_code in (200, 404), deleted.text
