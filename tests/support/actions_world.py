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
from tests.support.argo import Phase, WebProvider, measure
from tests.support.chat_receivers import ChatReceivers
from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig

NS = "shop"
DINGTALK_SECRET = "SECdingtalk-signing-secret"
FEISHU_SECRET = "feishu-signing-secret"

VIRTUAL_SERVICE = {
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

    @property
    def parts(self) -> tuple[Any, K8sEmulator, ChatReceivers, Celery]:
        return self.stack, self.emulator, self.receivers, self.celery

    def close(self) -> None:
        self.receivers.close()
        self.emulator.stop()

    def reset(self, vs: dict | None = None) -> None:
        """The VirtualService as it was, no faults, no messages."""
        self.emulator.clear_faults()
        self.emulator.rbac = None
        with contextlib.suppress(Exception):  # absent before the first test
            self.emulator.delete_object("networking.istio.io/v1", "virtualservices", NS, "errors")
        self.emulator.create_object(
            "networking.istio.io/v1", "virtualservices", NS, copy.deepcopy(vs or VIRTUAL_SERVICE)
        )
        self.emulator.requests.clear()
        self.receivers.reset()

    def weights(self) -> dict[str, int]:
        vs = self.emulator.get_object("networking.istio.io/v1", "virtualservices", NS, "errors")
        route = vs["spec"]["http"][0]["route"]
        return {r["destination"]["subset"]: r["weight"] for r in route}


def start_actions_world(
    stack_factory: Any, prometheus_url: str, work: Path, name: str, settings: dict | None = None
) -> ActionsWorld:
    emulator = K8sEmulator().start()
    receivers = ChatReceivers(dingtalk_secret=DINGTALK_SECRET, feishu_secret=FEISHU_SECRET)
    receivers.__enter__()
    kubeconfig = write_kubeconfig(work / "kubeconfig", emulator.url, emulator.token)
    (work / "policies.yaml").write_text(yaml.safe_dump(POLICIES))
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
        stack, emulator, receivers, Celery(broker=stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    )
    world.reset()
    return world


def argo_call(stack, body: dict) -> tuple[Phase, float]:
    web = WebProvider(
        url=f"{stack.url}/v1/analyze",
        method="POST",
        headers=[("Authorization", f"Bearer {TOKEN}")],
        json_body=body,
        json_path="{$.verdict}",
        timeout_seconds=10,
    )
    with httpx.Client() as client:
        began = time.monotonic()
        result = measure(client, web, 'result == "pass"', 'result == "fail"')
    return result.phase, began


def body(revision: str) -> dict:
    return {"service": "errors", "namespace": NS, "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b",
            "rollout": "errors", "revision": revision}  # fmt: skip
