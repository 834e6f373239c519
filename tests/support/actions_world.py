"""A running stack wired to act: a Kubernetes API emulator holding the `errors` VirtualService,
local chat receivers for four services, and the policy and targets files that connect them."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from celery import Celery

from tests.integration.conftest import TOKEN
from tests.support.argo import Measurement, Phase, WebProvider, measure
from tests.support.chat_receivers import ChatReceivers
from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig

NS = "shop"
DINGTALK_SECRET = "SECdingtalk-signing-secret"
FEISHU_SECRET = "feishu-signing-secret"

VIRTUAL_SERVICE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "errors", "namespace": NS},
    "spec": {
        "hosts": ["errors"],
        "http": [
            {
                "name": "primary",
                "route": [
                    {"destination": {"host": "errors", "subset": "stable"}, "weight": 70},
                    {"destination": {"host": "errors", "subset": "canary"}, "weight": 30},
                ],
                "retries": {"attempts": 3, "perTryTimeout": "2s"},
            },
            {
                "name": "admin",
                "match": [{"uri": {"prefix": "/admin"}}],
                "route": [{"destination": {"host": "errors-admin"}}],
            },
        ],
    },
}

# The same canary behind a Gateway API HTTPRoute: weights are relative (sum 1000 here).
HTTP_ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "errors", "namespace": NS},
    "spec": {
        "parentRefs": [{"name": "public", "namespace": "infra"}],
        "rules": [
            {
                "name": "primary",
                "backendRefs": [
                    {"name": "errors-stable", "port": 8080, "weight": 700},
                    {"name": "errors-canary", "port": 8080, "weight": 300},
                ],
                "timeouts": {"request": "10s"},
            },
            {
                "name": "admin",
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [{"name": "errors-admin", "port": 8080}],
            },
        ],
    },
}

GATEWAY_TRAFFIC = {
    "kind": "gateway-api",
    "http_route": "{rollout}",
    "routes": ["primary"],
    "canary": {"name": "{rollout}-canary", "port": 8080},
    "stable": {"name": "{rollout}-stable", "port": 8080},
    "on_pass": {"step": 10, "max_weight": 50},
    "allow_request_override": True,
}

POLICIES = {
    "policies": {
        "default": {
            "actions": {
                "traffic": {
                    "virtual_service": "{service}",
                    "routes": ["primary"],
                    "canary": {"host": "{service}", "subset": "canary"},
                    "stable": {"host": "{service}", "subset": "stable"},
                    "allow_request_override": True,
                },
                "notify": {
                    "dashboard_url": "https://grafana.example.com/d/canary?var-svc={service}"
                },
            }
        }
    }
}


@dataclass
class ActionsWorld:
    stack: Any
    emulator: K8sEmulator
    receivers: ChatReceivers
    celery: Celery
    router: str = "istio"  # or "gateway-api"

    @property
    def object_kind(self) -> tuple[str, str]:
        if self.router == "gateway-api":
            return "gateway.networking.k8s.io/v1", "httproutes"
        return "networking.istio.io/v1", "virtualservices"

    @property
    def parts(self) -> tuple[Any, K8sEmulator, ChatReceivers, Celery]:
        return self.stack, self.emulator, self.receivers, self.celery

    def close(self) -> None:
        self.receivers.close()
        self.emulator.stop()

    def reset(self, vs: dict | None = None) -> None:
        """The routing object as it was, no faults, no messages."""
        self.emulator.clear_faults()
        self.emulator.rbac = None
        api_version, plural = self.object_kind
        with contextlib.suppress(Exception):  # absent before the first test
            self.emulator.delete_object(api_version, plural, NS, "errors")
        original = HTTP_ROUTE if self.router == "gateway-api" else VIRTUAL_SERVICE
        self.emulator.create_object(api_version, plural, NS, copy.deepcopy(vs or original))
        self.emulator.requests.clear()
        self.receivers.reset()

    def routing_object(self) -> dict[str, Any]:
        return self.emulator.get_object(*self.object_kind, NS, "errors")

    def weights(self) -> dict[str, int]:
        if self.router == "gateway-api":
            refs = self.routing_object()["spec"]["rules"][0]["backendRefs"]
            return {r["name"].removeprefix("errors-"): r["weight"] for r in refs}
        route = self.routing_object()["spec"]["http"][0]["route"]
        return {r["destination"]["subset"]: r["weight"] for r in route}


def start_actions_world(
    stack_factory: Any,
    prometheus_url: str,
    work: Path,
    name: str,
    settings: dict | None = None,
    router: str = "istio",
) -> ActionsWorld:
    emulator = K8sEmulator().start()
    receivers = ChatReceivers(dingtalk_secret=DINGTALK_SECRET, feishu_secret=FEISHU_SECRET)
    receivers.__enter__()
    kubeconfig = write_kubeconfig(work / "kubeconfig", emulator.url, emulator.token)
    policies = copy.deepcopy(POLICIES)
    if router == "gateway-api":
        policies["policies"]["default"]["actions"]["traffic"] = GATEWAY_TRAFFIC
    (work / "policies.yaml").write_text(yaml.safe_dump(policies))
    targets = {
        "targets": [
            {"name": "team-slack", "kind": "slack", "url": receivers.url("slack"),
             "rate_limit_per_minute": 100},
            {"name": "team-dingtalk", "kind": "dingtalk", "url": receivers.url("dingtalk"),
             "secret_env": "DINGTALK_SECRET", "rate_limit_per_minute": 100},
            {"name": "team-feishu", "kind": "feishu", "url": receivers.url("feishu"),
             "secret_env": "FEISHU_SECRET", "rate_limit_per_minute": 100},
            {"name": "audit", "kind": "generic", "url": receivers.url("generic"),
             "rate_limit_per_minute": 100},
        ]
    }  # fmt: skip
    (work / "targets.yaml").write_text(yaml.safe_dump(targets))
    stack = stack_factory(
        name,
        prometheus_url=prometheus_url,
        settings={
            "ROLLOUT_ANALYZER_POLICIES_FILE": str(work / "policies.yaml"),
            "ROLLOUT_ANALYZER_CHAT_TARGETS_FILE": str(work / "targets.yaml"),
            "ROLLOUT_ANALYZER_KUBECONFIG": str(kubeconfig),
            "ROLLOUT_ANALYZER_REUSE_SECONDS": "1",
            "ROLLOUT_ANALYZER_PROMETHEUS_GRAPH_URL": "https://prometheus.example.com",
            "DINGTALK_SECRET": DINGTALK_SECRET,
            "FEISHU_SECRET": FEISHU_SECRET,
            **(settings or {}),
        },
    )
    world = ActionsWorld(
        stack, emulator, receivers, Celery(broker=stack.env["ROLLOUT_ANALYZER_REDIS_URL"]), router
    )
    world.reset()
    return world


def start_split_actions_world(make, prometheus_url: str, broker_url: str, work_dir: Path):
    """The actions world on a split stack (`make`: conftest.split_stacks): redelivered tasks go
    to the broker, not to the state store."""
    built = start_actions_world(make, prometheus_url, work_dir, "actions")
    return ActionsWorld(built.stack, built.emulator, built.receivers, Celery(broker=broker_url))


def argo_measure(stack, body: dict) -> Measurement:
    """One measurement of the live canary, taken as Argo's web provider takes it."""
    web = WebProvider(
        url=f"{stack.url}/v1/analyze",
        method="POST",
        headers=[("Authorization", f"Bearer {TOKEN}")],
        json_body=body,
        json_path="{$.verdict}",
        timeout_seconds=10,
    )
    with httpx.Client() as client:
        return measure(client, web, 'result == "pass"', 'result == "fail"')


def argo_call(stack, body: dict) -> tuple[Phase, float]:
    began = time.monotonic()
    return argo_measure(stack, body).phase, began


def body(revision: str) -> dict:
    return {"service": "errors", "namespace": NS, "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b",
            "rollout": "errors", "revision": revision}  # fmt: skip
