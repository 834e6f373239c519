"""The OpenAPI document may only gain additions: every operation and schema of the recorded
document (tests/snapshots/openapi-baseline.json) is still served, unchanged.

After adding a route on purpose, re-record with
`python -m tests.unit.test_openapi_stable > tests/snapshots/openapi-baseline.json`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from webhooks.app import create_app
from worker.settings import Settings

BASELINE = Path(__file__).resolve().parents[1] / "snapshots" / "openapi-baseline.json"


def served_openapi() -> dict[str, Any]:
    app = create_app(Settings(api_token="t"))

    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            answer = await client.get("/openapi.json")
            answer.raise_for_status()
            document: dict[str, Any] = answer.json()
            return document

    return asyncio.run(fetch())


def contained(recorded: Any, served: Any, where: str = "") -> list[str]:
    """Where `served` differs from `recorded` other than by additions: new keys in objects are
    additions (a route, a response, an optional property); anything else is a change."""
    if isinstance(recorded, dict):
        if not isinstance(served, dict):
            return [where or "/"]
        return [
            problem
            for key, value in recorded.items()
            for problem in (
                contained(value, served[key], f"{where}/{key}")
                if key in served
                else [f"{where}/{key} is gone"]
            )
        ]
    if isinstance(recorded, list):
        if not isinstance(served, list) or len(served) != len(recorded):
            return [f"{where} changed"]
        return [p for i, v in enumerate(recorded) for p in contained(v, served[i], f"{where}/{i}")]
    return [] if recorded == served else [f"{where}: {recorded!r} became {served!r}"]


def test_the_served_document_only_adds_to_the_recorded_one() -> None:
    baseline = json.loads(BASELINE.read_text(encoding="utf-8"))

    assert contained(baseline, served_openapi()) == []


def test_a_change_is_told_from_an_addition() -> None:
    recorded = {"paths": {"/a": {"get": {"responses": {"200": {}}, "tags": ["x"]}}}}
    added = {"paths": {"/a": {"get": {"responses": {"200": {}, "422": {}}, "tags": ["x"]}},
                       "/b": {}}}  # fmt: skip
    assert contained(recorded, added) == []
    assert contained(recorded, {"paths": {}}) == ["/paths//a is gone"]
    assert contained(recorded, {"paths": {"/a": {"get": {"responses": {}, "tags": ["y"]}}}}) == [
        "/paths//a/get/responses/200 is gone",
        "/paths//a/get/tags/0: 'x' became 'y'",
    ]


if __name__ == "__main__":
    print(json.dumps(served_openapi(), indent=1, sort_keys=True))
