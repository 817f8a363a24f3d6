"""``modelloop lineage`` and ``modelloop history``: the model registry as a user reads it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from modelloop.cli.main import main, namespace_option, output_option, read_cluster

if TYPE_CHECKING:
    from modelloop.kube import KubeClient


@main.command()
@click.argument("name")
@namespace_option
@output_option
def lineage(name: str, namespace: str | None, output: str) -> None:
    """Show where the ModelVersion NAME came from: its TrainingRun, and what started that run."""
    from modelloop.api import DRIFT_POLICY, MODEL_VERSION, TRAINING_RUN
    from modelloop.cli.render import render_lineage
    from modelloop.kubeconfig import current_namespace
    from modelloop.registry.lineage import build_lineage, drift_policy_name, training_run_name

    namespace = namespace or current_namespace()

    async def read(client: KubeClient) -> tuple[Any, Any, Any]:
        version = await client.get_object(MODEL_VERSION.plural, namespace, name)
        if version is None:
            raise click.ClickException(f"ModelVersion {name} not found in namespace {namespace}")
        run_name = training_run_name(version)
        run = await client.get_object(TRAINING_RUN.plural, namespace, run_name) if run_name else None
        policy_name = drift_policy_name(version, run)
        policy = await client.get_object(DRIFT_POLICY.plural, namespace, policy_name) if policy_name else None
        return version, run, policy

    version, run, policy = read_cluster(read)
    result = build_lineage(version, run, policy)
    if output == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(render_lineage(result), nl=False)


def _parse_at(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """--at as a time, checked before anything is read from the cluster."""
    from modelloop.registry.history import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from error


@main.command()
@click.argument("model")
@namespace_option
@click.option(
    "--at",
    metavar="TIME",
    callback=_parse_at,
    help="Name the version that was Champion at this time instead: RFC 3339 (2026-11-01T00:00:00Z) "
    "or a date (2026-11-01, its start in UTC).",
)
@output_option
def history(model: str, namespace: str | None, at: datetime | None, output: str) -> None:
    """List the stage changes of every version of MODEL, oldest first; with --at, name the version that
    was Champion at that time (or "none")."""
    from modelloop.api import MODEL_VERSION
    from modelloop.cli.render import render_champion, render_timeline
    from modelloop.kubeconfig import current_namespace
    from modelloop.registry.history import champion_at, format_time, timeline, versions_of

    namespace = namespace or current_namespace()
    versions = versions_of(
        read_cluster(lambda client: client.list_objects(MODEL_VERSION.plural, namespace)), model
    )
    if not versions:
        raise click.ClickException(f"no ModelVersion of model {model} in namespace {namespace}")
    if at is None:
        changes = timeline(versions)
        if output == "json":
            document = {"model": model, "namespace": namespace, "changes": [c.to_json() for c in changes]}
            click.echo(json.dumps(document, indent=2))
        else:
            click.echo(render_timeline(changes), nl=False)
        return
    champion = champion_at(versions, at)
    if output == "json":
        answer = {
            "model": model,
            "namespace": namespace,
            "at": format_time(at),
            "champion": champion.version if champion else None,
            "since": format_time(champion.time) if champion else None,
        }
        click.echo(json.dumps(answer, indent=2))
    else:
        click.echo(render_champion(champion))
