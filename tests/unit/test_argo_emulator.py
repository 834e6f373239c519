"""The Argo Rollouts web-provider emulator agrees with Argo: the shared conformance cases, the
expr/JSONPath corner cases from Argo's own tests, real HTTP calls and the measurement loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support.argo import (
    ConditionError,
    JSONPathSyntaxError,
    Metric,
    NoMatch,
    OAuth2,
    Phase,
    TemplateError,
    WebProvider,
    evaluate_condition,
    go_json,
    jsonpath_first,
    load_template,
    measure,
    parse_duration,
    phase_of,
    run_metric,
)
from tests.support.reference_data import PROVIDER_CASES

CASES: list[dict[str, Any]] = json.loads(PROVIDER_CASES.read_text())["cases"]


# ---- the shared conformance cases -----------------------------------------------------------


def test_cases_file_is_not_empty() -> None:
    assert len(CASES) >= 17


@pytest.mark.parametrize("case", CASES, ids=[f"case{n}" for n in range(len(CASES))])
def test_conformance_case_gets_argos_phase(case: dict[str, Any]) -> None:
    phase = phase_of(
        case.get("status", 200),
        case["response"],
        case["jsonPath"],
        case["successCondition"],
        case["failureCondition"],
    )
    assert phase == Phase(case["phase"])


# ---- response reading: quirks from Argo's webmetric_test.go ----------------------------------


@pytest.mark.parametrize(
    ("status", "body", "json_path", "success", "failure", "expected"),
    [
        # a non-JSON (or empty) 2xx body is Successful and the conditions are never evaluated
        (200, "I am NOT OK", "", 'result == "I am OK"', "", Phase.SUCCESSFUL),
        (200, "test: notJson", "{$.key}", "true", "true", Phase.SUCCESSFUL),
        (200, "", "{$.key}", "true", "true", Phase.SUCCESSFUL),
        (200, "{}", "", "true", "", Phase.SUCCESSFUL),
        (400, "", "", "", "", Phase.ERROR),
        (299, '{"v": 1}', "{$.v}", "result == 1", "", Phase.SUCCESSFUL),
        (300, '{"v": 1}', "{$.v}", "result == 1", "", Phase.ERROR),
        (
            200,
            '{"key": [1, 2, 3, 4, 5, 6]}',
            "{$.key}",
            "any(result, {# > 5})",
            "",
            Phase.SUCCESSFUL,
        ),
        (200, '{"key": [1, 2, 3, 4, 5, 6]}', "{$.key}", "any(result, {# > 6})", "", Phase.FAILED),
        (
            200,
            '{"a": 1, "b": true, "c": [1, 2, 3, 4], "d": null}',
            "",
            "result.a > 0 && result.b && all(result.c, {# < 5}) && result.d == nil",
            "",
            Phase.SUCCESSFUL,
        ),
        # only a success condition: false means Failed; only a failure condition: false is success
        (200, '{"v": 0.5}', "{$.v}", "result > 0.9", "", Phase.FAILED),
        (200, '{"v": 0.5}', "{$.v}", "", "result > 0.9", Phase.SUCCESSFUL),
        # a condition that errors makes the measurement Error
        (200, '{"v": "high"}', "{$.v}", "result > 0.9", "", Phase.ERROR),
        (200, '{"v": 1}', "{$.missing}", "true", "", Phase.ERROR),
        (200, '{"v": [1]}', "{$.v[3]}", "true", "", Phase.ERROR),
        # JSON numbers are float64, so the float-only helpers accept them
        (200, '{"v": 1}', "{$.v}", "!isNaN(result) && !isInf(result)", "", Phase.SUCCESSFUL),
        (200, '{"v": 1}', "{$.v}", "!isNaN(asInt(result))", "", Phase.ERROR),
        # NaN is not JSON for Go, so it is a raw string result (Successful, unevaluated)
        (200, '{"v": NaN}', "{$.v}", "false", "", Phase.SUCCESSFUL),
    ],
)
def test_response_reading_follows_argo(
    status: int, body: str, json_path: str, success: str, failure: str, expected: Phase
) -> None:
    assert phase_of(status, body, json_path, success, failure) == expected


def test_go_json_matches_what_argo_stores_as_the_measurement_value() -> None:
    assert go_json({"num": 1.2, "bool": True, "mapfield": {"foo": "bar"}}) == (
        '{"bool":true,"mapfield":{"foo":"bar"},"num":1.2}'
    )
    assert go_json([1.0, 2.0, 1e21, 1e-7, 0.000001]) == "[1,2,1e+21,1e-7,0.000001]"
    assert go_json("a<b & c>d") == '"a\\u003cb \\u0026 c\\u003ed"'


# ---- JSONPath --------------------------------------------------------------------------------

DOC: dict[str, Any] = {
    "a": {"b": [{"c": 1}, {"c": 2}, {"c": 3}]},
    "x.y": "dotted",
    "n": None,
    "e": [],
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("{$}", DOC),
        ("", DOC),
        ("{.a.b[0].c}", 1),
        ("{$.a.b[0].c}", 1),
        ("{$.a.b[-1].c}", 3),
        ("{$.a.b[1:].c}", 2),
        ("{$.a.b[*].c}", 1),
        ("{$['x.y']}", "dotted"),
        ("{$.x\\.y}", "dotted"),
        ("{$.a['b'][2]['c']}", 3),
        ("{$.n}", None),
        # text outside braces is a result of its own, exactly as client-go returns it
        ("$.a.b", "$.a.b"),
        ("prefix {$.a.b[0].c}", "prefix "),
    ],
)
def test_jsonpath_first_returns_the_first_match(expr: str, expected: Any) -> None:
    assert jsonpath_first(DOC, expr) == expected


@pytest.mark.parametrize(
    "expr",
    [
        "{$.missing}",
        "{$.a.b[3]}",
        "{$.a.b[-4]}",
        "{$.e[*]}",
        "{$.a[0]}",
        "{$.n.deeper}",
        "{$.a.b.c}",
    ],
)
def test_jsonpath_without_a_match_raises_no_match(expr: str) -> None:
    with pytest.raises(NoMatch):
        jsonpath_first(DOC, expr)


@pytest.mark.parametrize("expr", ["{$.a", "{$..c}", "{$.a[?(@.c)]}", "{a.b}"])
def test_jsonpath_syntax_errors_are_reported(expr: str) -> None:
    with pytest.raises(JSONPathSyntaxError):
        jsonpath_first(DOC, expr)


# ---- conditions ------------------------------------------------------------------------------

RESULT = {"num": 1.2, "ok": True, "name": "canary", "list": [1.0, 2.0], "nested": {"k": "v"}}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("result.num > 1.1 && result.ok", True),
        ("result.num > 1 and not (result.name == 'stable')", True),
        ('result["nested"]["k"] == "v"', True),
        ("result.list[-1] == 2", True),
        ("2.0 in result.list", True),
        ("'k' in result.nested", True),
        ("3 not in result.list", True),
        ("result.name in ['canary', 'baseline']", True),
        ("1 + 2 * 3 == 7", True),
        ("(1 + 2) * 3 == 9", True),
        ("7 / 2 == 3.5", True),
        ("-2 ** 2 == -4", True),
        ("!true || true", True),
        ("not true == false", True),  # `not` binds tighter than ==: (not true) == false
        ("false && result.missing > 1", False),  # short-circuit skips the error
        ("result.missing == nil", True),  # a missing map key reads as nil
        ("asInt('42') == 42 && asFloat('1.5') == 1.5 && asInt(2.9) == 2", True),
        ("isNaN(asFloat('NaN')) && isInf(asFloat('-Inf'))", True),
        ("result.name startsWith 'can' && result.name matches '^c.n'", True),
        ("len(result.list) == 2 && count(result.list, {# > 1}) == 1", True),
        ("result.ok ? result.num > 1 : false", True),
        ("result?.nope?.deeper == nil", True),
        ("result.nope ?? 5 == 5", True),
    ],
)
def test_conditions_evaluate_like_expr(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr, RESULT) is expected


@pytest.mark.parametrize(
    "expr",
    [
        "result.name > 1",  # string vs number
        "result.missing > 0",  # nil vs number
        "result.num.deeper == 1",  # field access on a float
        "result.list.x == 1",  # field access on an array
        "result.list[5] == 1",  # index out of range
        "asInt('1.5') > 0",  # not an integer string
        "asFloat('12abc') > 0",
        "asInt(result.ok) > 0",
        "isNaN(asInt('1'))",  # isNaN takes a float64 only
        "result.num && true",  # && needs a bool
        "!result.num",
        "result.num",  # a condition must yield a bool
        "unknown > 1",  # unknown name: compile error
        "asInt() > 1",  # wrong arity
        "result.num >",  # syntax
        "1 % 0 == 0",
        "'x' in 'xyz'",  # `in` is for arrays and maps
    ],
)
def test_condition_errors_raise_condition_error(expr: str) -> None:
    with pytest.raises(ConditionError):
        evaluate_condition(expr, RESULT)


def test_is_nil_and_default_look_at_the_whole_result_like_argo() -> None:
    # Argo's helpers close over `result` and ignore their first argument.
    assert evaluate_condition("isNil(result.missing)", {"a": 1}) is False
    assert evaluate_condition("isNil(1)", None) is True
    assert evaluate_condition("default(result, 7) == 7", None) is True
    assert evaluate_condition("default(0, 7) == 'x'", "x") is True


# ---- a scripted HTTP server ------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: str = '{"verdict": "pass"}'
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """Answers requests from a script, in order, and records every request it receives."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[Seen] = []
        self.json_only = False  # answer 415 unless Content-Type is application/json
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

            do_POST = do_GET
            do_PUT = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # a short poll interval keeps shutdown() (one per test) from costing 0.5 s
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def verdicts(self, *verdicts: str | int) -> None:
        """An int is a bare status code (an Error for Argo); a str a 200 verdict."""
        for verdict in verdicts:
            if isinstance(verdict, int):
                self.answers.append(Answer(status=verdict, body="not ready"))
            else:
                self.answers.append(Answer(body=json.dumps({"verdict": verdict})))

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in request.headers.items()}
        with self._lock:
            self.seen.append(Seen(request.command, request.path, headers, body))
            answer = self.answers.pop(0) if self.answers else Answer(500, "no scripted answer")
        if self.json_only and headers.get("content-type") != "application/json":
            answer = Answer(415, "want application/json")
        time.sleep(answer.delay)
        payload = answer.body.encode()
        try:
            request.send_response(answer.status)
            request.send_header("Content-Type", answer.content_type)
            request.send_header("Content-Length", str(len(payload)))
            for key, value in answer.headers.items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        yield http


# ---- measure() against a real server ---------------------------------------------------------


def test_get_measurement_reads_the_verdict_and_sends_headers(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(Answer(body='{"verdict": "pass", "score": 0.99}'))
    web = WebProvider(
        url=f"{server.url}/v1/analysis?service=checkout&window=5m",
        headers=[("Authorization", "Bearer s3cret")],
        json_path="{$.verdict}",
    )
    result = measure(client, web, 'result == "pass"', 'result == "fail"')
    assert result.phase is Phase.SUCCESSFUL
    assert (result.value, result.value_text, result.status_code) == ("pass", '"pass"', 200)
    [seen] = server.seen
    assert (seen.method, seen.path, seen.body) == (
        "GET",
        "/v1/analysis?service=checkout&window=5m",
        b"",
    )
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["user-agent"] == "Go-http-client/1.1"


def test_post_with_json_body_sends_application_json(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.json_only = True
    server.script(Answer(body='{"verdict": "fail"}'))
    web = WebProvider(
        url=f"{server.url}/v1/analysis",
        method="POST",
        headers=[("Content-Type", "text/plain")],  # jsonBody overrides it, as in Argo
        json_body={"service": "checkout", "window": "5m", "quantile": 0.99},
        json_path="{$.verdict}",
    )
    result = measure(client, web, 'result == "pass"', 'result == "fail"')
    assert result.phase is Phase.FAILED
    [seen] = server.seen
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == b'{"quantile":0.99,"service":"checkout","window":"5m"}'


def test_put_with_string_body_keeps_the_templates_content_type(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(Answer(body='{"verdict": "pass"}'))
    web = WebProvider(
        url=f"{server.url}/v1/analysis",
        method="PUT",
        headers=[("Content-Type", "text/plain")],
        body="service=checkout",
        json_path="{$.verdict}",
    )
    assert measure(client, web, 'result == "pass"', "").phase is Phase.SUCCESSFUL
    [seen] = server.seen
    assert (seen.method, seen.body, seen.headers["content-type"]) == (
        "PUT",
        b"service=checkout",
        "text/plain",
    )


@pytest.mark.parametrize(
    ("method", "body", "json_body", "message"),
    [
        ("GET", "x=1", None, "can only be used with POST or PUT"),
        ("GET", "", {"x": 1}, "can only be used with POST or PUT"),
        ("POST", "x=1", {"x": 1}, "use either Body or JSONBody"),
    ],
)
def test_invalid_body_combinations_error_without_calling(
    server: ScriptedServer,
    client: httpx.Client,
    method: str,
    body: str,
    json_body: Any,
    message: str,
) -> None:
    web = WebProvider(
        url=f"{server.url}/v1/analysis", method=method, body=body, json_body=json_body
    )
    result = measure(client, web, "true", "")
    assert result.phase is Phase.ERROR
    assert message in result.message
    assert server.seen == []


def test_non_2xx_is_an_error_whatever_the_body(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(Answer(status=503, body='{"verdict": "pass"}', headers={"Retry-After": "10"}))
    web = WebProvider(url=f"{server.url}/v1/analysis", json_path="{$.verdict}")
    result = measure(client, web, 'result == "pass"', "")
    assert (result.phase, result.status_code) == (Phase.ERROR, 503)
    assert "received non 2xx response code: 503" in result.message


def test_a_slow_answer_past_timeout_seconds_is_an_error(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(Answer(delay=1.5))
    web = WebProvider(url=f"{server.url}/v1/analysis", json_path="{$.verdict}", timeout_seconds=1)
    result = measure(client, web, 'result == "pass"', "")
    assert result.phase is Phase.ERROR
    assert "Client.Timeout exceeded" in result.message


def test_connection_refused_is_an_error(client: httpx.Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = measure(client, WebProvider(url=f"http://127.0.0.1:{port}/x"), "true", "")
    assert result.phase is Phase.ERROR
    assert result.message.startswith(f'Get "http://127.0.0.1:{port}/x": ')


def test_non_json_body_becomes_the_raw_string_result(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(Answer(body="I am OK", content_type="text/plain"))
    result = measure(client, WebProvider(url=f"{server.url}/health"), 'result == "I am OK"', "")
    assert (result.phase, result.value, result.value_text) == (
        Phase.SUCCESSFUL,
        "I am OK",
        "I am OK",
    )


def test_oauth2_client_credentials_token_is_sent_as_bearer(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.script(
        Answer(body='{"access_token": "tok-xyz", "token_type": "bearer"}'),
        Answer(body='{"verdict": "pass"}'),
    )
    oauth = OAuth2(f"{server.url}/token", client_id="argo", client_secret="pw", scopes=["read"])
    web = WebProvider(url=f"{server.url}/v1/analysis", json_path="{$.verdict}", oauth2=oauth)
    assert measure(client, web, 'result == "pass"', "").phase is Phase.SUCCESSFUL
    token_call, verdict_call = server.seen
    assert (token_call.method, token_call.path) == ("POST", "/token")
    assert token_call.body == b"grant_type=client_credentials&scope=read"
    assert token_call.headers["authorization"].startswith("Basic ")
    assert verdict_call.headers["authorization"] == "Bearer tok-xyz"


# ---- run_metric(): the measurement loop ------------------------------------------------------


class SleepRecorder:
    """Records each (scaled) wait and really waits it, like the controller's requeue."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


def verdict_metric(server: ScriptedServer, **limits: Any) -> Metric:
    return Metric(
        name="canary-verdict",
        web=WebProvider(url=f"{server.url}/v1/analysis", json_path="{$.verdict}"),
        success_condition='result == "pass"',
        failure_condition='result == "fail"',
        **limits,
    )


def test_four_errors_then_a_success_is_successful_with_10s_retries(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts(503, 503, 503, 503, "pass")
    sleep = SleepRecorder()
    run = run_metric(verdict_metric(server), client, sleep=sleep, time_scale=0.01)
    assert run.phase is Phase.SUCCESSFUL
    assert run.ended_after == 5
    assert [m.phase for m in run.measurements] == [Phase.ERROR] * 4 + [Phase.SUCCESSFUL]
    assert run.waits == [10.0] * 4
    assert sleep.calls == pytest.approx([0.1] * 4)


def test_five_consecutive_errors_make_the_metric_error(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts(503, 503, 503, 503, 503, "pass")
    run = run_metric(verdict_metric(server), client, sleep=SleepRecorder(), time_scale=0.001)
    assert run.phase is Phase.ERROR
    assert run.ended_after == 5
    assert run.message == "consecutiveErrors (5) > consecutiveErrorLimit (4)"
    assert len(server.seen) == 5  # the 6th answer was never asked for


def test_failure_limit_one_fails_on_the_second_failure(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("pass", "fail", "pass", "fail", "pass")
    sleep = SleepRecorder()
    metric = verdict_metric(server, interval=30.0, count=5, failure_limit=1)
    run = run_metric(metric, client, sleep=sleep, time_scale=0.001)
    assert run.phase is Phase.FAILED
    assert run.ended_after == 4
    assert run.message == "failed (2) > failureLimit (1)"
    assert run.waits == [30.0, 30.0, 30.0]


def test_failures_within_the_limit_still_succeed_at_count(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("pass", "fail", "pass")
    metric = verdict_metric(server, interval=1.0, count=3, failure_limit=1)
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001)
    assert (run.phase, run.ended_after, run.failed) == (Phase.SUCCESSFUL, 3, 1)


def test_one_inconclusive_with_default_limit_is_inconclusive(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("inconclusive", "pass", "pass")
    metric = verdict_metric(server, interval=60.0, count=3)
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001)
    assert (run.phase, run.ended_after) == (Phase.INCONCLUSIVE, 1)
    assert run.message == "inconclusive (1) > inconclusiveLimit (0)"


def test_inconclusive_limit_tolerates_slow_ramp_up(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("inconclusive", "pass", "pass")
    metric = verdict_metric(
        server, interval=60.0, count=3, inconclusive_limit=1, initial_delay=45.0
    )
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001)
    assert (run.phase, run.ended_after) == (Phase.SUCCESSFUL, 3)
    assert run.waits == [45.0, 60.0, 60.0]


def test_an_error_is_retried_after_10s_not_after_the_interval(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts(503, "pass", "pass")
    sleep = SleepRecorder()
    metric = verdict_metric(server, interval=60.0, count=2)
    run = run_metric(metric, client, sleep=sleep, time_scale=0.01)
    assert (run.phase, run.ended_after, run.count, run.error) == (Phase.SUCCESSFUL, 3, 2, 1)
    assert run.waits == [10.0, 60.0]
    assert sleep.calls == pytest.approx([0.1, 0.6])


def test_consecutive_success_limit_ends_the_metric_early(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("fail", "pass", "pass", "pass")
    metric = verdict_metric(
        server, interval=1.0, count=5, failure_limit=2, consecutive_success_limit=2
    )
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001)
    assert (run.phase, run.ended_after) == (Phase.SUCCESSFUL, 3)


def test_the_http_timeout_is_not_scaled(server: ScriptedServer, client: httpx.Client) -> None:
    # 0.3 s is far past a "scaled" 1 s * 0.001 timeout but well inside the real one.
    server.script(Answer(delay=0.3))
    metric = verdict_metric(server)
    metric.web.timeout_seconds = 1
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001)
    assert run.phase is Phase.SUCCESSFUL


def test_an_invalid_metric_errors_without_measuring(
    server: ScriptedServer, client: httpx.Client
) -> None:
    run = run_metric(verdict_metric(server, count=3), client, sleep=SleepRecorder())
    assert run.phase is Phase.ERROR
    assert "interval must be specified when count > 1" in run.message
    assert (run.ended_after, server.seen) == (0, [])


def test_an_endless_metric_stops_at_max_measurements(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("pass", "pass", "pass")
    metric = verdict_metric(server, interval=1.0)  # no count: runs until the rollout stops it
    run = run_metric(metric, client, sleep=SleepRecorder(), time_scale=0.001, max_measurements=3)
    assert (run.phase, run.ended_after) == (Phase.RUNNING, 3)


# ---- load_template() -------------------------------------------------------------------------

TEMPLATE = """
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: rollout-analyzer
spec:
  args:
  - name: service
  - name: namespace
    value: shop
  - name: canary-hash
  - name: measurements
    value: "4"
  - name: analyzer-url
    value: http://rollout-analyzer.rollouts.svc:8080
  - name: api-token
    valueFrom:
      secretKeyRef:
        name: rollout-analyzer
        key: token
  metrics:
  - name: canary-verdict
    initialDelay: 30s
    interval: 1m30s
    count: "{{args.measurements}}"
    failureLimit: 1
    inconclusiveLimit: 2
    consecutiveErrorLimit: 6
    successCondition: result == "pass"
    failureCondition: result == "fail"
    provider:
      web:
        method: POST
        url: "{{ args.analyzer-url }}/v1/analysis?service={{args.service}}&ns={{args.namespace}}"
        timeoutSeconds: 20
        headers:
        - key: Authorization
          value: "Bearer {{args.api-token}}"
        jsonBody:
          service: "{{args.service}}"
          canaryHash: "{{args.canary-hash}}"
          quantiles: [0.5, 0.99]
        jsonPath: "{$.verdict}"
  - name: error-rate
    successCondition: result[0] < 0.01
    provider:
      prometheus:
        address: http://prometheus.monitoring:9090
        query: sum(rate(http_requests_total{service="{{args.service}}"}[5m]))
"""

ARGS = {"service": "checkout", "canary-hash": "6f7d9c", "api-token": "tok-123"}


def test_load_template_renders_args_and_reads_the_web_metric() -> None:
    [metric] = load_template(TEMPLATE, ARGS)
    assert metric.name == "canary-verdict"
    assert (metric.initial_delay, metric.interval, metric.count) == (30.0, 90.0, 4)
    assert (metric.failure_limit, metric.inconclusive_limit) == (1, 2)
    assert (metric.consecutive_error_limit, metric.consecutive_success_limit) == (6, 0)
    assert (metric.success_condition, metric.failure_condition) == (
        'result == "pass"',
        'result == "fail"',
    )
    web = metric.web
    assert (
        web.url == "http://rollout-analyzer.rollouts.svc:8080/v1/analysis?service=checkout&ns=shop"
    )
    assert (web.method, web.timeout_seconds, web.json_path) == ("POST", 20, "{$.verdict}")
    assert web.headers == [("Authorization", "Bearer tok-123")]
    assert web.json_body == {
        "service": "checkout",
        "canaryHash": "6f7d9c",
        "quantiles": [0.5, 0.99],
    }


def test_supplied_args_override_template_defaults() -> None:
    [metric] = load_template(TEMPLATE, {**ARGS, "namespace": "staging", "measurements": "2"})
    assert metric.web.url.endswith("ns=staging")
    assert metric.count == 2


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"service": "checkout", "canary-hash": "6f7d9c"}, "api-token"),  # secret not supplied
        ({"service": "checkout", "api-token": "t"}, "canary-hash"),  # required arg missing
    ],
)
def test_missing_args_are_template_errors(args: dict[str, str], problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        load_template(TEMPLATE, args)


def test_an_unknown_placeholder_is_a_template_error() -> None:
    broken = TEMPLATE.replace("{{args.namespace}}", "{{args.nmespace}}")
    with pytest.raises(TemplateError, match="failed to resolve"):
        load_template(broken, ARGS)


def test_cluster_template_is_accepted_and_other_kinds_are_not() -> None:
    cluster = TEMPLATE.replace("kind: AnalysisTemplate", "kind: ClusterAnalysisTemplate")
    assert [m.name for m in load_template(cluster, ARGS)] == ["canary-verdict"]
    with pytest.raises(TemplateError):
        load_template(TEMPLATE.replace("argoproj.io/v1alpha1", "argoproj.io/v1beta1"), ARGS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("500ms", 0.5), ("0", 0.0)],
)
def test_durations_parse_like_go(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "1 m", "m", "1d", ""])
def test_invalid_durations_are_rejected(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_duration(text)


def test_loaded_template_runs_against_a_test_server(
    server: ScriptedServer, client: httpx.Client
) -> None:
    server.verdicts("pass", "pass")
    [metric] = load_template(TEMPLATE, {**ARGS, "measurements": "2"})
    sleep = SleepRecorder()
    run = run_metric(metric, client, base_url=server.url, sleep=sleep, time_scale=0.001)
    assert (run.phase, run.ended_after) == (Phase.SUCCESSFUL, 2)
    assert run.waits == [30.0, 90.0]
    first = server.seen[0]
    assert (first.method, first.path) == ("POST", "/v1/analysis?service=checkout&ns=shop")
    assert first.headers["authorization"] == "Bearer tok-123"
    assert json.loads(first.body)["canaryHash"] == "6f7d9c"
