"""The ``modelloop`` command group and what its commands share (the namespace and output options, the
client that reads the cluster); ``modelloop run`` starts the operator and ``modelloop crds`` prints the
CRDs. The other commands live beside it: ``registry`` (lineage, history), ``training`` (trials) and
``rollout``; ``render`` lays out what they show."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

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


def read_cluster(read: Callable[[KubeClient], Awaitable[T]]) -> T:
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
