"""The OTLP gRPC exporter is an optional extra: the base install works without grpcio, and asking
for gRPC without the extra says what to install instead of failing with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

from tests.support.otlp_receiver import OtlpHttpReceiver

REPO = Path(__file__).resolve().parents[2]

# Run with the gRPC exporter and grpcio made unimportable, as on a base install.
WITHOUT_GRPC = """
import importlib.abc, logging, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" or name.startswith(("grpc.", "opentelemetry.exporter.otlp.proto.grpc")):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Hide())
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from worker import tracing
on = tracing.setup("worker")
with tracing.span("without-grpc"):
    pass
tracing.shutdown()
print("tracing on:", on)
"""


def run_without_grpc(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_GRPC],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_grpc_is_only_in_the_extra_and_http_in_the_base_install():
    declared = requires("rollout-analyzer") or []
    base = [r for r in declared if "extra ==" not in r]
    grpc_extra = [r for r in declared if 'extra == "otlp-grpc"' in r]
    assert not [r for r in base if "grpc" in r], base
    assert any(r.startswith("opentelemetry-exporter-otlp-proto-http") for r in base)
    assert any(r.startswith("opentelemetry-exporter-otlp-proto-grpc") for r in grpc_extra)


def test_asking_for_grpc_without_the_extra_names_the_setting_and_the_extra():
    done = run_without_grpc(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    assert done.returncode == 0, done.stderr  # the service runs on, without traces
    assert "tracing on: False" in done.stdout
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in done.stderr
    assert "rollout-analyzer[otlp-grpc]" in done.stderr
    assert "Traceback" not in done.stderr


def test_http_export_works_without_grpcio():
    collector = OtlpHttpReceiver().start()
    try:
        done = run_without_grpc(
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_SERVICE_NAME="no-grpc"
        )
        assert done.returncode == 0, done.stderr
        assert "tracing on: True" in done.stdout
        spans = collector.wait_for(lambda got: any(s.name == "without-grpc" for s in got), 10)
        assert spans[0].service == "no-grpc"
    finally:
        collector.stop()
