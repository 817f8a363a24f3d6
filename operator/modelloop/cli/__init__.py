"""The ``modelloop`` command: ``modelloop run`` starts the operator, ``modelloop crds`` prints the CRDs,
``modelloop lineage`` and ``modelloop history`` read the model registry; ``modelloop.cli.render`` lays out
what they show."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from modelloop import __version__
from modelloop.settings import LOG_FORMATS, Settings

if TYPE_CHECKING:
    from modelloop.kube import KubeClient

T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="modelloop")
def main() -> None:
    """modelloop: train, register, serve, watch for drift and retrain, as Kubernetes resources."""


@main.command()
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Namespace (or glob pattern) to watch; repeat for several. Default: MODELLOOP_NAMESPACES, "
    "or the whole cluster.",
)
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster, whatever the environment says."
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="plain, full or json. Default: MODELLOOP_LOG_FORMAT, or full.",
)
@click.option(
    "--liveness",
    "liveness_endpoint",
    default=None,
    help="Serve liveness at this URL, e.g. http://0.0.0.0:8080/healthz. "
    "Default: MODELLOOP_LIVENESS_ENDPOINT.",
)
@click.option(
    "--metrics",
    "metrics_address",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 0.0.0.0:8081. "
    "Default: MODELLOOP_METRICS_ADDRESS, or none.",
)
@click.option(
    "--peering",
    default=None,
    help="Name of the kopf peering object shared by several replicas (only one of them handles "
    "objects at a time). Default: MODELLOOP_PEERING, or standalone.",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    help="Peering priority of this replica (the highest handles objects). Default: MODELLOOP_PRIORITY, "
    "or random.",
)
@click.option("-v", "--verbose", is_flag=True, default=None, help="Log at DEBUG level.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    log_format: str | None,
    liveness_endpoint: str | None,
    metrics_address: str | None,
    peering: str | None,
    priority: int | None,
    verbose: bool | None,
) -> None:
    """Run the operator until interrupted."""
    env = Settings.from_env()
    settings = dataclasses.replace(
        env,
        namespaces=() if all_namespaces else (namespaces or env.namespaces),
        log_format=log_format or env.log_format,  # type: ignore[arg-type]  # click.Choice checked it
        liveness_endpoint=liveness_endpoint or env.liveness_endpoint,
        metrics_address=metrics_address or env.metrics_address,
        peering=peering or env.peering,
        priority=env.priority if priority is None else priority,
        verbose=env.verbose if verbose is None else verbose,
    )
    from modelloop.kube import PreflightError
    from modelloop.runner import run_operator  # kopf is imported only when the operator runs

    try:
        run_operator(settings)
    except PreflightError as error:
        raise click.ClickException(str(error)) from error


@main.command()
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one file per CRD into this folder instead of printing them.",
)
def crds(output_dir: Path | None) -> None:
    """Print (or write) the CustomResourceDefinitions generated from the API models."""
    from modelloop.api.crd import dump_crd, render_crds, write_crds

    if output_dir is None:
        click.echo("---\n".join(dump_crd(crd) for crd in render_crds()), nl=False)
        return
    for path in write_crds(output_dir):
        click.echo(f"wrote {path}")


namespace_option = click.option(
    "-n",
    "--namespace",
    default=None,
    help="Namespace of the objects. Default: the kubeconfig context's namespace, or default.",
)
output_option = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)


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

    version, run, policy = _read_cluster(read)
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

    run = _read_cluster(read)
    if output == "json":
        click.echo(json.dumps((run.get("status") or {}).get("trials") or [], indent=2))
    else:
        click.echo(render_trials(run), nl=False)


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
        _read_cluster(lambda client: client.list_objects(MODEL_VERSION.plural, namespace)), model
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


def _read_cluster(read: Callable[[KubeClient], Awaitable[T]]) -> T:
    """Run ``read`` (the command's calls to the cluster) with the command's client, and turn failures to
    reach or read the cluster into one-line errors instead of tracebacks. The client is the one in the
    command's context object (``main(obj=client)``: tests inject theirs), else a new one that logs in
    as kubectl would."""
    import aiohttp

    from modelloop import kube

    client = click.get_current_context().find_object(kube.KubeClient) or kube.KubeClient()

    async def reading() -> T:
        try:
            return await read(client)
        finally:
            await client.close()

    try:
        return asyncio.run(reading())
    except kube.PreflightError as error:
        raise click.ClickException(str(error)) from error
    except kube.ApiException as error:
        raise click.ClickException(f"the Kubernetes API server refused: {kube.api_message(error)}") from error
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise click.ClickException(f"cannot reach the Kubernetes API server: {error}") from error


@main.group()
def rollout() -> None:
    """Watch and steer an InferenceService's rollout (also as ``kubectl modelloop rollout``)."""


def _rollout_action(verb: str, summary: str) -> None:
    @rollout.command(name=verb, help=f"{summary} (sets the {verb} rollout action, acted on once).")
    @click.argument("name")
    @namespace_option
    def command(name: str, namespace: str | None) -> None:
        from modelloop.api import INFERENCE_SERVICE
        from modelloop.kubeconfig import current_namespace
        from modelloop.serving.rollout import ANNOTATION_ROLLOUT_ACTION

        namespace = namespace or current_namespace()
        # A token makes each use a new request, even of the same verb as last time.
        value = f"{verb}@{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"

        async def act(client: KubeClient) -> None:
            if await client.get_object(INFERENCE_SERVICE.plural, namespace, name) is None:
                raise click.ClickException(f"InferenceService {name} not found in namespace {namespace}")
            await client.patch_annotations(
                INFERENCE_SERVICE.plural, namespace, name, {ANNOTATION_ROLLOUT_ACTION: value}
            )

        _read_cluster(act)
        click.echo(f"inferenceservice.modelloop.dev/{name}: {verb} requested")


_rollout_action("promote", "Promote the canary now, skipping the remaining steps")
_rollout_action("abort", "Roll the canary back now")
_rollout_action("pause", "Hold the rollout at its current step")
_rollout_action("resume", "Go on with a paused rollout, or retry a rolled-back version")


@rollout.command(name="status")
@click.argument("name")
@namespace_option
@click.option("-w", "--watch", is_flag=True, help="Keep showing the status until interrupted or settled.")
@click.option(
    "--timeout", type=float, default=0, help="With --watch: stop after this many seconds (0: never)."
)
@output_option
def rollout_status(name: str, namespace: str | None, watch: bool, timeout: float, output: str) -> None:
    """Show the rollout of the InferenceService NAME: versions, step, traffic, analysis, phase."""
    import time

    from modelloop.api import INFERENCE_SERVICE
    from modelloop.cli.render import render_rollout
    from modelloop.kubeconfig import current_namespace

    namespace = namespace or current_namespace()

    async def read(client: KubeClient) -> Any:
        obj = await client.get_object(INFERENCE_SERVICE.plural, namespace, name)
        if obj is None:
            raise click.ClickException(f"InferenceService {name} not found in namespace {namespace}")
        return obj

    deadline = time.monotonic() + timeout if timeout else None
    last = None
    while True:
        obj = _read_cluster(read)
        shown = json.dumps(obj.get("status") or {}, indent=2) if output == "json" else render_rollout(obj)
        if shown != last:
            click.echo(shown, nl=output == "json")
            last = shown
        phase = (obj.get("status") or {}).get("phase")
        settled = phase in ("Stable", "Promoted", "RolledBack", "Degraded") and not (
            obj.get("status") or {}
        ).get("canaryVersion")
        if not watch or settled or (deadline is not None and time.monotonic() > deadline):
            return
        time.sleep(1.0)
