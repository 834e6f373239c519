"""An in-process Kubernetes API server for namespaced custom resources, for tests.

It speaks the real wire protocol (the official `kubernetes` client talks to it through a kubeconfig
from `write_kubeconfig`) and keeps the API semantics our code depends on:

- GET (object, list), POST, PUT, DELETE and PATCH on
  `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]` for every registered resource
  (`register_crd` reads a CRD file; Istio's VirtualService and the Gateway API's HTTPRoute CRDs
  are registered by default);
- optimistic concurrency: a global `resourceVersion` that changes on every write that changes the
  object (a no-op write keeps it, as etcd does), 409 Conflict for a stale `resourceVersion` on
  PUT (which requires one, as for every custom resource) or inside a patch;
- `metadata.generation` bumps when anything outside `metadata` and `status` changes;
- PATCH as `application/json-patch+json` (RFC 6902 incl. `test`: failure -> 422 Invalid),
  `application/merge-patch+json` (RFC 7386); strategic merge -> 415, as for custom resources;
- every stored object is validated against the CRD's `openAPIV3Schema` (422 Invalid);
- bearer-token authentication (401) and an RBAC rule list (403 with Kubernetes' message);
- Status objects in Kubernetes' shape for every error;
- test hooks: `fail_next`, `delay_next`, `run_before` / `run_after` (e.g. a concurrent writer
  between a client's GET and its PATCH) and a record of every request (`requests`).

Responses are serialised with sorted keys, as the Go API server does for unstructured objects.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.support.crd_schema import SchemaValidationError, UnknownFields, crd_info, validator_for
from tests.support.reference_data import SCHEMAS_DIR

VIRTUAL_SERVICE_CRD = SCHEMAS_DIR / "virtualservices.networking.istio.io.crd.yaml"
HTTP_ROUTE_CRD = SCHEMAS_DIR / "httproutes.gateway.networking.k8s.io.crd.yaml"
DEFAULT_TOKEN = "emulator-token"
DEFAULT_USER = "system:serviceaccount:argo-rollouts:rollout-analyzer"

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

Validator = Callable[[dict[str, Any]], None]
Hook = Callable[["K8sEmulator"], None]

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?/?$"
)


# ---------------------------------------------------------------------------------------------
# Status objects and errors


def status_object(
    code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `Status` in the exact shape the API server sends (empty details are omitted)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status["message"])
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


# ---------------------------------------------------------------------------------------------
# RFC 6902 JSON Patch and RFC 7386 JSON Merge Patch


class PatchFormatError(ValueError):
    """The patch document is malformed (the API server answers 400)."""


class PatchApplyError(ValueError):
    """The patch is well formed but does not apply, e.g. a failed `test` (422)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchFormatError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _index(token: str, length: int, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise PatchApplyError(f"invalid array index {token!r}")
    index = int(token)
    if index > length or (index == length and not allow_end):
        raise PatchApplyError(f"array index {index} out of bounds")
    return index


def _resolve(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(token, len(node), allow_end=False)]
        else:
            raise PatchApplyError(f"doc is missing path: {path}")
    return node


def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 equality: same JSON type and value (so `true` != 1, but 1 == 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _add(doc: Any, tokens: list[str], value: Any, path: str) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), allow_end=True), value)
    else:
        raise PatchApplyError(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, tokens: list[str], path: str) -> Any:
    if not tokens:
        raise PatchApplyError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(last, len(parent), allow_end=False))
    raise PatchApplyError(f"doc is missing path: {path}")


def apply_json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch to a copy of `doc`; all operations or none."""
    if not isinstance(operations, list):
        raise PatchFormatError("a JSON Patch must be a JSON array of operations")
    result = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise PatchFormatError(f"invalid JSON Patch operation {operation!r}")
        op, raw_path = operation["op"], operation.get("path")
        tokens = _pointer(raw_path)
        path = str(raw_path)
        if op in {"add", "replace", "test"} and "value" not in operation:
            raise PatchFormatError(f"{op} operation at {path} has no value")
        if op == "add":
            result = _add(result, tokens, copy.deepcopy(operation["value"]), path)
        elif op == "remove":
            _remove(result, tokens, path)
        elif op == "replace":
            _resolve(result, tokens, path)  # must exist
            if tokens:
                _remove(result, tokens, path)
            result = _add(result, tokens, copy.deepcopy(operation["value"]), path)
        elif op in {"move", "copy"}:
            source_tokens = _pointer(operation.get("from"))
            if (
                op == "move"
                and tokens[: len(source_tokens)] == source_tokens
                and (len(tokens) > len(source_tokens))
            ):
                raise PatchApplyError(f"cannot move {operation['from']} into its own child")
            value = copy.deepcopy(_resolve(result, source_tokens, operation["from"]))
            if op == "move":
                _remove(result, source_tokens, operation["from"])
            result = _add(result, tokens, value, path)
        elif op == "test":
            if not _json_equal(_resolve(result, tokens, path), operation["value"]):
                raise PatchApplyError(f"testing value {path} failed: test failed")
        else:
            raise PatchFormatError(f"unknown JSON Patch operation {op!r}")
    return result


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------------------
# Configuration types


@dataclass(frozen=True)
class ResourceType:
    group: str
    plural: str
    kind: str
    namespaced: bool
    validators: dict[str, Validator | None]  # served version -> schema validator
    status_subresource: bool = False

    @property
    def qualified(self) -> str:  # "virtualservices.networking.istio.io"
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class RbacRule:
    """One RBAC rule: `*` in any field matches everything."""

    verbs: tuple[str, ...]
    resources: tuple[str, ...]
    namespaces: tuple[str, ...] = ("*",)
    api_groups: tuple[str, ...] = ("*",)

    def allows(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        def hit(options: tuple[str, ...], value: str) -> bool:
            return "*" in options or value in options

        return (
            hit(self.verbs, verb)
            and hit(self.resources, resource)
            and hit(self.api_groups, group)
            and ("*" in self.namespaces or (namespace is not None and namespace in self.namespaces))
        )


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: bytes
    verb: str | None  # Kubernetes verb: get, list, create, update, patch, delete
    status: int | None = None  # the status code answered

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Rule:
    verb: str
    path: str
    remaining: int | None  # None = forever
    status: int | None = None
    message: str | None = None
    delay: float = 0.0
    hook: Hook | None = None

    def matches(self, verb: str | None, path: str) -> bool:
        verb_ok = self.verb == "*" or self.verb == verb
        return verb_ok and fnmatch.fnmatchcase(path, self.path)

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@dataclass
class _Faults:
    failures: list[_Rule] = field(default_factory=list)
    delays: list[_Rule] = field(default_factory=list)
    before: list[_Rule] = field(default_factory=list)
    after: list[_Rule] = field(default_factory=list)

    @staticmethod
    def take(rules: list[_Rule], verb: str | None, path: str) -> _Rule | None:
        for rule in rules:
            if (rule.remaining is None or rule.remaining > 0) and rule.matches(verb, path):
                rule.consume()
                return rule
        return None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: bytes
    authorization: str | None


# ---------------------------------------------------------------------------------------------
# The emulator


class K8sEmulator:
    """Start with `with K8sEmulator() as emulator:`; `emulator.url` is the API server URL."""

    def __init__(
        self,
        *,
        tokens: dict[str, str] | None = None,
        rbac: list[RbacRule] | None = None,
        crds: Iterable[str | Path] = (VIRTUAL_SERVICE_CRD, HTTP_ROUTE_CRD),
    ) -> None:
        self.tokens = dict(tokens) if tokens is not None else {DEFAULT_TOKEN: DEFAULT_USER}
        self.rbac = rbac  # None: every authenticated request is allowed
        self.requests: list[RecordedRequest] = []
        self._resources: dict[tuple[str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._revision = itertools.count(1000)
        self._last_revision = 999
        self._lock = threading.RLock()
        self._faults = _Faults()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for crd in crds:
            self.register_crd(crd)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> K8sEmulator:
        emulator = self

        class Handler(_Handler):
            owner = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> K8sEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- registration ---------------------------------------------------------------------------

    def register_crd(
        self, crd_path: str | Path, *, unknown_fields: UnknownFields = "reject"
    ) -> None:
        info = crd_info(crd_path)
        validators: dict[str, Validator | None] = {
            version: validator_for(crd_path, version, unknown_fields=unknown_fields)
            for version in info.served_versions
        }
        self.register_resource(
            info.group,
            info.plural,
            info.kind,
            validators,
            namespaced=info.namespaced,
            status_subresource=any(info.status_subresource.values()),
        )

    def register_resource(
        self,
        group: str,
        plural: str,
        kind: str,
        validators: dict[str, Validator | None],
        *,
        namespaced: bool = True,
        status_subresource: bool = False,
    ) -> None:
        """Serve any group/version/plural; a `None` validator accepts every object."""
        resource = ResourceType(group, plural, kind, namespaced, validators, status_subresource)
        with self._lock:
            self._resources[(group, plural)] = resource

    # -- test hooks -----------------------------------------------------------------------------

    def fail_next(
        self,
        verb: str,
        path: str = "*",
        *,
        status: int,
        times: int | None = 1,
        message: str | None = None,
    ) -> None:
        """The next `times` requests (None: all) matching verb and path glob answer `status`."""
        with self._lock:
            self._faults.failures.append(_Rule(verb, path, times, status=status, message=message))

    def delay_next(
        self, verb: str, path: str = "*", *, seconds: float, times: int | None = 1
    ) -> None:
        with self._lock:
            self._faults.delays.append(_Rule(verb, path, times, delay=seconds))

    def run_before(self, verb: str, path: str, hook: Hook, *, times: int | None = 1) -> None:
        """Run `hook(emulator)` before handling matching requests (e.g. a concurrent writer)."""
        with self._lock:
            self._faults.before.append(_Rule(verb, path, times, hook=hook))

    def run_after(self, verb: str, path: str, hook: Hook, *, times: int | None = 1) -> None:
        """Run `hook(emulator)` after handling a matching request, before its answer is sent."""
        with self._lock:
            self._faults.after.append(_Rule(verb, path, times, hook=hook))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def requests_for(self, verb: str | None = None, path: str = "*") -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (verb is None or r.verb == verb) and fnmatch.fnmatchcase(r.path, path)
            ]

    # -- direct store access (no auth, no recording; same validation and versioning) -----------

    def create_object(
        self, api_version: str, plural: str, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        resource, version = self._resource_for(api_version, plural)
        return self._create(resource, version, namespace, copy.deepcopy(body))

    def get_object(
        self, api_version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any]:
        resource, version = self._resource_for(api_version, plural)
        return self._get(resource, version, namespace, name)

    def object_json(self, api_version: str, plural: str, namespace: str, name: str) -> str:
        """The object as the API server would serialise it (sorted keys)."""
        return _dumps(self.get_object(api_version, plural, namespace, name))

    def modify_object(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """An update by another writer: `mutate` edits the current object in place."""
        resource, version = self._resource_for(api_version, plural)
        with self._lock:
            current = self._get(resource, version, namespace, name)
            mutate(current)
            return self._commit(resource, version, namespace, name, current)

    def delete_object(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        resource, version = self._resource_for(api_version, plural)
        self._delete(resource, version, namespace, name)

    def _resource_for(self, api_version: str, plural: str) -> tuple[ResourceType, str]:
        group, _, version = api_version.rpartition("/")
        resource = self._resources[(group, plural)]
        if version not in resource.validators:
            raise KeyError(f"{plural}.{group} has no served version {version}")
        return resource, version

    # -- request handling -----------------------------------------------------------------------

    def handle(self, request: _Request) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(request.path)
        resource = match and self._resources.get((match["group"], match["plural"]))
        verb = _verb(request.method, bool(match and match["name"]))
        record = RecordedRequest(
            request.method,
            request.path,
            request.query,
            request.content_type,
            request.body,
            verb if resource else None,
        )
        with self._lock:
            self.requests.append(record)
            delay = _Faults.take(self._faults.delays, record.verb, request.path)
            before = _Faults.take(self._faults.before, record.verb, request.path)
        if delay:
            time.sleep(delay.delay)
        try:
            if before and before.hook:
                before.hook(self)
            status, body = self._dispatch(request, match, resource, verb)
        except ApiError as error:
            status, body = error.code, error.status
        with self._lock:
            after = _Faults.take(self._faults.after, record.verb, request.path)
        if after and after.hook:
            after.hook(self)
        record.status = status
        return status, body

    def _dispatch(
        self,
        request: _Request,
        match: re.Match[str] | None,
        resource: ResourceType | None,
        verb: str,
    ) -> tuple[int, dict[str, Any]]:
        if request.path in {"/version", "/version/"}:
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulator"}
        user = self._authenticate(request.authorization)
        if match is None or resource is None or match["version"] not in resource.validators:
            raise ApiError(
                status_object(404, "the server could not find the requested resource", "NotFound")
            )
        if resource.namespaced and match["namespace"] is None and verb != "list":
            raise ApiError(status_object(405, "the server does not allow this method", None))
        namespace, name, version = match["namespace"], match["name"], match["version"]
        self._authorize(user, verb, resource, namespace, name)
        with self._lock:  # injected failures answer requests that passed authentication + RBAC
            failure = _Faults.take(self._faults.failures, verb, request.path)
        if failure and failure.status is not None:
            raise ApiError(_injected(failure, resource, name))
        if verb == "get":
            return 200, self._get(resource, version, namespace, name)
        if verb == "list":
            return 200, self._list(resource, version, namespace)
        if verb == "create":
            return 201, self._create(resource, version, namespace, _json_body(request.body))
        if verb == "update":
            return 200, self._update(resource, version, namespace, name, _json_body(request.body))
        if verb == "patch":
            return 200, self._patch(resource, version, namespace, name, request)
        if verb == "delete":
            return 200, self._delete(resource, version, namespace, name)
        raise ApiError(
            status_object(405, "the server does not allow this method on the requested resource")
        )

    def _authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(status_object(401, "Unauthorized"))
        return user

    def _authorize(
        self, user: str, verb: str, resource: ResourceType, namespace: str | None, name: str | None
    ) -> None:
        if self.rbac is None or any(
            rule.allows(verb, resource.group, resource.plural, namespace) for rule in self.rbac
        ):
            return
        subject = f'{resource.qualified} "{name}"' if name else resource.qualified
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        message = (
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource.plural}" '
            f'in API group "{resource.group}" {scope}'
        )
        details = {"group": resource.group, "kind": resource.plural}
        if name:
            details = {"name": name, **details}
        raise ApiError(status_object(403, message, "Forbidden", details))

    # -- storage semantics ----------------------------------------------------------------------

    def _key(self, resource: ResourceType, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (resource.group, resource.plural, namespace, name)

    def _stored(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        stored = self._objects.get(self._key(resource, namespace, name))
        if stored is None:
            raise ApiError(
                status_object(
                    404,
                    f'{resource.qualified} "{name}" not found',
                    "NotFound",
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            )
        return stored

    def _served(
        self, resource: ResourceType, version: str, stored: dict[str, Any]
    ) -> dict[str, Any]:
        # Every version of the Istio and Gateway API CRDs has the same schema: conversion is a
        # new apiVersion.
        served = copy.deepcopy(stored)
        served["apiVersion"] = f"{resource.group}/{version}"
        served["kind"] = resource.kind
        return served

    def _next_revision(self) -> str:
        self._last_revision = next(self._revision)
        return str(self._last_revision)

    def _get(
        self, resource: ResourceType, version: str, namespace: str, name: str
    ) -> dict[str, Any]:
        with self._lock:
            return self._served(resource, version, self._stored(resource, namespace, name))

    def _list(self, resource: ResourceType, version: str, namespace: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                self._served(resource, version, obj)
                for (group, plural, ns, _), obj in sorted(self._objects.items())
                if (group, plural) == (resource.group, resource.plural)
                and (namespace is None or ns == namespace)
            ]
            return {
                "apiVersion": f"{resource.group}/{version}",
                "kind": f"{resource.kind}List",
                "metadata": {"continue": "", "resourceVersion": str(self._last_revision)},
                "items": items,
            }

    def _invalid(
        self, resource: ResourceType, name: str, errors: list[tuple[str, str]]
    ) -> ApiError:
        parts = [f"{field_path}: {detail}" for field_path, detail in errors]
        summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
        causes = [
            {"reason": "FieldValueInvalid", "message": detail, "field": field_path}
            for field_path, detail in errors
        ]
        return ApiError(
            status_object(
                422,
                f'{resource.kind}.{resource.group} "{name}" is invalid: {summary}',
                "Invalid",
                {"name": name, "group": resource.group, "kind": resource.kind, "causes": causes},
            )
        )

    def _validate(self, resource: ResourceType, version: str, obj: dict[str, Any]) -> None:
        name = str(obj.get("metadata", {}).get("name", ""))
        validator = resource.validators.get(version)
        if validator is None:
            return
        try:
            validator(obj)
        except SchemaValidationError as error:
            raise self._invalid(
                resource, name, [(e.field, e.message) for e in error.errors]
            ) from None

    def _check_identity(
        self, resource: ResourceType, version: str, namespace: str, obj: Any
    ) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(status_object(400, "the request body must be a JSON object"))
        expected = f"{resource.group}/{version}"
        if obj.setdefault("apiVersion", expected) != expected:
            raise ApiError(
                status_object(
                    400,
                    f"the API version in the data ({obj['apiVersion']}) does not match the "
                    f"expected API version ({expected})",
                )
            )
        if obj.setdefault("kind", resource.kind) != resource.kind:
            raise ApiError(
                status_object(
                    400,
                    f"the kind in the data ({obj['kind']}) does not match the expected kind "
                    f"({resource.kind})",
                )
            )
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise ApiError(status_object(400, "metadata must be an object"))
        if metadata.setdefault("namespace", namespace) != namespace:
            raise ApiError(
                status_object(
                    400,
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            )
        return obj

    def _create(
        self, resource: ResourceType, version: str, namespace: str, obj: Any
    ) -> dict[str, Any]:
        obj = self._check_identity(resource, version, namespace, obj)
        metadata = obj["metadata"]
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise self._invalid(
                resource,
                "",
                [("metadata.name", "Required value: name or generateName is required")],
            )
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise self._invalid(
                resource,
                name,
                [
                    (
                        "metadata.name",
                        f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                        "of lower case alphanumeric characters, '-' or '.', and must start and "
                        "end with an alphanumeric character",
                    )
                ],
            )
        if resource.status_subresource:
            obj.pop("status", None)  # status is written through /status only
        with self._lock:
            if self._key(resource, namespace, name) in self._objects:
                raise ApiError(
                    status_object(
                        409,
                        f'{resource.qualified} "{name}" already exists',
                        "AlreadyExists",
                        {"name": name, "group": resource.group, "kind": resource.plural},
                    )
                )
            self._validate(resource, version, obj)
            metadata.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                generation=1,
                resourceVersion=self._next_revision(),
            )
            self._objects[self._key(resource, namespace, name)] = copy.deepcopy(obj)
            return self._served(resource, version, obj)

    def _update(
        self, resource: ResourceType, version: str, namespace: str, name: str, obj: Any
    ) -> dict[str, Any]:
        obj = self._check_identity(resource, version, namespace, obj)
        with self._lock:
            current = self._stored(resource, namespace, name)
            if obj["metadata"].get("name") != name:
                raise ApiError(
                    status_object(
                        400,
                        f"the name of the object ({obj['metadata'].get('name')}) does not match "
                        f"the name on the URL ({name})",
                    )
                )
            sent_revision = obj["metadata"].get("resourceVersion")
            if not sent_revision:
                raise self._invalid(
                    resource,
                    name,
                    [
                        (
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            if sent_revision != current["metadata"]["resourceVersion"]:
                raise _conflict(resource, name)
            return self._commit(resource, version, namespace, name, obj)

    def _patch(
        self, resource: ResourceType, version: str, namespace: str, name: str, request: _Request
    ) -> dict[str, Any]:
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type not in {JSON_PATCH, MERGE_PATCH}:
            raise ApiError(
                status_object(
                    415,
                    "the body of the request was in an unknown format - accepted media types "
                    f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}"
                    + (
                        " (server-side apply is not emulated)"
                        if content_type == APPLY_PATCH
                        else ""
                    ),
                    "UnsupportedMediaType",
                )
            )
        patch = _json_body(request.body)
        with self._lock:
            current = self._get(resource, version, namespace, name)
            try:
                if content_type == JSON_PATCH:
                    patched = apply_json_patch(current, patch)
                elif isinstance(patch, dict):
                    patched = apply_merge_patch(current, patch)
                else:  # e.g. a JSON Patch list sent with the merge-patch content type
                    raise ApiError(
                        status_object(
                            422,
                            f"json: cannot unmarshal {type(patch).__name__} into Go value of "
                            "type map[string]interface {}",
                            "Invalid",
                        )
                    )
            except PatchFormatError as error:
                raise ApiError(status_object(400, str(error), "BadRequest")) from None
            except PatchApplyError as error:
                raise ApiError(
                    status_object(
                        422,
                        "the server rejected our request due to an error in our request",
                        "Invalid",
                        {"causes": [{"reason": "UnexpectedServerResponse", "message": str(error)}]},
                    )
                ) from None
            patched = self._check_identity(resource, version, namespace, patched)
            if patched["metadata"].get("name") != name:
                raise self._invalid(
                    resource, name, [("metadata.name", "Invalid value: field is immutable")]
                )
            sent_revision = patched["metadata"].get("resourceVersion")
            if sent_revision and sent_revision != current["metadata"]["resourceVersion"]:
                raise _conflict(resource, name)
            return self._commit(resource, version, namespace, name, patched)

    def _commit(
        self, resource: ResourceType, version: str, namespace: str, name: str, new: dict[str, Any]
    ) -> dict[str, Any]:
        """Store `new` as the next state of an existing object (caller holds the lock)."""
        with self._lock:
            old = self._stored(resource, namespace, name)
            new = copy.deepcopy(new)
            metadata = new.setdefault("metadata", {})
            for server_field in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                if server_field in old["metadata"]:
                    metadata[server_field] = old["metadata"][server_field]
                else:
                    metadata.pop(server_field, None)
            if resource.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            comparable_new = self._served(resource, version, new)
            comparable_old = self._served(resource, version, old)
            if _json_equal(comparable_new, comparable_old):
                return comparable_old  # a no-op write keeps the resourceVersion, as etcd does
            self._validate(resource, version, comparable_new)
            if _spec_part(comparable_new) != _spec_part(comparable_old):
                metadata["generation"] = int(old["metadata"].get("generation", 1)) + 1
            metadata["resourceVersion"] = self._next_revision()
            self._objects[self._key(resource, namespace, name)] = copy.deepcopy(new)
            return self._served(resource, version, new)

    def _delete(
        self, resource: ResourceType, version: str, namespace: str, name: str
    ) -> dict[str, Any]:
        with self._lock:
            stored = self._stored(resource, namespace, name)
            del self._objects[self._key(resource, namespace, name)]
            self._next_revision()
            return self._served(resource, version, stored)


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    owner: K8sEmulator
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = _Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            content_type=self.headers.get("Content-Type"),
            body=self.rfile.read(length) if length else b"",
            authorization=self.headers.get("Authorization"),
        )
        status, body = self.owner.handle(request)
        payload = _dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout during an injected delay)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _verb(method: str, has_name: bool) -> str:
    if method == "GET":
        return "get" if has_name else "list"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as error:
        raise ApiError(status_object(400, f"invalid JSON in the request body: {error}")) from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in {"metadata", "status", "apiVersion", "kind"}}


def _conflict(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_object(
            409,
            f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
            "Conflict",
            {"name": name, "group": resource.group, "kind": resource.plural},
        )
    )


def _injected(rule: _Rule, resource: ResourceType, name: str | None) -> dict[str, Any]:
    assert rule.status is not None
    details = {"name": name, "group": resource.group, "kind": resource.plural} if name else None
    if rule.message is not None:
        return status_object(rule.status, rule.message, details=details)
    if rule.status == 409 and name:
        return _conflict(resource, name).status
    if rule.status == 404 and name:
        return status_object(404, f'{resource.qualified} "{name}" not found', details=details)
    return status_object(rule.status, f"injected failure {rule.status}", details=details)


def write_kubeconfig(
    path: str | Path, server_url: str, token: str, *, context: str = "emulator"
) -> Path:
    """A kubeconfig for `kubernetes.config.new_client_from_config(config_file=path)`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server_url}}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": "default"},
            }
        ],
        "current-context": context,
    }
    target = Path(path)
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target
