"""Hostile input: fuzzing from our own OpenAPI document, injection, absurd numbers, slow bodies,
auth, and secrets that must never leak. Nothing hostile is enqueued or reaches Prometheus."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
import redis
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import AUTH, TOKEN
from tests.support.chat_receivers import Answer, ChatReceivers
from tests.support.proxy import FaultyProxy

PROMETHEUS_TOKEN = "prom-bearer-7f3c9e1d2b"
DINGTALK_SECRET = "SEC-dingtalk-5a6b7c8d9e"
CHAT_PATH_SECRET = "T000/B000/hook-secret-4d5e6f"


@pytest.fixture(scope="module")
def hostile(stack_factory, prometheus, tmp_path_factory):
    """A stack whose Prometheus needs a bearer token and whose chat targets carry secrets."""
    work = tmp_path_factory.mktemp("hostile")
    with FaultyProxy(prometheus.url) as proxy, ChatReceivers(dingtalk_secret=DINGTALK_SECRET) as rx:
        targets = {
            "targets": [
                {"name": "slack", "kind": "slack", "url": f"{rx.url('slack')}/{CHAT_PATH_SECRET}"},
                {"name": "ding", "kind": "dingtalk", "url": rx.url("dingtalk"),
                 "secret_env": "DING_SECRET"},
            ]
        }  # fmt: skip
        (work / "targets.yaml").write_text(yaml.safe_dump(targets))
        stack = stack_factory(
            "hostile",
            prometheus_url=proxy.url,
            workers=1,
            settings={
                "ROLLOUT_ANALYZER_PROMETHEUS_TOKEN": PROMETHEUS_TOKEN,
                "ROLLOUT_ANALYZER_CHAT_TARGETS_FILE": str(work / "targets.yaml"),
                "ROLLOUT_ANALYZER_BODY_TIMEOUT_SECONDS": "1",
                "DING_SECRET": DINGTALK_SECRET,
            },
        )
        yield stack, proxy, rx


def queue_state(stack) -> tuple[int, int]:
    client = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    prefix = stack.env["ROLLOUT_ANALYZER_KEY_PREFIX"]
    claims = sum(1 for _ in client.scan_iter(f"{prefix}{{*}}claim:*"))
    records = sum(1 for _ in client.scan_iter(f"{prefix}{{*}}analysis:*"))
    return claims, records


GOOD = {"service": "good", "namespace": "shop", "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"overrides": {"slo": 1e400}}, "overrides.slo"),
        ({"overrides": {"min_requests": -1}}, "overrides.min_requests"),
        ({"overrides": {"alpha": 10**400}}, "overrides.alpha"),
        ({"window": "-5m"}, "window"),
        ({"window": "10y"}, "window"),
        ({"window": "99999999999999999999h"}, "window"),
        ({"end": "0001-01-01T00:00:00Z"}, "end"),
        ({"end": "1e30"}, "end"),
        ({"service": "ｇｏｏｄ"}, "service"),  # full-width look-alikes
        ({"canary": "6d4f8b7c9а"}, "canary"),  # Cyrillic a
        ({"service": "good\u202e"}, "service"),  # bidi override
        ({"policy": "../../etc/passwd"}, "policy"),
        ({"overrides": {"x" * 41: 1}}, "overrides.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ({"overrides": {f"o{i}": 1 for i in range(40)}}, "overrides"),
    ],
)
def test_absurd_values_are_refused_and_nothing_is_enqueued(hostile, patch, field):
    stack, proxy, _ = hostile
    before, queries = queue_state(stack), len(proxy.requests)
    with stack.client() as client:
        answer = client.post("/v1/analyze", content=json.dumps(GOOD | patch, allow_nan=True))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert queue_state(stack) == before
    assert len(proxy.requests) == queries


def test_nan_literals_are_refused(hostile):
    stack, _, _ = hostile
    with stack.client() as client:
        body = json.dumps(GOOD)[:-1] + ', "overrides": {"slo": NaN}}'
        answer = client.post("/v1/analyze", content=body)
    assert answer.status_code == 422
    assert answer.json()["field"] == "overrides.slo"


def test_a_slow_loris_body_is_cut_off(hostile):
    stack, _, _ = hostile
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"service": ')
        began = time.monotonic()
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408")
    assert time.monotonic() - began < 5


def refused_by_code(stack) -> dict[str, float]:
    """The webhook's own request counter, summed per status code."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith("rollout_analyzer_http_requests_total{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = counts.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_bodies_refused_by_the_limits_are_logged_and_counted_like_the_rest(hostile):
    stack, _, _ = hostile
    before = refused_by_code(stack)
    with stack.client() as client:
        too_big = client.post("/v1/analyze", content=b'{"service": "' + b"x" * 70_000 + b'"}')
    assert too_big.status_code == 413
    # The one error shape, written as every other error answer is (compact JSON).
    assert too_big.content == (
        b'{"error":"body: is larger than 65536 bytes","field":"body",'
        b'"message":"is larger than 65536 bytes"}'
    )
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"PUT /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 50\r\n\r\n"
        )
        sock.sendall(head.encode() + b"{")
        assert sock.recv(4096).decode().startswith("HTTP/1.1 408")
    after = refused_by_code(stack)
    assert after.get("413", 0) - before.get("413", 0) == 1
    assert after.get("408", 0) - before.get("408", 0) == 1
    lines = [json.loads(line) for line in stack.webhook.logs().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("status") in (408, 413)]
    assert {(line["method"], line["status"]) for line in refused} >= {("POST", 413), ("PUT", 408)}
    assert all(line["rejected"].startswith("body: ") for line in refused)


def test_every_v1_route_refuses_missing_wrong_and_almost_right_tokens(hostile):
    stack, _, _ = hostile
    routes = [
        ("POST", "/v1/analyze", GOOD),
        ("PUT", "/v1/analyze", GOOD),
        ("GET", "/v1/analyze?" + "&".join(f"{k}={v}" for k, v in GOOD.items()), None),
        ("GET", "/v1/analyses/" + "0" * 32, None),
        ("GET", "/v1/dead-letters", None),
        ("POST", "/v1/dead-letters/retry", None),
        ("POST", "/v1/dead-letters/" + "0" * 32 + "/retry", None),
        ("DELETE", "/v1/dead-letters/" + "0" * 32, None),
        ("POST", "/v1/events/argo-rollouts", {"event": "rollout-aborted", "rollout": "a",
                                              "namespace": "b"}),
    ]  # fmt: skip
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
             {"Authorization": f"Basic {TOKEN}"}]  # fmt: skip
    for method, path, payload in routes:
        for headers in wrong:
            answer = httpx.request(method, stack.url + path, json=payload, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert TOKEN not in answer.text


def test_secrets_never_leak(hostile):
    stack, proxy, rx = hostile
    rx.always("slack", Answer.status_only(500))  # a dead letter too
    with stack.client() as client:
        errors = {"service": "errors", "namespace": "shop", "canary": "6d4f8b7c9a",
                  "baseline": "5c8d7e6f4b", "rollout": "errors", "revision": "1"}  # fmt: skip
        result = client.post("/v1/analyze", json=errors).json()
        deadline = time.monotonic() + 60
        letters: list = []
        while time.monotonic() < deadline and not letters:
            time.sleep(0.5)
            letters = client.get("/v1/dead-letters").json()["dead_letters"]
        stored = client.get(f"/v1/analyses/{result['analysis_id']}").text
        proxy.faults.status = 500
        failed = client.post("/v1/analyze", json=errors | {"end": str(time.time() - 5)}).text
        proxy.faults.status = None
    assert letters, "the failing slack delivery was not dead-lettered"
    assert any(h.get("Authorization") == f"Bearer {PROMETHEUS_TOKEN}" for h in proxy.headers)
    assert rx.accepted("dingtalk")  # the signed message went out
    seen = {
        "answer": json.dumps(result),
        "stored": stored,
        "dead letters": json.dumps(letters),
        "error text": failed,
        "messages": json.dumps([m.body for m in rx.accepted("dingtalk")]),
        "logs": stack.webhook.logs() + "".join(w.logs() for w in stack.workers),
        "metrics": httpx.get(f"{stack.url}/metrics").text,
    }
    for secret in (TOKEN, PROMETHEUS_TOKEN, DINGTALK_SECRET, CHAT_PATH_SECRET):
        for where, text in seen.items():
            assert secret not in text, f"{secret[:6]}… leaked into {where}"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzing_the_documented_api_finds_no_server_error(hostile, mode):
    """Every operation of /openapi.json, valid and invalid examples (bounded): no 5xx but the
    documented ones, and every answer matches its documented status, content type and schema."""
    stack, proxy, _ = hostile
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation the schema does not describe
        operations.append(result.ok())
    assert len(operations) >= 6
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    calls = 0
    unbreakable: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case) -> None:
            nonlocal calls
            calls += 1
            response = case.call_and_validate(base_url=stack.url, headers=AUTH, checks=checks)
            assert response.status_code not in (500, 501)

        try:
            fuzz()
        except Unsatisfiable:
            # No input to break (e.g. /healthz): nothing negative exists to send.
            assert mode is GenerationMode.NEGATIVE
            unbreakable.append(operation.path)
    # Every /v1 operation takes input, so every one was fuzzed with broken input too.
    assert calls >= 50
    assert not [path for path in unbreakable if path.startswith("/v1/")], unbreakable
    # Whatever the fuzzer sent, PromQL only ever saw validated values as escaped literals.
    assert not any("vector(1)" in path for path in proxy.requests)
