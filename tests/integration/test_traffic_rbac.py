"""The shipped Role (deploy/rbac) is all either router needs, and only in its namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support.k8s_emulator import K8sEmulator, RbacRule
from tests.support.traffic_routers import ROUTERS, kube_client
from worker.traffic import rollback

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac"


def shipped_rules(namespace: str) -> list[RbacRule]:
    """deploy/rbac's Role as the emulator's RBAC, bound in `namespace` as kustomize would."""
    role = next(
        d for d in yaml.safe_load_all((RBAC / "role.yaml").read_text()) if d["kind"] == "Role"
    )
    return [
        RbacRule(
            verbs=tuple(rule["verbs"]),
            resources=tuple(rule["resources"]),
            namespaces=(namespace,),
            api_groups=tuple(rule["apiGroups"]),
        )
        for rule in role["rules"]
    ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[K8sEmulator, client.ApiClient]]:
    with K8sEmulator() as emulator:
        for router in ROUTERS:
            router.create(emulator)
        with kube_client(emulator, tmp_path) as api:
            yield emulator, api


@pytest.mark.parametrize("router", ROUTERS, ids=lambda case: case.router)
def test_the_shipped_role_lets_each_router_act_in_its_namespace(world, router) -> None:
    emulator, api = world
    target = router.target()

    emulator.rbac = shipped_rules("shop")
    assert rollback(api, target).status == "applied"

    emulator.rbac = shipped_rules("rollouts-demo")  # bound elsewhere: nothing here
    denied = rollback(api, target)
    assert denied.status == "failed" and (denied.reason or "").startswith("forbidden")
