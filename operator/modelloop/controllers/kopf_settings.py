"""The operator's kopf settings, applied once at start-up."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from modelloop.api import API_VERSION, GROUP, KINDS
from modelloop.kubeconfig import EXPIRY_MARGIN_SECONDS, Credentials, data_file, load_config
from modelloop.machinery.executors import default_pool
from modelloop.naming import FINALIZER, LABEL_TRAINING_RUN
from modelloop.serving import backends

# Kinds that only event handlers and indexes watch: kopf never diffs them (no on.create/update/delete).
# That is every kind, the serving backends' watched kinds too: each controller reconciles through its work
# queue.
EVENT_ONLY_KINDS = frozenset(
    {("batch/v1", "Job"), ("v1", "Pod")}
    | {(API_VERSION, i.kind) for i in KINDS}
    | {(kind.api_version, kind.kind) for kind in backends.watched_kinds()}
)


class EventOnlyAwareDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf builds a diff base — two deep copies of the whole body — for every event of every watched
    object, also of kinds that no handler ever diffs. For pods and Jobs that was a fifth of the operator's
    CPU time in the TrainingRun benchmark; this storage skips it for EVENT_ONLY_KINDS."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        if (body.get("apiVersion"), body.get("kind")) in EVENT_ONLY_KINDS:
            return cast(kopf.BodyEssence, None)  # "no essence": kopf then sees no change, and needs none
        return super().build(body=body, extra_fields=extra_fields)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping under our own annotation prefix and post only the events we choose."""
    operator_settings = getattr(memo, "settings", None)
    if operator_settings is not None:
        # How long a dead replica's peering entry holds the others back (MODELLOOP_PEERING_LIFETIME).
        settings.peering.lifetime = operator_settings.peering_lifetime
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = EventOnlyAwareDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf.event() posts our own events; kopf's routine handler logs stay out of `kubectl describe`.
    settings.posting.level = logging.WARNING
    # Reconnect the watch streams now and then, so that a silently dropped connection heals itself.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Watch only the Jobs and pods that belong to TrainingRuns: the API server filters, not the operator.
    settings.watching.label_selectors["batch", "jobs"] = LABEL_TRAINING_RUN
    settings.watching.label_selectors["v1", "pods"] = LABEL_TRAINING_RUN
    # kopf keeps a worker per object while its events come; an idle one may go sooner than kopf's 5 s, which
    # with thousands of Jobs and pods is memory held for nothing.
    settings.queueing.idle_timeout = 0.3
    # The operator's API calls are asynchronous; kopf's own blocking calls get a small pool (queries of
    # other systems have one of their own).
    asyncio.get_running_loop().set_default_executor(default_pool())


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the configuration the operator's own client uses (``load_config``): in a pod its
    service account (the token re-read at each login: projected tokens rotate), else the kubeconfig's
    current context, running its exec credential plugin if it has one. kopf logs in again when the
    credential expires (a plugin's ``expirationTimestamp``) or the API server refuses it (401)."""
    config = load_config()
    credentials = Credentials(config)
    token = await credentials.token()
    certificate, key = config.certificate_file, config.key_file
    expiration = None
    if credentials.uses_plugin:
        credential = await credentials.current()
        if credential.certificate and credential.key:
            certificate = data_file(credential.certificate, encoded=False)
            key = data_file(credential.key, encoded=False)
        if credential.expires is not None:
            expiration = datetime.fromtimestamp(credential.expires - EXPIRY_MARGIN_SECONDS, UTC)
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_file,
        ca_data=base64.b64encode(config.ca_data.encode()).decode() if config.ca_data else None,
        insecure=config.insecure or None,
        certificate_path=certificate,
        private_key_path=key,
        token=token,
        default_namespace=config.namespace,
        expiration=expiration,
    )
