"""`rollout-analyzer record`: save what analyses over a period read, for offline replays."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from analysis.durations import format_duration, format_time
from analysis.sources.recording import Recording
from cli.output import (
    CliError,
    Command,
    SpecArgs,
    build_spec,
    make_source,
    parse_duration_option,
    parse_time_option,
    source_hint,
    spec_options,
    user_errors,
)
from cli.replay import observe_points, replay_times


@click.command(cls=Command)
@spec_options
@click.option("--prometheus", default=None, help="Prometheus URL (default: settings).")
@click.option("--start", default=None, help="First point (default: only --end).")
@click.option("--end", "-e", default="now", show_default=True, help="Last point.")
@click.option("--interval", "-i", default="1m", show_default=True, help="Step between points.")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Recording file to write.",
)
@click.option("--append", is_flag=True, help="Add to an existing recording (other services).")
@click.option("--description", default="", help="Free text stored in the recording.")
def record(
    spec_args: SpecArgs,
    prometheus: str | None,
    start: str | None,
    end: str,
    interval: str,
    out: str,
    append: bool,
    description: str,
) -> None:
    """Fetch both sides over a period from Prometheus and save them as a recording file.

    `analyze --from-recording` and `replay --from-recording` (same service, window and interval)
    then give the same answers as against Prometheus, without it.

    \b
    Example:
      rollout-analyzer record --prometheus http://prometheus:9090 \\
        --service checkout --namespace shop --canary 6d4f8b7c9a --baseline 5c8d7e6f4b \\
        --start -1h --end now --interval 1m --out incident-4711.json
    """
    now = float(math.floor(time.time()))
    step = parse_duration_option("--interval", interval)
    last = math.floor(parse_time_option("--end", end, now))
    first = last if start is None else math.floor(parse_time_option("--start", start, now))
    times = replay_times(first, last, step)
    spec = build_spec(
        spec_args,
        end=format_time(last),
        now=now,
    )
    source = make_source(prometheus, None)
    if source.name != "prometheus":
        raise CliError("record reads Prometheus: pass --prometheus URL or set PROMETHEUS_URL")
    target = Path(out)
    recording = Recording([], description)
    if append and target.exists():
        with user_errors():
            recording = Recording.load(target)
    with user_errors(source_hint(prometheus, None)):
        observations = observe_points(spec, source, times, step)
        if len(times) > 1:  # and what each poll adds to a live sequence, for sequential replays
            observations += source.observe_range(spec, times[1], times[-1], step, seconds=step)
    empty = 0
    windows = 0
    for observation in observations:
        recording.add(spec, observation)
        if observation.window_seconds == spec.window_seconds:
            windows += 1
            empty += not (observation.canary.has_data or observation.baseline.has_data)
    if description:
        recording.description = description
    with user_errors(f"cannot write {out}"):
        recording.save(target)
    trips = sum(o.round_trips for o in observations)
    click.echo(
        f"recorded {windows} points of {spec.service} "
        f"({format_duration(spec.window_seconds)} windows, every {format_duration(step)}) "
        f"from {format_time(first)} to "
        f"{format_time(last)} into {out}: {trips} PromQL round trip(s)"
    )
    if empty:
        click.echo(f"warning: {empty} points had no data for either side", err=True)
