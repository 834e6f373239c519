"""`make demo`: the webhook on embedded defaults, the bundled scenarios judged, curl lines shown.

With no ROLLOUT_ANALYZER_REDIS_URL it runs in-process (fakeredis, a thread pool) on the
synthetic recording shipped in analysis/data; with Redis (and Prometheus) URLs set it uses
them and starts a Celery worker process beside the server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import httpx
import uvicorn

import analysis
from analysis.durations import format_time
from cli.demo_recording import BASELINE, CANARY, NAMESPACE, SERVICES, START
from worker.logs import setup_logging
from worker.settings import ENV_PREFIX, Settings

RECORDING = Path(analysis.__file__).parent / "data" / "demo-recording.json"


def _settings(host: str, port: int) -> tuple[Settings, bool]:
    uses_redis = f"{ENV_PREFIX}REDIS_URL" in os.environ
    overrides: dict[str, object] = {"host": host, "port": port}
    if not uses_redis:
        overrides["in_process"] = True
    if (
        f"{ENV_PREFIX}PROMETHEUS_URL" not in os.environ
        and f"{ENV_PREFIX}RECORDING" not in os.environ
    ):
        overrides["recording"] = str(RECORDING)
    for key, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)
    return Settings(), uses_redis


def run_demo(host: str, port: int) -> None:
    settings, uses_redis = _settings(host, port)
    setup_logging("WARNING")
    worker = None
    if uses_redis:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--pool=threads", "--concurrency=2"]
        )
    from webhooks.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=host, port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    try:
        _wait_ready(base, thread)
        mode = "in-process broker" if settings.in_process else f"Redis {settings.redis_url}"
        source = f"recording {settings.recording}" if settings.recording else "Prometheus"
        click.echo(f"rollout-analyzer demo on {base} ({mode}, {source})\n")
        if settings.recording == str(RECORDING):
            _show_scenarios(base)
        _show_curl(base, one_number=settings.recording == str(RECORDING))
        click.echo("\nServing; Ctrl-C stops.")
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(5)
        if worker is not None:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(10)


def _wait_ready(base: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise click.ClickException("the server stopped (is the port in use?)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise click.ClickException(f"{base}/readyz did not become ready within 30 s")


def _show_scenarios(base: str) -> None:
    click.echo(f"{'service':<10} {'verdict':<13} {'score':>5}  first reason")
    pages: list[tuple[str, str]] = []
    for service in SERVICES:
        body = {"service": service, "namespace": NAMESPACE, "canary": CANARY, "baseline": BASELINE}
        answer = httpx.post(f"{base}/v1/analyze", json=body, timeout=15)
        if answer.status_code != 200:
            click.echo(f"{service:<10} HTTP {answer.status_code}: {answer.text[:200]}")
            continue
        result = answer.json()
        colour = {"pass": "green", "fail": "red"}.get(result["verdict"], "yellow")
        verdict = click.style(f"{result['verdict']:<13}", fg=colour, bold=True)
        click.echo(f"{service:<10} {verdict} {result['score']:>5g}  {result['reasons'][0]}")
        pages.append((service, result["report_url"]))
    click.echo("\nReport pages (open in a browser):")
    for service, url in pages:
        click.echo(f"  {service:<10} {url}")
    click.echo(f"  {'recent':<10} {base}/ui/")


def _show_curl(base: str, one_number: bool) -> None:
    body = (
        f'{{"service":"payments","namespace":"{NAMESPACE}","canary":"{CANARY}",'
        f'"baseline":"{BASELINE}"}}'
    )
    click.echo("\nTry it:")
    click.echo(f"  curl -s -X POST {base}/v1/analyze -H 'Content-Type: application/json' \\")
    click.echo(f"       -d '{body}'")
    click.echo(
        f"  curl -s '{base}/v1/analyze?service=checkout&namespace={NAMESPACE}"
        f"&canary={CANARY}&baseline={BASELINE}'"
    )
    click.echo(f"  curl -s {base}/v1/analyses/<analysis_id>")
    if one_number:  # one value per metric, over the recording's last five minutes
        end = START + 11 * 60
        number = (
            f'{{"metricName":"http_success_rate","labels":{{"service":"payments",'
            f'"rollout":"{CANARY}"}},"startTimestamp":"{format_time(end - 300)}",'
            f'"endTimestamp":"{format_time(end)}"}}'
        )
        click.echo(
            f"  curl -s -X POST {base}/metrics/analysis -H 'Content-Type: application/json' \\"
        )
        click.echo(f"       -d '{number}'")
    click.echo(f"  curl -s {base}/metrics | grep rollout_analyzer_")
