"""What the operator asks of kopf for each watched kind: kopf's cost is per handler and per event, and
its diff base (two deep copies of every body) is for change handlers that the operator never uses."""

from __future__ import annotations

import collections

import kopf

import modelloop.controllers  # noqa: F401  # registers the handlers
from modelloop.api import API_VERSION, KINDS
from modelloop.controllers.kopf_settings import EVENT_ONLY_KINDS
from modelloop.serving import backends


def test_every_kind_has_one_handler_for_all_its_events_and_none_diffs() -> None:
    """Handlers that select by label (a retraining's run and versions) see only some events; those for
    every event are one per kind, which calls every controller that follows the kind."""
    registry = kopf.get_default_registry()
    per_kind = collections.Counter(
        (handler.selector.group, handler.selector.any_name)
        for handler in registry._watching.get_all_handlers()
        if handler.selector is not None and not handler.labels
    )
    assert per_kind[("modelloop.dev", "inferenceservices")] == 1
    assert per_kind[("modelloop.dev", "modelversions")] == 1
    assert max(per_kind.values()) == 1, per_kind
    assert registry._changing.get_all_handlers() == []


def test_every_watched_kind_skips_kopfs_diff_base() -> None:
    watched = {(API_VERSION, info.kind) for info in KINDS} | {("batch/v1", "Job"), ("v1", "Pod")}
    watched |= {(kind.api_version, kind.kind) for kind in backends.watched_kinds()}
    assert watched <= EVENT_ONLY_KINDS
