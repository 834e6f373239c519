"""`rollout-analyzer analyze`: one analysis now (or at --end), exactly what the worker computes."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from analysis.report import run_analysis
from cli.output import (
    EXIT_CODES,
    Command,
    SpecArgs,
    build_spec,
    emit_json,
    html_option,
    make_source,
    num,
    output_option,
    pct,
    seconds,
    source_hint,
    source_options,
    spec_options,
    table,
    user_errors,
    verdict_text,
)


@click.command(cls=Command)
@spec_options
@source_options
@click.option("--end", "-e", default=None, help="End of the window: RFC 3339, -10m, now.")
@html_option("Also write the analysis page (as the service shows it) to this file.")
@output_option
def analyze(
    spec_args: SpecArgs,
    prometheus: str | None,
    recording: str | None,
    end: str | None,
    html_file: str | None,
    output: str,
) -> None:
    """Judge a canary against its baseline once and print the verdict.

    Exit code: 0 pass, 1 fail, 2 inconclusive, 3 error.

    \b
    Example:
      rollout-analyzer analyze --prometheus http://prometheus:9090 \\
        --service checkout --namespace shop --canary 6d4f8b7c9a --baseline 5c8d7e6f4b --end -10m
    """
    spec = build_spec(
        spec_args,
        end=end,
    )
    source = make_source(prometheus, recording)
    with user_errors(source_hint(prometheus, recording)):
        result = run_analysis(spec, source, deadline=time.monotonic() + 60)
    if html_file:
        from cli.html_report import write_report_html

        with user_errors(f"cannot write {html_file}"):
            write_report_html(html_file, result, live=end is None)
    if output == "json":
        emit_json(result)
    else:
        click.echo(render(result))
        if html_file:
            click.echo(f"report written to {html_file}")
    # sys.exit, not click's Exit: main() runs click outside standalone mode, where Exit's code
    # would be returned and dropped.
    sys.exit(EXIT_CODES[result["verdict"]])


def render(result: dict[str, Any]) -> str:
    window = result["window"]
    where = f"{result['service']}" + (f" ({result['namespace']})" if result["namespace"] else "")
    lines = [
        f"{verdict_text(result['verdict'])}  score {num(result['score'])}  {where}  "
        f"canary {result['canary']} vs baseline {result['baseline']}  policy {result['policy']}",
        f"window {window['start']} .. {window['end']}  requests canary "
        f"{result['requests']['canary']:.0f} / baseline {result['requests']['baseline']:.0f}",
        "",
        "reasons:",
        *(f"  - {reason}" for reason in result["reasons"]),
    ]
    if result["checks"]:
        rows = [
            [
                check["name"],
                verdict_text(check["verdict"]),
                _value(check["name"], check["canary"]),
                _value(check["name"], check["baseline"]),
                _limit(check["name"], check["limit"]),
                num(check["p_value"], 2),
                "critical" if check["critical"] else f"weight {num(check['weight'])}",
            ]
            for check in result["checks"]
        ]
        headers = ["check", "verdict", "canary", "baseline", "limit", "p-value", "kind"]
        lines += ["", table(headers, rows)]
    return "\n".join(lines)


def _value(check: str, value: Any) -> str:
    if value is None:
        return "-"
    if check.startswith("success_rate"):
        return pct(value, 3)
    if check.startswith("latency"):
        return seconds(value)
    if check == "error_budget.spend":
        return pct(value, 3)
    return f"{num(value)}x"


def _limit(check: str, value: Any) -> str:
    if value is None:
        return "-"
    if check == "success_rate.slo":
        return pct(value, 3)
    if check == "success_rate.regression":
        return f"+{num(value)} pp"
    if check.endswith(".slo"):
        return seconds(value)
    if check.startswith("latency"):
        return f"x{num(value)}"
    if check == "error_budget.spend":
        return pct(value, 2)
    return f"{num(value)}x"
