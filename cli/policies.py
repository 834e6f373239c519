"""`rollout-analyzer policies`: validate the policy file and show each policy's effective values."""

from __future__ import annotations

from typing import Any

import click
import yaml

from analysis.policy import DEFAULT_CHECKS, Policy
from cli.output import CliError, Command, emit_json, load_policies, output_option, settings


def effective(policy: Policy) -> dict[str, Any]:
    """Everything the policy decides, presets and defaults filled in."""
    return {
        "name": policy.name,
        "preset": policy.preset,
        "window": policy.window,
        "max_window": policy.max_window,
        "quantiles": list(policy.quantiles),
        "metrics": policy.conventions.model_dump(),
        "thresholds": policy.thresholds.model_dump(),
        "checks": {name: policy.check(name).model_dump() for name in DEFAULT_CHECKS},
        "actions": policy.actions,
    }


@click.command(cls=Command)
@click.option(
    "--policies-file",
    "-f",
    default=None,
    type=click.Path(dir_okay=False),
    help="Policy YAML (default: ROLLOUT_ANALYZER_POLICIES_FILE).",
)
@click.option("--name", default=None, help="Show only this policy.")
@output_option
def policies(policies_file: str | None, name: str | None, output: str) -> None:
    """Validate the policy file and list every policy with its effective values.

    Exit code 0 when the file is valid, 3 (with the first problem on stderr) when not.

    \b
    Example:
      rollout-analyzer policies --policies-file deploy/base/policies.yaml --name istio
    """
    loaded = load_policies(policies_file)
    chosen = [p for p in loaded if name is None or p.name == name]
    if not chosen:
        raise CliError(f"unknown policy {name!r}; known: {', '.join(loaded.names())}")
    values = [effective(p) for p in sorted(chosen, key=lambda p: p.name)]
    if output == "json":
        emit_json(values)
        return
    source = policies_file or settings().policies_file or "built-in defaults (no policy file)"
    click.echo(f"# {len(loaded.names())} valid policies from {source}: {', '.join(loaded.names())}")
    for value in values:
        click.echo("---")
        click.echo(yaml.safe_dump(value, sort_keys=False, width=100), nl=False)
