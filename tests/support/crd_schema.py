"""Validate objects against a CustomResourceDefinition's `openAPIV3Schema`, as the API server does.

The CRD schema dialect is OpenAPI v3.0 (close to JSON Schema draft 4) plus Kubernetes extensions.
We translate the parts that change what is valid and drop the rest:

- `nullable: true` -> the value may also be `null`;
- `x-kubernetes-int-or-string: true` -> integer or string;
- `x-kubernetes-preserve-unknown-fields: true` -> unknown fields allowed at that level;
- every other `x-kubernetes-*` key (list types, CEL `x-kubernetes-validations`) and `format`
  are ignored: CEL rules and formats are not evaluated here.

Unknown fields: a real API server silently prunes them (or rejects them with
`fieldValidation=Strict`). By default we reject them, because in a test a silently dropped field
hides the bug that wrote it; pass `unknown_fields="allow"` to only check the known fields.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

UnknownFields = Literal["reject", "allow"]

# Checked by the API server's ObjectMeta validation, not by the CRD schema; listed so that the
# root level accepts them when unknown fields are rejected.
_ROOT_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


@dataclass(frozen=True)
class FieldError:
    field: str  # Kubernetes field path, e.g. "spec.http[0].route[1].weight"
    message: str  # Kubernetes-style detail, e.g. 'Invalid value: "x": must be of type integer'


class SchemaValidationError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass(frozen=True)
class CrdInfo:
    group: str
    kind: str
    plural: str
    namespaced: bool
    served_versions: tuple[str, ...]
    storage_version: str
    status_subresource: dict[str, bool]  # version -> has a /status subresource


@functools.lru_cache(maxsize=16)
def _load(crd_path: str) -> dict[str, Any]:
    text = Path(crd_path).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the Istio CRD is ~3k lines
    for document in yaml.load_all(text, Loader=loader):
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
            return document
    raise ValueError(f"{crd_path}: no CustomResourceDefinition document")


def load_crd(crd_path: str | Path) -> dict[str, Any]:
    """The parsed CRD (cached; treat as read-only)."""
    return _load(str(crd_path))


def crd_info(crd_path: str | Path) -> CrdInfo:
    spec = load_crd(crd_path)["spec"]
    versions = spec["versions"]
    return CrdInfo(
        group=spec["group"],
        kind=spec["names"]["kind"],
        plural=spec["names"]["plural"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        served_versions=tuple(v["name"] for v in versions if v.get("served", True)),
        storage_version=next(v["name"] for v in versions if v.get("storage")),
        status_subresource={v["name"]: "status" in (v.get("subresources") or {}) for v in versions},
    )


def openapi_to_jsonschema(schema: Any, *, unknown_fields: UnknownFields = "reject") -> Any:
    """Translate one CRD schema node (recursively) into draft-4 JSON Schema."""
    if isinstance(schema, list):
        return [openapi_to_jsonschema(item, unknown_fields=unknown_fields) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "format", "description"}:
            continue
        if key in {"enum", "default", "example", "required"}:
            out[key] = value  # literal values, not schemas
        elif key in {"properties", "patternProperties", "definitions"}:
            out[key] = {
                name: openapi_to_jsonschema(sub, unknown_fields=unknown_fields)
                for name, sub in value.items()
            }
        else:
            out[key] = openapi_to_jsonschema(value, unknown_fields=unknown_fields)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        unknown_fields == "reject"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def version_schema(
    crd_path: str | Path, version: str, *, unknown_fields: UnknownFields = "reject"
) -> dict[str, Any]:
    for entry in load_crd(crd_path)["spec"]["versions"]:
        if entry["name"] == version:
            raw = entry["schema"]["openAPIV3Schema"]
            break
    else:
        raise KeyError(f"{crd_path}: no version {version!r}")
    schema: dict[str, Any] = openapi_to_jsonschema(raw, unknown_fields=unknown_fields)
    schema["properties"] = {**_ROOT_FIELDS, **schema.get("properties", {})}
    return schema


@functools.lru_cache(maxsize=64)
def _cached_validator(
    crd_path: str, version: str, unknown_fields: UnknownFields
) -> Callable[[dict[str, Any]], None]:
    schema = version_schema(crd_path, version, unknown_fields=unknown_fields)
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)

    def validate(obj: dict[str, Any]) -> None:
        errors = sorted(_field_errors(validator, obj), key=lambda e: e.field)
        if errors:
            raise SchemaValidationError(errors)

    return validate


def validator_for(
    crd_path: str | Path, version: str, *, unknown_fields: UnknownFields = "reject"
) -> Callable[[dict[str, Any]], None]:
    """A function that raises `SchemaValidationError` when an object is invalid for `version`."""
    return _cached_validator(str(crd_path), version, unknown_fields)


def _field_errors(validator: jsonschema.Draft4Validator, obj: Any) -> Iterator[FieldError]:
    for error in validator.iter_errors(obj):
        field = _field_path(error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            for name in error.instance:
                if name not in known:
                    yield FieldError(
                        _join(field, name), f'Unsupported value: unknown field "{name}"'
                    )
        elif error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            yield FieldError(_join(field, missing), "Required value")
        elif error.validator == "type":
            yield FieldError(
                field,
                f"Invalid value: {_json_type(error.instance)}: "
                f"{field} in body must be of type {error.validator_value}: "
                f"{_json_type(error.instance)}",
            )
        else:
            value = json.dumps(error.instance, default=str)[:80]
            yield FieldError(field, f"Invalid value: {value}: {error.message}")


def _field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _join(field: str, name: str) -> str:
    return name if field == "<root>" else f"{field}.{name}"


def _json_type(value: Any) -> str:
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return '"boolean"'
    if isinstance(value, int | float):
        return '"number"' if isinstance(value, float) else '"integer"'
    if isinstance(value, str):
        return '"string"'
    return '"array"' if isinstance(value, list) else '"object"'
