"""`rollout-analyzer`: serve the webhook, run a worker, or try it all with `demo`."""

from __future__ import annotations

import sys

import click

from cli.analyze import analyze
from cli.dead_letters import dead_letters
from cli.doctor import doctor
from cli.policies import policies
from cli.record import record
from cli.replay import replay
from cli.template import template


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Canary analysis for Argo Rollouts. Settings come from ROLLOUT_ANALYZER_* variables."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.option("--host", default=None, help="Listen address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8080).")
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes.")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve the webhook (ASGI, uvicorn).

    Example: ROLLOUT_ANALYZER_REDIS_URL=redis://127.0.0.1:6379/0 rollout-analyzer serve --port 8080
    """
    import uvicorn

    from worker import tracing
    from worker.logs import setup_logging
    from worker.settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level)
    tracing.setup("webhook")
    uvicorn.run(
        "webhooks.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers,
        log_config=None,
        access_log=False,
        # httptools' C parser (pyproject.toml says why), a response's head and body in one write.
        http="webhooks.server:HttpProtocol",
        timeout_keep_alive=30,
    )


@cli.command()
@click.option("--concurrency", "-c", type=int, default=2, show_default=True)
@click.option("--pool", default="prefork", show_default=True, help="prefork, threads or solo.")
@click.option("--hostname", default=None, help="Celery node name (default: ra@<host>).")
@click.option(
    "--queues",
    "which",
    type=click.Choice(["all", "analyses", "followups"]),
    default="all",
    show_default=True,
    help="Analyses, follow-ups (traffic, chat, Argo events) or both.",
)
def worker(concurrency: int, pool: str, hostname: str | None, which: str) -> None:
    """Run a Celery worker that computes analyses and acts on their verdicts.

    Example: rollout-analyzer worker --concurrency 4 --queues followups
    """
    from worker import tracing
    from worker.broker import FOLLOWUP_SLOTS
    from worker.celery_app import app
    from worker.logs import setup_logging
    from worker.queues import consumed
    from worker.settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level)
    tracing.setup("worker")
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--queues={','.join(consumed(settings, which))}",
    ]
    # No gossip, mingle or worker-heartbeat events: nothing of ours reads them (our heartbeat in
    # Redis serves /readyz; `worker-ping` uses remote control), and the events cost an idle
    # worker a third of its CPU.
    argv += [f"--loglevel={settings.log_level}", "--without-gossip", "--without-mingle"]
    argv.append("--without-heartbeat")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.conf.analysis_worker = which != "followups"
    if which == "all":
        # Follow-ups hold at most half the slots: the rest answer analyses (worker/broker.py).
        slots = {FOLLOWUP_SLOTS: max(1, concurrency // 2)}
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, **slots}
    app.worker_main(argv)


@cli.command("worker-ping")
@click.option("--hostname", default=None, help="The worker node to ping (default: ra@<host>).")
@click.option("--timeout", type=float, default=5.0, show_default=True)
def worker_ping(hostname: str | None, timeout: float) -> None:
    """Exit 0 when the worker on this host answers a Celery ping (a liveness probe).

    Example: rollout-analyzer worker-ping --timeout 5
    """
    import socket

    from worker.celery_app import app

    node = hostname or f"celery@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=timeout)
    if not replies:
        click.echo(f"worker {node} did not answer within {timeout:g} s", err=True)
        sys.exit(1)
    click.echo(f"worker {node} is alive")


@cli.command()
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def demo(port: int, host: str) -> None:
    """Serve on embedded defaults (no Redis, no Prometheus needed) and show verdicts.

    Example: rollout-analyzer demo --port 8080
    """
    from cli.demo import run_demo

    run_demo(host, port)


for _command in (analyze, replay, record, template, doctor, policies, dead_letters):
    cli.add_command(_command)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code != 1 else 3)
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
