"""`rollout-analyzer doctor`: can this installation work? One line per check, with a fix.

Nothing is changed and nothing is posted (unless --send-test): reachability is TCP/TLS and
read-only API calls; Kubernetes write access is asked with a SelfSubjectAccessReview.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import click
import yaml

from cli.output import Command, one_line

Status = Literal["ok", "info", "warn", "FAIL"]
STATUS_COLOUR = {"ok": "green", "info": "blue", "warn": "yellow", "FAIL": "red"}


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{click.style(f'{self.status:<4}', fg=STATUS_COLOUR[self.status], bold=True)} "
        text += f"{self.name}: {one_line(self.detail, 300)}"
        if self.fix and self.status in ("FAIL", "warn"):
            text += f" -- fix: {self.fix}"
        return text


def redact(url: str) -> str:
    """A URL without its password (Redis URLs often carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


@dataclass
class Context:
    settings: Any
    policy: Any  # analysis.policy.Policy, or None when the policy could not be loaded
    service: str | None
    namespace: str | None
    prometheus_url: str | None
    chat_targets_file: str | None
    send_test: bool
    timeout: float


# --- settings and policy ------------------------------------------------------------------------


def check_settings(policies_file: str | None, policy_name: str) -> tuple[list[Check], Any, Any]:
    from pydantic import ValidationError

    from analysis.policy import PolicySet
    from worker.settings import ENV_PREFIX, Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "settings"
        return [Check("FAIL", "settings", f"{name}: {first['msg']}", f"correct {name}")], None, None
    checks = [Check("ok", "settings", f"{ENV_PREFIX}* variables are valid")]
    path = policies_file or settings.policies_file
    try:
        policies = PolicySet.load(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        fix = "`rollout-analyzer policies -f FILE` shows the problem"
        return [*checks, Check("FAIL", "policies", f"{path}: {exc}", fix)], settings, None
    policy = policies.get(policy_name)
    if policy is None:
        known = ", ".join(policies.names())
        fix = f"use one of: {known}, or add it to {path or 'a policy file'}"
        problem = Check("FAIL", "policies", f"no policy {policy_name!r}", fix)
        return [*checks, problem], settings, None
    where = path or "built-in defaults"
    checks.append(Check("ok", "policies", f"{len(policies.names())} valid from {where}"))
    return checks, settings, policy


# --- Redis --------------------------------------------------------------------------------------


def check_redis(ctx: Context) -> Iterator[Check]:
    import redis

    if ctx.settings.in_process:
        yield Check("info", "redis", "in-process mode (demo): no Redis used")
        return
    url = ctx.settings.broker
    client = redis.Redis.from_url(
        url, socket_timeout=ctx.timeout, socket_connect_timeout=ctx.timeout
    )
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
        yield Check("ok", "redis", f"{redact(url)} answered PING (Redis {version})")
    except redis.RedisError as exc:
        yield Check(
            "FAIL",
            "redis",
            f"{redact(url)}: {exc}",
            "start Redis or set ROLLOUT_ANALYZER_REDIS_URL to a reachable one",
        )
    finally:
        client.close()


# --- Prometheus ---------------------------------------------------------------------------------


def _prometheus_client(ctx: Context, url: str) -> Any:
    import httpx

    # The worker's own settings, TLS included (CA file, insecure, client certificate).
    config = ctx.settings.prometheus_config(url)
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    auth = (config.username, config.password or "") if config.username else None
    verify = config.ssl_context()
    return httpx.Client(headers=headers, auth=auth, verify=verify, timeout=ctx.timeout)


def check_prometheus(ctx: Context) -> Iterator[Check]:
    import httpx

    if ctx.prometheus_url is None and ctx.settings.recording:
        yield Check("info", "prometheus", f"reading the recording {ctx.settings.recording}")
        return
    url = ctx.prometheus_url or ctx.settings.prometheus_url
    if not url:
        yield Check(
            "FAIL",
            "prometheus",
            "no Prometheus configured",
            "set ROLLOUT_ANALYZER_PROMETHEUS_URL (or pass --prometheus URL)",
        )
        return
    base = url.rstrip("/")
    try:
        client = _prometheus_client(ctx, base)
    except OSError as exc:  # an unreadable CA, certificate or key file
        fix = "check ROLLOUT_ANALYZER_PROMETHEUS_CA_FILE / _CERT_FILE / _KEY_FILE"
        yield Check("FAIL", "prometheus", f"TLS settings: {exc}", fix)
        return
    with client:
        try:
            answer = client.get(f"{base}/api/v1/status/buildinfo")
        except httpx.HTTPError as exc:
            fix = "check the URL, network policy and TLS settings (ROLLOUT_ANALYZER_PROMETHEUS_*)"
            yield Check("FAIL", "prometheus", f"{base}: {type(exc).__name__}: {exc}", fix)
            return
        if answer.status_code in (401, 403):
            fix = "set ROLLOUT_ANALYZER_PROMETHEUS_TOKEN or _USERNAME/_PASSWORD"
            yield Check("FAIL", "prometheus", f"{base}: HTTP {answer.status_code}", fix)
            return
        if answer.status_code != 200:
            fix = "is this the Prometheus API base URL (no /api/v1 suffix)?"
            yield Check("FAIL", "prometheus", f"{base}: HTTP {answer.status_code}", fix)
            return
        version = (answer.json().get("data") or {}).get("version", "?")
        yield Check("ok", "prometheus", f"{base} answered (Prometheus {version})")
        if ctx.policy is not None:
            yield from _check_metrics(ctx, client, base)


def _check_metrics(ctx: Context, client: Any, base: str) -> Iterator[Check]:
    from analysis.queries import promql_string

    conv = ctx.policy.conventions
    pairs = [*sorted(conv.matchers.items())]
    scope = "any service"
    if ctx.service:
        pairs.append((conv.service_label, ctx.service))
        scope = f"{conv.service_label}={ctx.service}"
        if ctx.namespace and conv.namespace_label:
            pairs.append((conv.namespace_label, ctx.namespace))
            scope += f", {conv.namespace_label}={ctx.namespace}"
    matchers = "".join(f", {name}={promql_string(value)}" for name, value in pairs)
    for metric in (conv.requests_metric, conv.latency_bucket_metric):
        # Series seen over the last hour: an idle hour is worth a warning, not a pass.
        expr = f"count(last_over_time({{__name__={promql_string(metric)}{matchers}}}[1h]))"
        try:
            answer = client.get(f"{base}/api/v1/query", params={"query": expr, "time": time.time()})
            result = answer.json()["data"]["result"] if answer.status_code == 200 else None
        except Exception as exc:  # any failure here is the check's finding, not a crash
            yield Check("FAIL", "metrics", f"{metric}: {type(exc).__name__}: {exc}")
            continue
        if result is None:
            yield Check("FAIL", "metrics", f"{metric}: HTTP {answer.status_code}: {answer.text}")
        elif not result:
            fix = (
                f"check that {ctx.policy.name!r} uses the right preset ({ctx.policy.preset}) "
                "and label names (`rollout-analyzer policies`), and that the service is scraped"
            )
            yield Check("FAIL", "metrics", f"no {metric} series for {scope} in the last hour", fix)
        else:
            count = int(float(result[0]["value"][1]))
            yield Check("ok", "metrics", f"{count} {metric} series for {scope}")
    if not ctx.service:
        yield Check("info", "metrics", "pass --service (and --namespace) to check one service")


# --- Kubernetes ---------------------------------------------------------------------------------


def check_kubernetes(ctx: Context) -> Iterator[Check]:
    traffic = (ctx.policy.actions or {}).get("traffic") if ctx.policy is not None else None
    if not traffic:
        yield Check("info", "kubernetes", "no traffic actions configured")
        return
    router = ROUTERS.get(str(traffic.get("kind", "istio")))
    if router is None:
        fix = f"actions.traffic.kind is one of {', '.join(ROUTERS)}"
        yield Check("FAIL", "kubernetes", f"unknown router kind {traffic.get('kind')!r}", fix)
        return
    values = {"service": ctx.service or "{service}", "namespace": ctx.namespace or "{namespace}"}
    values["rollout"] = values["service"]
    try:
        name = str(traffic[router.field]).format(**values)
        namespace = str(traffic.get("namespace") or ctx.namespace or "").format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        fix = f"actions.traffic needs {router.field} and namespace ({{service}} may be used)"
        yield Check("FAIL", "kubernetes", f"actions.traffic is incomplete: {exc}", fix)
        return
    if "{" in name + namespace or not namespace:
        fix = "pass --service and --namespace"
        detail = f"{router.kind} {namespace}/{name} has placeholders"
        yield Check("warn", "kubernetes", detail, fix)
        return
    yield from _check_routing_object(ctx, router, traffic, namespace, name)


@dataclass(frozen=True)
class _Router:
    field: str  # what actions.traffic names the object by
    group: str
    plural: str
    kind: str


ROUTERS = {
    "istio": _Router("virtual_service", "networking.istio.io", "virtualservices", "VirtualService"),
    "gateway-api": _Router("http_route", "gateway.networking.k8s.io", "httproutes", "HTTPRoute"),
}


def _check_routing_object(
    ctx: Context, router: _Router, traffic: dict[str, Any], namespace: str, name: str
) -> Iterator[Check]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from worker.traffic.kube import api_client_from_settings

    group, plural = router.group, router.plural

    s = ctx.settings
    try:
        api = api_client_from_settings(s.kubeconfig, s.kube_in_cluster, s.kube_context)
    except Exception as exc:  # kubeconfig problems come in many exception types
        fix = "set ROLLOUT_ANALYZER_KUBECONFIG / _KUBE_CONTEXT, or _KUBE_IN_CLUSTER=true in a pod"
        yield Check("FAIL", "kubernetes", f"no usable Kubernetes config: {exc}", fix)
        return
    version = str(traffic.get("api_version") or f"{group}/v1").partition("/")[2]
    ref = f"{router.kind} {namespace}/{name}"
    with api:
        try:
            client.CustomObjectsApi(api).get_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=ctx.timeout
            )
            yield Check("ok", "kubernetes", f"{ref} can be read")
        except ApiException as exc:
            fix = {
                404: f"create it, or fix actions.traffic.{router.field}/namespace",
                403: f"grant get/patch on {plural}.{group} (deploy/rbac)",
                401: "the credentials are not accepted: refresh the kubeconfig / token",
            }.get(exc.status or 0, "check the API server")
            yield Check("FAIL", "kubernetes", f"{ref}: get answered {exc.status} {exc.reason}", fix)
        except Exception as exc:  # connection refused, TLS, DNS: urllib3 raises several kinds
            fix = "is the API server reachable from here (kubeconfig server URL, network)?"
            yield Check("FAIL", "kubernetes", f"{ref}: {type(exc).__name__}: {exc}", fix)
            return
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group=group,
                    resource=plural,
                    verb="patch",
                    namespace=namespace,
                    name=name,
                )
            )
        )
        try:
            answer = client.AuthorizationV1Api(api).create_self_subject_access_review(
                review, _request_timeout=ctx.timeout
            )
        except Exception as exc:  # an API server without the review API, or a network error
            detail = (
                f"answered {exc.status} {exc.reason}"
                if isinstance(exc, ApiException)
                else f"{type(exc).__name__}: {exc}"
            )
            resource = f"{plural}.{group}/{name}"
            fix = f"check by hand: kubectl auth can-i patch {resource} -n {namespace}"
            yield Check("warn", "kubernetes", f"cannot ask whether patch is allowed: {detail}", fix)
            return
        if answer.status and answer.status.allowed:
            yield Check("ok", "kubernetes", f"{ref} may be patched")
        else:
            reason = (answer.status.reason if answer.status else "") or "denied"
            fix = f"bind a Role with patch on {plural}.{group} (deploy/rbac)"
            yield Check("FAIL", "kubernetes", f"{ref} may not be patched: {reason}", fix)


# --- chat targets -------------------------------------------------------------------------------


def _load_targets(path: str) -> list[Any]:
    from worker.notify.providers import ChatTarget

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or []
    items = data.get("targets", []) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("expected a list of targets (or `targets:` with a list)")
    return [ChatTarget.model_validate(item) for item in items]


def _reach(url: str, timeout: float) -> str:
    """DNS, TCP and (for https) a TLS handshake; returns what was verified."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    socket.getaddrinfo(host, port)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if parts.scheme != "https":
            return f"TCP to {host}:{port} works"
        context = ssl.create_default_context()
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return f"TLS to {host}:{port} works ({tls.version()})"


def check_chat(ctx: Context) -> Iterator[Check]:
    from worker.notify.providers import TargetConfigError, redact_url

    path = ctx.chat_targets_file or ctx.settings.chat_targets_file
    if not path:
        yield Check("info", "chat", "no chat targets configured")
        return
    try:
        targets = _load_targets(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        fix = "see docs/notifications.md for the target format"
        yield Check("FAIL", "chat", f"{path}: {exc}", fix)
        return
    if not targets:
        yield Check("info", "chat", f"{path} lists no targets")
    for target in targets:
        name = f"chat {target.name} ({target.kind})"
        try:
            url = target.resolve_url()
            target.resolve_secret()
        except TargetConfigError as exc:
            yield Check("FAIL", name, str(exc), "set the variable or mount the file it names")
            continue
        try:
            reached = _reach(url, ctx.timeout)
        except (OSError, ssl.SSLError) as exc:
            fix = "check DNS, egress network policy or proxy, and the URL"
            yield Check("FAIL", name, f"{redact_url(url)}: {type(exc).__name__}: {exc}", fix)
            continue
        if not ctx.send_test:
            yield Check("ok", name, f"{redact_url(url)}: {reached} (nothing posted)")
            continue
        yield _send_test(ctx, target, name)


def _send_test(ctx: Context, target: Any, name: str) -> Check:
    import httpx

    from worker.notify import Notification, send_once

    note = Notification(
        analysis_id="doctor-test",
        service=ctx.service or "rollout-analyzer",
        namespace=ctx.namespace or "-",
        rollout="doctor",
        verdict="pass",
        reasons=["test message from `rollout-analyzer doctor --send-test`"],
        event="test",
    )
    with httpx.Client(timeout=ctx.timeout) as http:
        result = send_once(http, target, note, time.time(), attempt=1)
    if result.status == "delivered":
        return Check("ok", name, f"test message delivered (HTTP {result.http_status})")
    fix = "the service refused it: check the URL token, signing secret and keywords"
    return Check("FAIL", name, f"test message {result.status}: {result.reason}", fix)


# --- the command --------------------------------------------------------------------------------


@click.command(cls=Command)
@click.option("--service", "-s", default=None, help="Check this service's metrics and actions.")
@click.option("--namespace", "-n", default=None, help="Its namespace.")
@click.option("--policy", "-p", default="default", show_default=True)
@click.option("--policies-file", default=None, help="Policy YAML (default: settings).")
@click.option("--prometheus", default=None, help="Prometheus URL (default: settings).")
@click.option("--chat-targets", default=None, help="Chat targets YAML (default: settings).")
@click.option("--send-test", is_flag=True, help="Post a test message to every chat target.")
@click.option("--timeout", default=3.0, show_default=True, type=float, help="Seconds per check.")
def doctor(
    service: str | None,
    namespace: str | None,
    policy: str,
    policies_file: str | None,
    prometheus: str | None,
    chat_targets: str | None,
    send_test: bool,
    timeout: float,
) -> None:
    """Check settings, Redis, Prometheus, Kubernetes and chat targets; one line each.

    Exit code 0 when nothing failed, 1 otherwise.

    \b
    Example:
      rollout-analyzer doctor --service checkout --namespace shop --policy istio
    """
    checks, settings, chosen = check_settings(policies_file, policy)
    for check in checks:
        click.echo(check.line())
    if settings is None:
        sys.exit(1)
    ctx = Context(
        settings, chosen, service, namespace, prometheus, chat_targets, send_test, timeout
    )
    steps: list[Callable[[Context], Iterator[Check]]] = [
        check_redis,
        check_prometheus,
        check_kubernetes,
        check_chat,
    ]
    for step in steps:
        for check in step(ctx):
            click.echo(check.line())
            checks.append(check)
    failed = [c for c in checks if c.status == "FAIL"]
    summary = f"{len(failed)} of {len(checks)} checks failed" if failed else "all checks passed"
    click.echo(summary)
    sys.exit(1 if failed else 0)
