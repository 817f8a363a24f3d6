"""``modelloop rollout``: watch and steer an InferenceService's rollout (also as
``kubectl modelloop rollout``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from modelloop.cli.main import main, namespace_option, output_option, read_cluster

if TYPE_CHECKING:
    from modelloop.kube import KubeClient


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
        from modelloop.naming import ANNOTATION_ROLLOUT_ACTION

        namespace = namespace or current_namespace()
        # A token makes each use a new request, even of the same verb as last time.
        value = f"{verb}@{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"

        async def act(client: KubeClient) -> None:
            if await client.get_object(INFERENCE_SERVICE.plural, namespace, name) is None:
                raise click.ClickException(f"InferenceService {name} not found in namespace {namespace}")
            await client.patch_annotations(
                INFERENCE_SERVICE.plural, namespace, name, {ANNOTATION_ROLLOUT_ACTION: value}
            )

        read_cluster(act)
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
        obj = read_cluster(read)
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
