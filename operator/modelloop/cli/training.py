"""``modelloop trials``: a sweep's trials, best first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from modelloop.cli.main import main, namespace_option, output_option, read_cluster

if TYPE_CHECKING:
    from modelloop.kube import KubeClient


@main.command()
@click.argument("name")
@namespace_option
@output_option
def trials(name: str, namespace: str | None, output: str) -> None:
    """Show the trials of the TrainingRun NAME's sweep: phase, objective, learning curve, parameters, and
    why a trial was stopped early (* marks the best)."""
    from modelloop.api import TRAINING_RUN
    from modelloop.cli.render import render_trials
    from modelloop.kubeconfig import current_namespace

    namespace = namespace or current_namespace()

    async def read(client: KubeClient) -> Any:
        run = await client.get_object(TRAINING_RUN.plural, namespace, name)
        if run is None:
            raise click.ClickException(f"TrainingRun {name} not found in namespace {namespace}")
        return run

    run = read_cluster(read)
    if output == "json":
        click.echo(json.dumps((run.get("status") or {}).get("trials") or [], indent=2))
    else:
        click.echo(render_trials(run), nl=False)
