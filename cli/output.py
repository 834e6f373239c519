"""What the analysis commands share: one-line errors, option sets, spec and source, formatting."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import click
import yaml

from analysis.durations import format_time, parse_duration, parse_time
from analysis.policy import PolicySet
from analysis.request import AnalysisSpec, RequestError, parse_request, resolve
from analysis.sources import MetricsSource, SourceError

# Exit codes of the analysis commands (the verdict is the answer; anything else is an error).
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}
EXIT_ERROR = 3

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A problem the user can fix: printed as one line on stderr, exit code 3."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Command(click.Command):
    """A click command whose usage errors are one line and exit 3, like every other error.

    Click's own exit code for bad usage is 2, which for `analyze` means "inconclusive".
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise CliError(
                f"{exc.format_message()} (see `rollout-analyzer {self.name} --help`)"
            ) from None


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def is_debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and (root.obj or {}).get("debug")) or "--debug" in sys.argv


@contextlib.contextmanager
def user_errors(hint: str = "") -> Iterator[None]:
    """Turn the errors a user can cause into CliError; with --debug let the traceback through."""
    try:
        yield
    except (RequestError, SourceError, ValueError, OSError, KeyError, yaml.YAMLError) as exc:
        if is_debug():
            raise
        message = one_line(str(exc) or type(exc).__name__)
        raise CliError(f"{message}{'; ' + hint if hint else ''}") from exc


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecArgs:
    """What every analysing command is told about the analysis (the webhook's request fields)."""

    service: str
    namespace: str | None
    canary: str
    baseline: str
    policy: str
    window: str | None
    overrides: tuple[str, ...]
    policies_file: str | None


def spec_options(func: F) -> F:
    """--service/--namespace/--canary/--baseline/--policy/--window/--override/--policies-file,
    handed to the command as one `spec_args: SpecArgs`."""
    names = [f.name for f in fields(SpecArgs)]

    @functools.wraps(func)
    def gathered(*args: Any, **kwargs: Any) -> Any:
        spec_args = SpecArgs(**{name: kwargs.pop(name) for name in names})
        return func(*args, spec_args=spec_args, **kwargs)

    options = [
        click.option("--service", "-s", required=True, help="Service label value, e.g. checkout."),
        click.option("--namespace", "-n", default=None, help="Namespace label value."),
        click.option("--canary", required=True, help="Canary selector (pod-template hash)."),
        click.option("--baseline", required=True, help="Baseline selector (stable hash)."),
        click.option("--policy", "-p", default="default", show_default=True, help="Policy name."),
        click.option("--window", "-w", default=None, help="Window, e.g. 5m (policy default)."),
        click.option(
            "--override",
            "overrides",
            multiple=True,
            metavar="NAME=VALUE",
            help="Override a numeric threshold, e.g. --override slo=0.9995 (repeatable; only as "
            "far as the policy allows).",
        ),
        click.option(
            "--policies-file",
            default=None,
            type=click.Path(dir_okay=False),
            help="Policy YAML (default: ROLLOUT_ANALYZER_POLICIES_FILE).",
        ),
    ]
    for option in reversed(options):
        gathered = option(gathered)
    return cast(F, gathered)


def source_options(func: F) -> F:
    options = [
        click.option("--prometheus", default=None, help="Prometheus URL (default: settings)."),
        click.option(
            "--from-recording",
            "recording",
            default=None,
            type=click.Path(dir_okay=False),
            help="Read a recording file instead of Prometheus.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts.",
)


def html_option(help_text: str) -> Callable[[F], F]:
    """`--html FILE`: write an analysis page as the service shows it (what page: `help_text`)."""
    return click.option(
        "--html", "html_file", type=click.Path(dir_okay=False), default=None, help=help_text
    )


# --- spec and source ----------------------------------------------------------------------------


def settings() -> Any:
    """Settings from ROLLOUT_ANALYZER_* (imported late: the worker package pulls in more)."""
    from pydantic import ValidationError

    from worker.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "ROLLOUT_ANALYZER_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise CliError(f"{name}: {first['msg']}") from None


def load_policies(path: str | None) -> PolicySet:
    chosen = path or settings().policies_file
    with user_errors("fix the policy file (`rollout-analyzer policies` shows the problem)"):
        return PolicySet.load(chosen)


def parse_overrides(pairs: Sequence[str]) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--override {pair!r}: expected NAME=VALUE, e.g. slo=0.99")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise CliError(f"--override {pair!r}: {value!r} is not a number") from None
    return overrides


def build_spec(args: SpecArgs, *, end: str | None = None, now: float | None = None) -> AnalysisSpec:
    """The same validation as the webhook's: parse_request then resolve."""
    body: dict[str, Any] = {
        "service": args.service,
        "canary": args.canary,
        "baseline": args.baseline,
        "policy": args.policy,
        "overrides": parse_overrides(args.overrides),
    }
    for key, value in (("namespace", args.namespace), ("window", args.window), ("end", end)):
        if value is not None:
            body[key] = value
    policies = load_policies(args.policies_file)
    with user_errors():
        return resolve(parse_request(body), policies, now=now)


def make_source(prometheus: str | None, recording: str | None) -> MetricsSource:
    from analysis.sources.prometheus import PrometheusSource
    from analysis.sources.recording import RecordingSource

    if prometheus and recording:
        raise CliError("give --prometheus or --from-recording, not both")
    if recording:
        with user_errors():
            return RecordingSource.from_file(recording)
    current = settings()
    if prometheus:
        return PrometheusSource(current.prometheus_config(prometheus))
    try:
        source: MetricsSource = current.source()
    except (RuntimeError, SourceError) as exc:
        hint = "or pass --prometheus URL / --from-recording FILE"
        raise CliError(f"{one_line(str(exc))}, {hint}") from None
    return source


def source_hint(prometheus: str | None, recording: str | None) -> str:
    if recording:
        return f"check the recording {recording}"
    where = prometheus or settings().prometheus_url or "the configured Prometheus"
    return f"is {where} reachable? (`rollout-analyzer doctor` checks it)"


def parse_time_option(name: str, text: str, now: float) -> float:
    try:
        return parse_time(text, now=now)
    except ValueError as exc:
        raise CliError(f"{name}: {exc}") from None


def parse_duration_option(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{name}: {exc}") from None


# --- formatting ---------------------------------------------------------------------------------


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | int):
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.3f}s"


def hhmm(ts: float) -> str:
    """Compact UTC time for timelines: 2026-11-01 12:05:00Z."""
    return format_time(ts)[:19].replace("T", " ") + "Z"


VERDICT_COLOURS = {"pass": "green", "fail": "red", "inconclusive": "yellow", "error": "magenta"}


def verdict_text(verdict: str, width: int = 0) -> str:
    return click.style(f"{verdict:<{width}}", fg=VERDICT_COLOURS.get(verdict), bold=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table; widths ignore ANSI colour codes."""

    def width(cell: str) -> int:
        return len(click.unstyle(cell))

    widths = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [cell + " " * (widths[i] - width(cell)) for i, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, allow_nan=False))
