"""deploy/ and the Dockerfile, checked offline as a platform team would before `kubectl apply -k`.

Every kustomization is rendered with `kubectl kustomize`; built-in objects are validated against
Kubernetes' own schemas (kubernetes-validate, strict: unknown fields are errors, as with
`kubectl apply`'s default server-side field validation), Argo Rollouts and Istio objects against
the real CRDs in shared/schemas. Then the promises of docs/install.md: hardened pods, probes,
least-privilege RBAC, no Secret values, ingress only from argo-rollouts and monitoring, and an
Argo template whose request the service itself accepts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from analysis.policy import PolicySet
from analysis.request import parse_request, resolve
from tests.support.crd_schema import crd_info, validator_for
from tests.support.reference_data import SCHEMAS_DIR
from worker.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ARGO_DIR = DEPLOY / "argo"
CRD_DIR = SCHEMAS_DIR
DOCS = REPO / "docs" / "install.md"

# The oldest Kubernetes we claim to support, and the newest whose schemas the package ships.
MIN_KUBERNETES = "1.30"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.latest_version())

NAMESPACE = "rollout-analyzer"
WEBHOOK_URL = "http://rollout-analyzer.rollout-analyzer.svc:8080/v1/analyze"
EVENTS_URL = "http://rollout-analyzer.rollout-analyzer.svc:8080/v1/events/argo-rollouts"
QUEUE = "rollout-analyzer"
# Namespaces whose pods may open connections to ours; KEDA only in overlays that use it.
ADMITTED_NAMESPACES = {"argo-rollouts", "monitoring"}
KEDA_NAMESPACE = "keda"
TRAFFIC_VERBS = {"get", "list", "watch", "patch"}
# Kinds of optional add-ons without a schema here; their structure is checked by tests below.
ADDON_KINDS = {
    ("keda.sh", "ScaledObject"),
    ("keda.sh", "TriggerAuthentication"),
    ("monitoring.coreos.com", "PodMonitor"),
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Rollout"}
NOTIFICATION_TRIGGERS = {
    "on-rollout-step-completed": "rollout-step-completed",
    "on-rollout-aborted": "rollout-aborted",
    "on-rollout-completed": "rollout-completed",
    "on-analysis-run-failed": "analysis-run-failed",
}

Obj = dict[str, Any]


# --- loading ---------------------------------------------------------------------------------


def _kustomizations() -> list[Path]:
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


KUSTOMIZATIONS = _kustomizations()
KUSTOMIZATION_IDS = [str(p.relative_to(DEPLOY)) for p in KUSTOMIZATIONS]


@functools.cache
def render(directory: Path) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/"
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def load_file(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def argo_files() -> list[Path]:
    return sorted(p for p in ARGO_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def all_objects() -> Iterator[tuple[str, Obj]]:
    """Every object a user can apply: each kustomization's output and each loose manifest."""
    for directory in KUSTOMIZATIONS:
        for obj in render(directory):
            yield str(directory.relative_to(DEPLOY)), obj
    for path in [*argo_files(), *sorted((DEPLOY / "monitoring").glob("*.yaml"))]:
        for obj in load_file(path):
            yield str(path.relative_to(DEPLOY)), obj


def group_of(obj: Obj) -> str:
    api_version = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def is_builtin(obj: Obj) -> bool:
    group = group_of(obj)
    return "." not in group or group.endswith(".k8s.io")


def find(objects: tuple[Obj, ...] | list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def the(objects: tuple[Obj, ...] | list[Obj], kind: str, name: str) -> Obj:
    matches = find(objects, kind, name)
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def named_config_map(objects: tuple[Obj, ...], name: str) -> Obj:
    """A ConfigMap by its generated name (kustomize appends a content hash)."""
    (config,) = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == name]
    return config


def generated_config_map(objects: tuple[Obj, ...], prefix: str) -> Obj:
    (config,) = [
        o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith(prefix + "-")
    ]
    return config


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = set(expression.get("values") or [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@functools.cache
def crd_validators() -> dict[tuple[str, str, str], Callable[[Obj], None]]:
    validators = {}
    for path in sorted(CRD_DIR.glob("*.crd.yaml")):
        info = crd_info(path)
        for version in info.served_versions:
            validators[(info.group, version, info.kind)] = validator_for(path, version)
    return validators


# --- rendering and schemas -------------------------------------------------------------------


def test_the_documented_kustomizations_exist() -> None:
    expected = {"base", "rbac", "argo", "overlays/dev", "overlays/production", "overlays/keda"}
    assert expected <= set(KUSTOMIZATION_IDS)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_kustomization_renders_named_objects(directory: Path) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_our_namespaced_objects_land_in_a_namespace(directory: Path) -> None:
    for obj in render(directory):
        if obj["kind"] in {"Namespace", "ClusterAnalysisTemplate", "ClusterRole"}:
            continue
        assert obj["metadata"].get("namespace"), f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_kubernetes_schemas(version: str) -> None:
    checked = 0
    for source, obj in all_objects():
        if not is_builtin(obj):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{source}: {obj['kind']}/{obj['metadata']['name']} {path}: {exc.message}")
        checked += 1
    assert checked > 30


def test_argo_and_istio_objects_match_their_crds() -> None:
    validators = crd_validators()
    kinds_seen = set()
    for source, obj in all_objects():
        if is_builtin(obj) or (group_of(obj), obj["kind"]) in ADDON_KINDS:
            continue
        group, version = obj["apiVersion"].split("/")
        key = (group, version, obj["kind"])
        assert key in validators, f"{source}: no CRD schema for {obj['apiVersion']} {obj['kind']}"
        validators[key](obj)
        kinds_seen.add(obj["kind"])
    assert kinds_seen == {
        "AnalysisTemplate",
        "ClusterAnalysisTemplate",
        "Rollout",
        "VirtualService",
        "DestinationRule",
    }


def test_crd_validation_rejects_a_misspelt_field() -> None:
    """The CRD check is strict: a typo in a template is an error, not silently pruned."""
    template = load_file(ARGO_DIR / "analysistemplate.yaml")[0]
    broken = json.loads(json.dumps(template))
    broken["spec"]["metrics"][0]["provider"]["web"]["jsonpath"] = "{$.verdict}"
    validate = crd_validators()[("argoproj.io", "v1alpha1", "AnalysisTemplate")]
    with pytest.raises(ValueError, match="jsonpath"):
        validate(broken)


def test_cluster_scoped_objects_carry_no_namespace() -> None:
    for source, obj in all_objects():
        if obj["kind"] in {"ClusterAnalysisTemplate", "Namespace", "ClusterRole"}:
            assert "namespace" not in obj["metadata"], source


# --- pods ------------------------------------------------------------------------------------


def workloads() -> Iterator[tuple[str, Obj]]:
    for source, obj in all_objects():
        if obj["kind"] in POD_TEMPLATE_KINDS:
            yield source, obj


def _effective(container: Obj, pod: Obj, field: str) -> Any:
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (pod.get("securityContext") or {}).get(field)


def test_every_container_is_hardened_and_bounded() -> None:
    checked = 0
    for source, workload in workloads():
        pod = pod_spec(workload)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{source}: {workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound) or {}), f"{where} {bound}"
            assert container.get("livenessProbe"), f"{where}: no liveness probe"
            if container.get("ports"):
                assert container.get("readinessProbe"), f"{where}: serves but no readiness"
            assert _effective(container, pod, "runAsNonRoot") is True, where
            security = container.get("securityContext") or {}
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in ((security.get("capabilities") or {}).get("drop") or []), where
            assert not (security.get("capabilities") or {}).get("add"), where
            seccomp = _effective(container, pod, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_writable_paths_are_volumes(directory: Path) -> None:
    """With a read-only root, /tmp must be an emptyDir (Python's tempfile, Celery)."""
    for workload in [o for o in render(directory) if o["kind"] in POD_TEMPLATE_KINDS]:
        if workload["metadata"].get("namespace") != NAMESPACE:
            continue
        pod = pod_spec(workload)
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty_dirs, workload["metadata"]["name"]


def _ours(directory: str) -> tuple[Obj, ...]:
    return render(DEPLOY / directory)


@pytest.mark.parametrize("overlay", ["base", "overlays/production", "overlays/keda"])
def test_webhook_runs_replicated_probed_and_spread(overlay: str) -> None:
    objects = _ours(overlay)
    webhook = the(objects, "Deployment", "rollout-analyzer-webhook")
    hpa = the(objects, "HorizontalPodAutoscaler", "rollout-analyzer-webhook")
    assert webhook["spec"]["replicas"] >= 2
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rollout-analyzer-webhook",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pod = pod_spec(webhook)
    (container,) = pod["containers"]
    assert container["command"] == ["rollout-analyzer"]
    assert container["args"][0] == "serve"
    # Settings default to 127.0.0.1; a pod must listen on all interfaces.
    assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    annotations = webhook["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "8080"


@pytest.mark.parametrize("overlay", ["base", "overlays/production", "overlays/dev"])
def test_worker_shuts_down_gracefully_and_is_pinged(overlay: str) -> None:
    worker = the(_ours(overlay), "Deployment", "rollout-analyzer-worker")
    pod = pod_spec(worker)
    # Analyses are hard-limited to 45 s; Celery's warm shutdown waits for them.
    assert pod["terminationGracePeriodSeconds"] >= 60
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "worker" and int(args[args.index("--concurrency") + 1]) >= 1
    liveness = container["livenessProbe"]
    assert liveness["exec"]["command"] == ["rollout-analyzer", "worker-ping"]
    # worker-ping waits up to 5 s for the Celery reply, plus interpreter start-up.
    assert liveness["timeoutSeconds"] > 5
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname"
    }


def test_dev_overlay_is_one_pod_each_with_debug_logs_and_no_autoscaler() -> None:
    objects = _ours("overlays/dev")
    for name in ("rollout-analyzer-webhook", "rollout-analyzer-worker"):
        assert the(objects, "Deployment", name)["spec"]["replicas"] == 1
    assert not find(objects, "HorizontalPodAutoscaler")
    assert settings_data(objects)["ROLLOUT_ANALYZER_LOG_LEVEL"] == "DEBUG"
    assert settings_data(_ours("base"))["ROLLOUT_ANALYZER_LOG_LEVEL"] == "INFO"


def test_production_overlay_spreads_hard_and_scales_further() -> None:
    objects = _ours("overlays/production")
    for name in ("rollout-analyzer-webhook", "rollout-analyzer-worker"):
        deployment = the(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] >= 3
        per_node = [
            c
            for c in pod_spec(deployment)["topologySpreadConstraints"]
            if c["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert [c["whenUnsatisfiable"] for c in per_node] == ["DoNotSchedule"]
    production = the(objects, "HorizontalPodAutoscaler", "rollout-analyzer-webhook")
    base = the(_ours("base"), "HorizontalPodAutoscaler", "rollout-analyzer-webhook")
    assert production["spec"]["minReplicas"] >= 3
    assert production["spec"]["maxReplicas"] > base["spec"]["maxReplicas"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_disruption_budgets_and_services_select_real_pods(directory: Path) -> None:
    objects = render(directory)
    pods = [
        (w, w["spec"]["template"]["metadata"]["labels"])
        for w in objects
        if w["kind"] in POD_TEMPLATE_KINDS
    ]
    for pdb in find(objects, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"], labels) for _, labels in pods), pdb
        # Never "minAvailable: 100%"-style budgets that block node drains.
        assert pdb["spec"].get("maxUnavailable", 0) >= 1
    for service in find(objects, "Service"):
        matching = [
            w for w, labels in pods if selects({"matchLabels": service["spec"]["selector"]}, labels)
        ]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        port_names = {
            p.get("name")
            for w in matching
            for c in pod_spec(w)["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in port_names, service["metadata"]["name"]
    if directory.name == "base":
        assert {p["metadata"]["name"] for p in find(objects, "PodDisruptionBudget")} == {
            "rollout-analyzer-webhook",
            "rollout-analyzer-worker",
        }


# --- settings and Redis ----------------------------------------------------------------------


def settings_data(objects: tuple[Obj, ...]) -> dict[str, str]:
    (config,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"].startswith("rollout-analyzer-settings")
    ]
    data: dict[str, str] = config["data"]
    return data


def container_environment(objects: tuple[Obj, ...], deployment: str) -> dict[str, str]:
    """The container's ROLLOUT_ANALYZER_* variables as the kubelet would set them, with
    placeholder Secret values and $(VAR) references expanded."""
    (container,) = pod_spec(the(objects, "Deployment", deployment))["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            config = named_config_map(objects, name)
            env.update({source.get("prefix", "") + k: v for k, v in config["data"].items()})
        else:
            assert source["secretRef"].get("optional") is True, "only optional Secrets as envFrom"
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = f"secret-{ref['name']}-{ref['key']}"
        else:
            env[variable["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env[m.group(1)], variable["value"]
            )
    return env


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/production"])
@pytest.mark.parametrize("deployment", ["rollout-analyzer-webhook", "rollout-analyzer-worker"])
def test_environment_is_accepted_by_the_settings_and_points_at_our_redis(
    overlay: str, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _ours(overlay)
    env = container_environment(objects, deployment)
    ours = {k: v for k, v in env.items() if k.startswith("ROLLOUT_ANALYZER_")}
    # Named in the settings contract but read outside `Settings` (worker side effects).
    read_elsewhere = {"ROLLOUT_ANALYZER_KUBE_IN_CLUSTER", "ROLLOUT_ANALYZER_CHAT_TARGETS_FILE"}
    known = {"ROLLOUT_ANALYZER_" + name.upper() for name in Settings.model_fields}
    assert set(ours) - known <= read_elsewhere, set(ours) - known - read_elsewhere
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.wait_seconds == 8
    assert settings.reuse_seconds == 15
    assert settings.result_ttl_seconds == 86400
    assert settings.queue == QUEUE
    password = "secret-rollout-analyzer-redis-password"
    for url in (settings.redis_url, settings.broker, settings.backend):
        assert url == f"redis://:{password}@rollout-analyzer-redis:6379/0"
    the(objects, "Service", "rollout-analyzer-redis")
    # The policies file the settings name is where the policies ConfigMap is mounted.
    assert settings.policies_file is not None
    pod = pod_spec(the(objects, "Deployment", deployment))
    mount = next(
        m
        for m in pod["containers"][0]["volumeMounts"]
        if settings.policies_file.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config = next(
        o
        for o in find(objects, "ConfigMap")
        if o["metadata"]["name"] == volume["configMap"]["name"]
    )
    assert settings.policies_file.removeprefix(mount["mountPath"] + "/") in config["data"]
    if deployment.endswith("webhook"):
        assert "ROLLOUT_ANALYZER_API_TOKEN" in ours


def test_external_redis_overlay_drops_the_bundled_redis_and_reads_urls_from_a_secret() -> None:
    objects = _ours("overlays/external-redis")
    assert not find(objects, "StatefulSet")
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    for deployment in ("rollout-analyzer-webhook", "rollout-analyzer-worker"):
        (container,) = pod_spec(the(objects, "Deployment", deployment))["containers"]
        by_name = {e["name"]: e for e in container["env"]}
        assert "REDIS_PASSWORD" not in by_name
        for name in ("REDIS_URL", "BROKER_URL", "RESULT_BACKEND"):
            variable = by_name["ROLLOUT_ANALYZER_" + name]
            assert "value" not in variable
            assert variable["valueFrom"]["secretKeyRef"]["name"] == "rollout-analyzer-redis-urls"


def test_redis_keeps_its_queue_on_disk_with_an_everysec_append_only_file() -> None:
    objects = _ours("base")
    redis = the(objects, "StatefulSet", "rollout-analyzer-redis")
    claims = redis["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    (container,) = pod_spec(redis)["containers"]
    assert {"name": "data", "mountPath": "/data"}.items() <= next(
        m for m in container["volumeMounts"] if m["name"] == "data"
    ).items()
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_file = next(a for a in container["args"] if a.startswith(config_mount["mountPath"]))
    volume = next(v for v in pod_spec(redis)["volumes"] if v["name"] == "config")
    config_map = next(
        o
        for o in find(objects, "ConfigMap")
        if o["metadata"]["name"] == volume["configMap"]["name"]
    )
    text = config_map["data"][Path(config_file).name]
    directives = dict(
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["dir"] == "/data"
    # A queue must never be evicted under memory pressure.
    assert directives["maxmemory-policy"] == "noeviction"
    assert "--requirepass" in container["args"]
    service = the(objects, "Service", "rollout-analyzer-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]


def test_redis_config_is_accepted_by_a_real_redis_server(tmp_path: Path) -> None:
    """Redis refuses to start on an unknown or malformed directive: start it on the shipped file
    (paths and listener moved into tmp_path) and read the persistence settings back."""
    server = shutil.which("redis-server")
    assert server, "redis-server is installed by `make system-deps`"
    socket = tmp_path / "redis.sock"
    text = (DEPLOY / "base" / "redis.conf").read_text().replace("/data", str(tmp_path))
    text = text.replace("bind * -::*", "bind 127.0.0.1")
    config = tmp_path / "redis.conf"
    config.write_text(f"{text}\nport 0\nunixsocket {socket}\n")
    process = subprocess.Popen(
        [server, str(config), "--requirepass", "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cli = ["redis-cli", "-s", str(socket), "--no-auth-warning", "-a", "x"]
    try:
        answer = ""
        for _ in range(200):
            assert process.poll() is None, process.communicate()[0]
            probe = subprocess.run(
                [*cli, "config", "get", "append*"], capture_output=True, text=True, check=False
            )
            answer = probe.stdout
            if probe.returncode == 0 and "appendonly" in answer:
                break
            time.sleep(0.05)
        settings = dict(zip(answer.split()[::2], answer.split()[1::2], strict=True))
        assert settings["appendonly"] == "yes"
        assert settings["appendfsync"] == "everysec"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert (tmp_path / "appendonlydir").is_dir()


# --- policies --------------------------------------------------------------------------------


def test_policies_config_map_loads_with_http_and_istio_presets() -> None:
    objects = _ours("base")
    config = generated_config_map(objects, "rollout-analyzer-policies")
    policies = PolicySet.from_yaml(config["data"]["policies.yaml"])
    assert {"http", "istio"} <= set(policies.names())
    for name in ("http", "istio"):
        policy = policies.get(name)
        assert policy is not None and policy.preset == name
        assert 0 < policy.thresholds.slo < 1 and policy.thresholds.min_requests >= 1


# --- RBAC, Secrets, NetworkPolicy ------------------------------------------------------------


ROUTERS = [
    (["networking.istio.io"], ["virtualservices"]),
    (["gateway.networking.k8s.io"], ["httproutes"]),
]


def test_rbac_grants_only_reading_and_patching_routing_objects_in_a_namespace() -> None:
    roles = []
    for source, obj in all_objects():
        assert obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}, source
        if obj["kind"] == "Role":
            roles.append(obj)
            # Exactly one rule per router: Istio VirtualServices, Gateway API HTTPRoutes.
            assert [(r["apiGroups"], r["resources"]) for r in obj["rules"]] == ROUTERS, source
            for rule in obj["rules"]:
                assert set(rule["verbs"]) <= TRAFFIC_VERBS, source
        if obj["kind"] == "RoleBinding":
            assert obj["roleRef"]["kind"] == "Role", source
            assert obj["subjects"] == [
                {"kind": "ServiceAccount", "name": "rollout-analyzer", "namespace": NAMESPACE}
            ], source
    assert roles
    rbac = render(DEPLOY / "rbac")
    role = the(rbac, "Role", "rollout-analyzer-traffic")
    assert all(set(rule["verbs"]) == TRAFFIC_VERBS for rule in role["rules"])
    binding = the(rbac, "RoleBinding", "rollout-analyzer-traffic")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def test_granting_another_namespace_keeps_the_subject(tmp_path: Path) -> None:
    """The recipe in deploy/rbac/kustomization.yaml and docs/install.md, run for real."""
    overlay = tmp_path / "rbac-shop"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"namespace: shop\nresources: [{os.path.relpath(DEPLOY / 'rbac', overlay)}]\n"
    )
    objects = render(overlay)
    assert {o["metadata"]["namespace"] for o in objects} == {"shop"}
    binding = the(objects, "RoleBinding", "rollout-analyzer-traffic")
    assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_no_secret_with_values_is_shipped() -> None:
    for source, obj in all_objects():
        assert obj["kind"] != "Secret", f"{source}: ship references, not Secrets"
    for path in DEPLOY.rglob("*.yaml"):
        for obj in load_file(path):
            if obj.get("kind") == "Secret":
                pytest.fail(f"{path}: Secret manifest")
            if obj.get("kind") == "Kustomization":
                assert "secretGenerator" not in obj, path


def referenced_secrets() -> set[str]:
    names = set()
    for _, obj in all_objects():
        text = json.dumps(obj)
        names |= set(re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', text))
        names |= set(re.findall(r'"secretKeyRef": \{"key": "[^"]+", "name": "([^"]+)"', text))
        names |= set(re.findall(r'"secretRef": \{"name": "([^"]+)"', text))
        if obj["kind"] == "TriggerAuthentication":
            names |= {ref["name"] for ref in obj["spec"]["secretTargetRef"]}
    return names


def test_every_referenced_secret_has_a_documented_create_command() -> None:
    docs = DOCS.read_text()
    names = referenced_secrets()
    assert {"rollout-analyzer-api-token", "rollout-analyzer-redis"} <= names
    for name in names | {"argo-rollouts-notification-secret"}:
        assert re.search(rf"kubectl .*(create secret generic|patch secret) {name}\s", docs), name


def test_secrets_a_pod_cannot_start_without_are_the_documented_ones() -> None:
    """Optional Secrets may be missing at install; these must be created first (docs step 2, and
    the external-redis overlay's URLs)."""
    required = set()
    for _, obj in all_objects():
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        if obj["metadata"].get("namespace") != NAMESPACE:
            continue
        for container in pod_spec(obj)["containers"]:
            for variable in container.get("env", []):
                ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    required.add(ref["name"])
    assert required == {
        "rollout-analyzer-api-token",
        "rollout-analyzer-redis",
        "rollout-analyzer-redis-urls",
    }


def _peers(policy: Obj) -> Iterator[Obj]:
    for rule in policy["spec"].get("ingress") or []:
        assert rule.get("from"), "an ingress rule without `from` admits every source"
        yield from rule["from"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_network_policies_admit_only_argo_rollouts_and_monitoring(directory: Path) -> None:
    objects = render(directory)
    policies = find(objects, "NetworkPolicy")
    for policy in policies:
        target = policy["spec"]["podSelector"]
        assert "Ingress" in policy["spec"]["policyTypes"]
        for peer in _peers(policy):
            assert "ipBlock" not in peer, policy["metadata"]["name"]
            if "namespaceSelector" not in peer:
                continue  # a bare podSelector: pods of our own namespace
            match = peer["namespaceSelector"].get("matchLabels") or {}
            assert set(match) == {"kubernetes.io/metadata.name"}, policy["metadata"]["name"]
            admitted = match["kubernetes.io/metadata.name"]
            if admitted == KEDA_NAMESPACE:
                # KEDA reads the queue length from Redis and reaches nothing else.
                assert target["matchLabels"]["app.kubernetes.io/component"] == "redis"
            else:
                assert admitted in ADMITTED_NAMESPACES, policy["metadata"]["name"]
    ours = [
        w
        for w in objects
        if w["kind"] in {"Deployment", "StatefulSet"}
        and w["metadata"].get("namespace") == NAMESPACE
    ]
    for workload in ours:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies), (
            f"{workload['metadata']['name']} is not isolated by any NetworkPolicy"
        )


def test_webhook_admits_argo_rollouts_and_monitoring_on_its_http_port() -> None:
    objects = _ours("base")
    policy = the(objects, "NetworkPolicy", "rollout-analyzer-webhook")
    admitted = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in _peers(policy)
    }
    assert admitted == ADMITTED_NAMESPACES
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]
    worker = the(objects, "NetworkPolicy", "rollout-analyzer-worker")
    assert not worker["spec"].get("ingress")


# --- add-ons: KEDA, PodMonitor ---------------------------------------------------------------


def test_keda_scales_the_workers_on_the_celery_queue_length() -> None:
    objects = _ours("overlays/keda")
    scaled = the(objects, "ScaledObject", "rollout-analyzer-worker")
    assert scaled["metadata"]["namespace"] == NAMESPACE
    target = scaled["spec"]["scaleTargetRef"]
    worker = the(objects, "Deployment", target["name"])
    assert pod_spec(worker)["containers"][0]["args"][0] == "worker"
    # Never to zero: /readyz needs a live worker.
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == QUEUE
    assert trigger["metadata"]["address"] == "rollout-analyzer-redis.rollout-analyzer.svc:6379"
    assert int(trigger["metadata"]["listLength"]) >= 1
    auth = the(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "rollout-analyzer-redis", "key": "password"}
    ]
    # Same database as the broker URL the workers consume from.
    env = container_environment(objects, "rollout-analyzer-worker")
    assert env["ROLLOUT_ANALYZER_BROKER_URL"].endswith("/" + trigger["metadata"]["databaseIndex"])


def test_pod_monitor_scrapes_the_webhook_metrics_port() -> None:
    (monitor,) = load_file(DEPLOY / "monitoring" / "podmonitor.yaml")
    assert monitor["metadata"]["namespace"] == NAMESPACE
    webhook = the(_ours("base"), "Deployment", "rollout-analyzer-webhook")
    assert selects(monitor["spec"]["selector"], webhook["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"] for p in pod_spec(webhook)["containers"][0]["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# --- Argo Rollouts ---------------------------------------------------------------------------


def analysis_templates() -> list[Obj]:
    return [
        *load_file(ARGO_DIR / "analysistemplate.yaml"),
        *load_file(ARGO_DIR / "clusteranalysistemplate.yaml"),
    ]


def substitute_args(value: Any, args: dict[str, str]) -> Any:
    """Argo's {{args.NAME}} substitution, failing on an argument the template does not declare."""
    if isinstance(value, dict):
        return {k: substitute_args(v, args) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_args(v, args) for v in value]
    if isinstance(value, str):
        return re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: args[m.group(1)], value)
    return value


@pytest.mark.parametrize("template", analysis_templates(), ids=lambda t: t["kind"])
def test_analysis_template_calls_the_webhook_as_the_web_provider_spec_says(template: Obj) -> None:
    args = {a["name"]: a for a in template["spec"]["args"]}
    assert {"service", "namespace", "rollout", "canary-hash", "stable-hash", "api-token"} <= set(
        args
    )
    assert args["api-token"]["valueFrom"]["secretKeyRef"] == {
        "name": "rollout-analyzer-api-token",
        "key": "token",
    }
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["method"] == "POST"
    assert web["url"] == WEBHOOK_URL
    assert "body" not in web, "never both body and jsonBody"
    assert web["headers"] == [{"key": "Authorization", "value": "Bearer {{args.api-token}}"}]
    assert web["jsonPath"] == "{$.verdict}"
    assert metric["successCondition"] == 'result == "pass"'
    assert metric["failureCondition"] == 'result == "fail"'
    # The webhook answers within WAIT_SECONDS (8) or 503: under the caller's timeout.
    wait = float(settings_data(_ours("base"))["ROLLOUT_ANALYZER_WAIT_SECONDS"])
    assert wait < web.get("timeoutSeconds", 10) <= 10
    # 503s are Errors retried every 10 s; the default limit (4) is too tight for a 45 s analysis.
    assert metric["consecutiveErrorLimit"] > 4
    assert metric["initialDelay"] and int(metric["inconclusiveLimit"]) >= 1
    placeholders = set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", json.dumps(metric)))
    assert placeholders <= set(args)
    assert web["jsonBody"]["canary"] == "{{args.canary-hash}}"
    assert web["jsonBody"]["baseline"] == "{{args.stable-hash}}"


def test_the_rendered_request_is_one_the_service_accepts_with_the_shipped_policies() -> None:
    """What Argo would POST for the example Rollout, checked by the service's own request code."""
    argo = render(ARGO_DIR)
    rollout = the(argo, "Rollout", "checkout")
    template = the(argo, "AnalysisTemplate", "rollout-analyzer")
    policies_text = (DEPLOY / "base" / "policies.yaml").read_text()
    policies = PolicySet.from_yaml(policies_text)
    steps = [
        s["analysis"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s
    ]
    assert steps
    hashes = {"Latest": "6d4f8c7b9", "Stable": "5c8d7f6b4"}
    for step in steps:
        assert [t["templateName"] for t in step["templates"]] == [template["metadata"]["name"]]
        given: dict[str, str] = {}
        for arg in step["args"]:
            source = arg.get("valueFrom") or {}
            if "value" in arg:
                given[arg["name"]] = arg["value"]
            elif "podTemplateHashValue" in source:
                given[arg["name"]] = hashes[source["podTemplateHashValue"]]
            else:
                field = source["fieldRef"]["fieldPath"]
                assert field in {"metadata.name", "metadata.namespace"}
                given[arg["name"]] = rollout["metadata"][field.split(".")[1]]
        assert rollout_arg_sources(step) == {"canary-hash": "Latest", "stable-hash": "Stable"}
        values = {}
        for arg in template["spec"]["args"]:
            if arg["name"] in given:
                values[arg["name"]] = given[arg["name"]]
            elif "value" in arg:
                values[arg["name"]] = arg["value"]
            elif "secretKeyRef" in (arg.get("valueFrom") or {}):
                values[arg["name"]] = "token-from-secret"
            else:
                pytest.fail(f"argument {arg['name']} is given neither by the Rollout nor a default")
        web = template["spec"]["metrics"][0]["provider"]["web"]
        body = substitute_args(web["jsonBody"], values)
        request = parse_request(body)
        spec = resolve(request, policies, now=1_800_000_000.0)
        assert spec.canary == hashes["Latest"] and spec.baseline == hashes["Stable"]
        assert spec.rollout == "checkout" and spec.namespace == "rollouts-demo"
        assert spec.policy.name == "istio" and spec.policy.preset == "istio"
        headers = substitute_args(web["headers"], values)
        assert headers == [{"key": "Authorization", "value": "Bearer token-from-secret"}]


def rollout_arg_sources(step: Obj) -> dict[str, str]:
    return {
        a["name"]: a["valueFrom"]["podTemplateHashValue"]
        for a in step["args"]
        if "podTemplateHashValue" in (a.get("valueFrom") or {})
    }


def test_the_url_names_the_webhook_service_of_the_base() -> None:
    service = the(_ours("base"), "Service", "rollout-analyzer")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    (port,) = service["spec"]["ports"]
    assert WEBHOOK_URL.startswith(f"http://{host}:{port['port']}/")
    assert EVENTS_URL.startswith(f"http://{host}:{port['port']}/")


def test_example_rollout_routes_through_istio_objects_it_ships_with() -> None:
    argo = render(ARGO_DIR)
    rollout = the(argo, "Rollout", "checkout")
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["canaryMetadata"]["labels"] and canary["stableMetadata"]["labels"]
    istio = canary["trafficRouting"]["istio"]
    service = the(argo, "VirtualService", istio["virtualService"]["name"])
    rule = the(argo, "DestinationRule", istio["destinationRule"]["name"])
    subsets = {s["name"] for s in rule["spec"]["subsets"]}
    assert {
        istio["destinationRule"]["canarySubsetName"],
        istio["destinationRule"]["stableSubsetName"],
    } == subsets
    routes = {r["name"]: r for r in service["spec"]["http"]}
    for name in istio["virtualService"]["routes"]:
        destinations = routes[name]["route"]
        assert {d["destination"]["subset"] for d in destinations} == subsets
        assert sum(d["weight"] for d in destinations) == 100
        assert {d["destination"]["host"] for d in destinations} == {rule["spec"]["host"]}
    app_service = the(argo, "Service", rule["spec"]["host"])
    assert selects(
        {"matchLabels": app_service["spec"]["selector"]},
        rollout["spec"]["template"]["metadata"]["labels"],
    )
    weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
    assert weights == sorted(weights) and weights[-1] < 100
    # Every weight is judged before the next one.
    kinds = [next(iter(s)) for s in canary["steps"]]
    assert kinds[-1] == "analysis"
    assert all(kinds[i + 1] == "analysis" for i, k in enumerate(kinds) if k == "setWeight")


def test_the_demo_namespace_is_granted_traffic_control() -> None:
    argo = render(ARGO_DIR)
    role = the(argo, "Role", "rollout-analyzer-traffic")
    rollout = the(argo, "Rollout", "checkout")
    assert role["metadata"]["namespace"] == rollout["metadata"]["namespace"] == "rollouts-demo"


# --- Argo Rollouts notifications -------------------------------------------------------------


def render_go_template(text: str, context: Obj) -> str:
    """The two Go-template forms the notification bodies use: {{.a.b}} and
    {{index .a.b "key"}}. Anything else fails, so a new construct gets a test first."""

    def lookup(path: str) -> Any:
        value: Any = context
        for part in path.strip(".").split("."):
            value = value[part]
        return value

    def evaluate(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if re.fullmatch(r"\.[\w.]+", expression):
            return str(lookup(expression))
        indexed = re.fullmatch(r'index (\.[\w.]+) "([^"]+)"', expression)
        assert indexed, f"unsupported template expression {expression!r}"
        return str(lookup(indexed.group(1))[indexed.group(2)])

    return re.sub(r"\{\{(.*?)\}\}", evaluate, text)


def notification_config() -> dict[str, str]:
    (config,) = load_file(ARGO_DIR / "notifications-configmap.yaml")
    assert config["metadata"] == {
        "name": "argo-rollouts-notification-configmap",
        "namespace": "argo-rollouts",
    }
    data: dict[str, str] = config["data"]
    return data


def test_notification_service_posts_to_our_events_endpoint_with_the_token() -> None:
    service = yaml.safe_load(notification_config()["service.webhook.rollout-analyzer"])
    assert service["url"] == EVENTS_URL
    headers = {h["name"]: h["value"] for h in service["headers"]}
    assert headers["Content-Type"] == "application/json"
    # $name is replaced by that key of argo-rollouts-notification-secret.
    assert re.fullmatch(r"Bearer \$[\w-]+", headers["Authorization"])
    key = headers["Authorization"].split("$", 1)[1]
    assert f"{key}=" in DOCS.read_text()


@pytest.mark.parametrize("trigger", sorted(NOTIFICATION_TRIGGERS))
def test_notification_trigger_sends_a_json_event_about_the_rollout(trigger: str) -> None:
    data = notification_config()
    (condition,) = yaml.safe_load(data[f"trigger.{trigger}"])
    assert condition["send"]
    argo = render(ARGO_DIR)
    rollout = json.loads(json.dumps(the(argo, "Rollout", "checkout")))
    rollout["metadata"].setdefault("annotations", {})["rollout.argoproj.io/revision"] = "7"
    rollout["status"] = {"phase": "Progressing"}
    for name in condition["send"]:
        template = yaml.safe_load(data[f"template.{name}"])
        request = template["webhook"]["rollout-analyzer"]
        assert request["method"] == "POST"
        body = json.loads(render_go_template(request["body"], {"rollout": rollout}))
        assert body == {
            "event": NOTIFICATION_TRIGGERS[trigger],
            "rollout": "checkout",
            "namespace": "rollouts-demo",
            "revision": "7",
            "phase": "Progressing",
        }
    subscription = f"notifications.argoproj.io/subscribe.{trigger}.rollout-analyzer"
    assert subscription in rollout["metadata"]["annotations"]


# --- image -----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_builds_a_wheel_then_runs_it_as_non_root_without_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    # The versions the suite passed on (constraints.txt), not the newest of the day.
    assert any(re.search(r"\bpip wheel\b.* -c constraints\.txt\b", line) for line in build)
    text = (REPO / "Dockerfile").read_text()
    base_image = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base_image and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base_image.group(1))
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    # Numeric, so the kubelet can enforce runAsNonRoot; and not root.
    assert user.isdigit() and int(user) != 0
    final_text = "\n".join(final)
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "apt-get install"):
        assert tool not in final_text, tool
    assert re.search(r'ENTRYPOINT \["rollout-analyzer"\]', final_text)
    # The deployments run as the image's user.
    for workload in ("rollout-analyzer-webhook", "rollout-analyzer-worker"):
        pod = pod_spec(the(_ours("base"), "Deployment", workload))
        assert str(pod["securityContext"]["runAsUser"]) == user


def test_dockerignore_keeps_secrets_and_junk_out_but_the_package_in() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= ignored
    for needed in ("pyproject.toml", "README.md", "analysis", "worker", "webhooks", "cli"):
        assert needed not in ignored


def test_install_guide_walks_from_apply_to_an_analysed_step() -> None:
    docs = DOCS.read_text()
    for step in (
        "kubectl apply -k deploy/overlays/production",
        "kubectl apply -k deploy/argo",
        "kubectl apply -k deploy/overlays/keda",
        "argo-rollouts-notification-configmap",
        "sentinel",
        "kubectl argo rollouts",
    ):
        assert step in docs, step
