"""Celery's messages read with orjson give exactly what kombu's own decoder gives."""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from typing import Any

import pytest
from kombu import serialization
from kombu.utils import json as kombu_json

from webhooks.producer import RedisTaskProducer
from worker import message_json
from worker.celery_app import app

VALUES: list[Any] = [
    {"a": 1, "b": [1.5, "x", None, True, False], "c": {"d": -0.0}},
    {"reasons": ["p99 ≤ 250 ms", "α 0.05"], "é": "ü"},
    # Values kombu tags, which orjson alone would leave as dicts.
    {"at": datetime.datetime(2026, 12, 1, 20, 0, tzinfo=datetime.UTC)},
    {"day": datetime.date(2026, 12, 1), "id": uuid.UUID(int=7), "n": decimal.Decimal("1.25")},
    {"__type__": "not one of kombu's", "x": 1},  # a plain dict that looks tagged
    # Integers at and past 64 bits: orjson reads the latter as floats, Python's json as ints.
    [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**70), 10**30],
    [1e300, 0.1, 1234567890.123456, 1e-300],
    [math.inf, -math.inf],  # written as Infinity: only Python's json reads it
    "\ud800 a lone surrogate",
    [],
    "",
]


def forms(text: str) -> list[Any]:
    data = text.encode("utf-8", "surrogatepass")
    return [text, data, bytearray(data), memoryview(data)]


def outcome(decode: Any, form: Any) -> Any:
    try:
        value = decode(form)
    except Exception as exc:  # both must refuse the same text
        return type(exc).__name__
    return repr(value)  # repr: nan != nan, and 1 == 1.0 would hide an int read as a float


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_every_form_of_a_value_reads_as_kombu_reads_it(value: Any) -> None:
    text = kombu_json.dumps(value)
    for form in forms(text):
        assert outcome(message_json.loads, form) == outcome(kombu_json.loads, form)


def test_nan_and_malformed_text_read_or_fail_as_kombu_does() -> None:
    for text in ["[NaN, 1]", '{"a": ', "nope", '{"a": 1} trailing', '"\\ud800"']:
        for form in forms(text):
            assert outcome(message_json.loads, form) == outcome(kombu_json.loads, form)


def test_a_celery_envelope_as_the_webhook_writes_it_is_read_without_kombus_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = RedisTaskProducer(app, None, "ra-analyses")  # type: ignore[arg-type]
    envelope = producer.envelope("worker.tasks.analyze", ["an-id", {"window": "5m"}])
    expected = kombu_json.loads(envelope)

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("kombu's decoder used for a plain envelope")

    monkeypatch.setattr(kombu_json, "loads", refuse)  # the module message_json calls
    assert message_json.loads(envelope) == expected


def test_task_bodies_decode_through_it_once_the_worker_app_is_made() -> None:
    message_json.install()
    body = [["an-id"], {"eta": datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)}, {}]
    content_type, encoding, data = serialization.dumps(body, serializer="json")
    assert content_type == message_json.CONTENT_TYPE
    decoded = serialization.loads(data, content_type, encoding, accept=[content_type])
    assert decoded == body
    assert isinstance(decoded[1]["eta"], datetime.datetime)  # kombu's tag still honoured
    assert serialization.registry._decoders[content_type] is message_json.loads
