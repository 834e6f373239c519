"""OpenTelemetry traces of the analyzer itself, configured only by the standard OTEL_* variables.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set: then nothing
of the SDK or the exporters is imported, no thread starts and every helper here is a no-op.

One trace per analysis: the webhook's HTTP server span (FastAPI's own; the caller's W3C
`traceparent` is its parent when given) → one consumer span per Celery task (the context rides
in the message headers) → a client span per PromQL round trip (our Prometheus client's request hook,
analysis/sources/prometheus_http.py), a span for the statistics, one per traffic action and one
per chat delivery. `analysis/` stays free of OpenTelemetry: the hook is set from here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from analysis.observation import Observation
    from analysis.request import AnalysisSpec
    from analysis.sources import MetricsSource

log = logging.getLogger("rollout_analyzer.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# A PromQL expression can be kilobytes long; enough of it to recognise the query.
MAX_QUERY_CHARS = 1024
MAX_URL_CHARS = 2048
TRACER_NAME = "rollout_analyzer"

_tracer: Tracer | None = None
_setup_lock = threading.Lock()
_configured = False
# Consumer spans of running Celery tasks, by task id (prerun and postrun are separate signals).
_running: dict[str, tuple[Span, object]] = {}


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    return _tracer is not None


def setup(component: str) -> bool:
    """Install the tracer provider and the instrumentation once per process; True when on.

    `component` ("webhook", "worker") names the default service: OTEL_SERVICE_NAME wins.
    """
    global _tracer, _configured
    with _setup_lock:
        if _configured:
            return _tracer is not None
        _configured = True
        if not tracing_requested():
            return False
        try:
            _tracer = _install(component)
        except MissingExtra as exc:  # a known cause: say what to install, no traceback
            log.error("tracing off: %s", exc)
            _tracer = None
        except Exception:  # tracing must never stop the service from starting
            log.exception("tracing setup failed; continuing without traces")
            _tracer = None
        return _tracer is not None


def _install(component: str) -> Tracer:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The stable HTTP semantic conventions (http.request.method, url.full, ...), unless the
    # operator chose otherwise.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    # Our defaults only where OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say nothing (the
    # attributes given to Resource.create would win over the environment's).
    from_env = OTELResourceDetector().detect().attributes
    defaults = {"service.name": f"rollout-analyzer-{component}", "service.version": "0.1.0"}
    resource = Resource.create({k: v for k, v in defaults.items() if k not in from_env})
    # TracerProvider reads OTEL_TRACES_SAMPLER/_ARG (default: parent-based, always on).
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    _trace_promql(provider)
    _connect_celery()
    return provider.get_tracer(TRACER_NAME, "0.1.0")


class MissingExtra(RuntimeError):
    """An optional dependency the configuration asks for is not installed."""


def _exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    # Each exporter reads its endpoint, headers, timeout, compression and TLS from OTEL_*.
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise MissingExtra(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'rollout-analyzer[otlp-grpc]' (or use http/protobuf)"
            ) from exc
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTLP protocol {protocol!r} is not supported (grpc, http/protobuf)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


# --- helpers used by the rest of the code ----------------------------------------------------
class _NoSpan:
    """What `span()` yields when tracing is off: accepts and drops everything."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def record_exception(self, exception: BaseException, **_: Any) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *_: object) -> None:
        pass


_NO_SPAN = _NoSpan()


def span(name: str, /, **attrs: Any) -> Any:
    """A child span of the current one (a context manager yielding the span); None values are
    left out. Attribute names with dots: `span("x", **{"chat.target": name})`."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=_clean(attrs))


def set_attributes(attrs: Mapping[str, Any]) -> None:
    """Add attributes to the current span (None values are left out)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attrs))


def name_route(method: str, route: str) -> None:
    """Name the current (server) span by its route, as FastAPI does for its own routes: for
    a request served by a plain Starlette route (webhooks/analyze.py)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("http.route", route)
    span.update_name(f"{method} {route}")


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current context (traceparent, tracestate) into message headers."""
    if _tracer is None:
        return
    from opentelemetry import propagate

    propagate.inject(carrier)


def extract(carrier: Mapping[str, Any]) -> Context | None:
    """The context a caller sent in `carrier` (None when tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    return propagate.extract({k: v for k, v in carrier.items() if isinstance(v, str)})


def current_ids() -> dict[str, Any] | None:
    """trace_id / span_id (hex) of the current span for log lines; None without one."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "trace_sampled": context.trace_flags.sampled,
    }


def exemplar() -> dict[str, str] | None:
    """Exemplar labels pointing at the current trace, when it is sampled (else there is
    nothing to jump to)."""
    ids = current_ids()
    if ids is None or not ids["trace_sampled"]:
        return None
    return {"trace_id": ids["trace_id"], "span_id": ids["span_id"]}


# --- what an analysis is, as span attributes --------------------------------------------------
def analysis_attributes(result: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes that matter when debugging a verdict, from a stored analysis result."""
    if _tracer is None:
        return {}
    requests = result.get("requests") or {}
    timing = result.get("timing") or {}
    source = result.get("source") or {}
    return _clean(
        {
            "analysis.id": result.get("analysis_id"),
            "analysis.service": result.get("service"),
            "analysis.namespace": result.get("namespace"),
            "analysis.rollout": result.get("rollout"),
            "analysis.revision": result.get("revision"),
            "analysis.policy": result.get("policy"),
            "analysis.verdict": result.get("verdict"),
            "analysis.score": result.get("score"),
            "analysis.requests.canary": requests.get("canary"),
            "analysis.requests.baseline": requests.get("baseline"),
            "analysis.round_trips": source.get("round_trips"),
            "analysis.queue_wait_seconds": timing.get("queue_wait_seconds"),
            "analysis.duration_seconds": timing.get("duration_seconds"),
            "analysis.error": (str(result["error"])[:300] if result.get("error") else None),
        }
    )


def request_attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook's per-request log fields as span attributes (dedup as hit / miss)."""
    if _tracer is None:
        return {}
    dedup = fields.get("dedup")
    return _clean(
        {
            "analysis.id": fields.get("analysis_id"),
            "analysis.service": fields.get("service"),
            "analysis.rollout": fields.get("rollout"),
            "analysis.revision": fields.get("revision"),
            "analysis.verdict": fields.get("verdict"),
            "analysis.dedup": None if dedup is None else ("hit" if dedup else "miss"),
        }
    )


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        clean[key] = value if isinstance(value, str | bool | int | float) else str(value)
    return clean


# --- the statistics span, around code in analysis/ that knows nothing of tracing -------------
class _TimedSource:
    """Passes everything to the real source; the moment its observation is back, the statistics
    span starts (run_analysis goes straight on to judge and report)."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self.name = source.name
        self.statistics: Span | None = None

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        observation = self._source.observe(spec, end, deadline, seconds)
        if _tracer is not None:
            self.statistics = _tracer.start_span("analysis.statistics")
        return observation

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        return self._source.observe_range(spec, start, end, step, seconds)

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        return self._source.latest_time(spec, now)


@contextmanager
def statistics_timed(source: MetricsSource) -> Iterator[MetricsSource]:
    """`with statistics_timed(source) as s: run_analysis(spec, s, ...)`: a span for the
    statistics (judge + report) that follow the PromQL round trips. The source itself when off."""
    if _tracer is None:
        yield source
        return
    timed = _TimedSource(source)
    try:
        yield timed
    finally:
        if timed.statistics is not None:
            timed.statistics.end()


# --- the webhook's server span ----------------------------------------------------------------
# Probes and scrapes every few seconds would bury the analyses in traces of their own.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def webhook_telemetry() -> TelemetryConfig:
    """Set tracing up for the webhook (idempotent) and return `FastAPI(telemetry=...)`.

    FastAPI (>= 0.165) opens the HTTP server span itself, by the semantic conventions, with the
    caller's W3C traceparent as parent, whenever a tracer provider is installed. Its operation
    spans are left out so that the worker's task span is the direct child of the server span.
    Calling setup here too covers `uvicorn --workers N`, whose processes start fresh.
    """
    setup("webhook")
    return {"operation_spans": False, "exclude": _untraced}


# --- PromQL round trips -----------------------------------------------------------------------
def _trace_promql(provider: Any) -> None:
    from analysis.sources.prometheus_http import observe_requests

    tracer = provider.get_tracer(TRACER_NAME, "0.1.0")
    observe_requests(lambda *call: _promql_span(tracer, *call))


@contextmanager
def _promql_span(
    tracer: Tracer, method: str, url: str, query: str, headers: dict[str, str]
) -> Iterator[Any]:
    """A client span per PromQL round trip, named by its endpoint, with the (capped) query;
    its context goes along in the request headers (a traced Prometheus joins the trace)."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, Status, StatusCode

    parts = urlsplit(url)
    template = "/api/v1/query_range" if parts.path.endswith("query_range") else "/api/v1/query"
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": url[:MAX_URL_CHARS],
        "url.template": template,
        "server.address": parts.hostname or "",
        "db.system.name": "prometheus",
        "db.query.text": query[:MAX_QUERY_CHARS],
        "db.query.length": len(query),
    }
    if parts.port:
        attributes["server.port"] = parts.port
    with tracer.start_as_current_span(
        f"{method} {template}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        propagate.inject(headers)

        def answered(status: int) -> None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))

        yield answered


# --- Celery: the context in the message headers, a consumer span per task ---------------------
def _connect_celery() -> None:
    from celery import signals

    signals.before_task_publish.connect(_on_publish, weak=False)
    signals.task_prerun.connect(_on_task_start, weak=False)
    signals.task_failure.connect(_on_task_failure, weak=False)
    signals.task_postrun.connect(_on_task_end, weak=False)


def _on_publish(headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    # Runs in the publishing thread; asyncio.to_thread copied the request's context into it.
    if headers is not None:
        inject(headers)


def _on_task_start(task_id: str = "", task: Any = None, **_: Any) -> None:
    if _tracer is None or task is None:
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    request = task.request
    carrier = {
        key: getattr(request, key, None) or (getattr(request, "headers", None) or {}).get(key)
        for key in ("traceparent", "tracestate")
    }
    delivery = getattr(request, "delivery_info", None) or {}
    task_span = _tracer.start_span(
        task.name,
        context=extract({k: v for k, v in carrier.items() if v}),
        kind=SpanKind.CONSUMER,
        attributes=_clean(
            {
                "messaging.system": "celery",
                "messaging.operation.type": "process",
                "messaging.destination.name": delivery.get("routing_key"),
                "messaging.message.id": task_id,
                "celery.task_name": task.name,
                "celery.retries": getattr(request, "retries", None),
                "celery.hostname": getattr(request, "hostname", None),
            }
        ),
    )
    token = otel_context.attach(trace.set_span_in_context(task_span))
    _running[task_id] = (task_span, token)


def _on_task_failure(task_id: str = "", exception: BaseException | None = None, **_: Any) -> None:
    entry = _running.get(task_id)
    if entry is None or exception is None:
        return
    from opentelemetry.trace import Status, StatusCode

    task_span = entry[0]
    task_span.record_exception(exception)
    task_span.set_status(Status(StatusCode.ERROR, type(exception).__name__))


def _on_task_end(task_id: str = "", state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id, None)
    if entry is None:
        return
    from opentelemetry import context as otel_context

    task_span, token = entry
    if state:
        task_span.set_attribute("celery.state", state)
    task_span.end()
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
    except Exception:  # a different thread than prerun's (never with our pools): keep going
        log.debug("could not detach the task's tracing context")


def shutdown() -> None:
    """Flush the spans still queued (tests, and processes that exit without atexit)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()
