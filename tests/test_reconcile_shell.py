"""The shell every object controller's pass runs in (``ObjectReconciler``), tested once for all of them:
which object a pass acts on, what it refuses and how, what a conflict and a refused request do."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from controller_fakes import RecordingClient
from modelloop import kube
from modelloop.conditions import refusal_status
from modelloop.machinery.reconcile import ObjectReconciler, Parsed, Refused
from modelloop.machinery.status import StatusWriter

KEY = ("ml", "thing")
# No test here posts through kopf (which needs a running operator).
pytestmark = pytest.mark.usefixtures("posted")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int


class Status(BaseModel):
    phase: str | None = None
    count: int = 0


def thing(spec: dict[str, Any], status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    metadata = {"namespace": "ml", "name": "thing", "uid": "u1", "generation": 2, "resourceVersion": "7"}
    return {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "Thing",
        "metadata": {**metadata, **meta},
        "spec": spec,
        "status": status or {},
    }


def refusal(previous: Mapping[str, Any], generation: int, reason: str, message: str) -> dict[str, Any]:
    return refusal_status(previous, generation, "Degraded", reason, message, "False")


class Shell:
    """One kind's reconciler over an index holding one object, recording what its pass saw."""

    def __init__(self, obj: dict[str, Any] | None, client: RecordingClient | None = None) -> None:
        self.client = client or RecordingClient()
        self.seen: list[Parsed[Spec, Status]] = []
        self.indexes = {"things": {KEY: [obj]} if obj is not None else {}}
        self.reconciler: ObjectReconciler[Spec, Status] = ObjectReconciler(
            "Thing",
            "things",
            self.indexes,
            StatusWriter("things", self.client),
            self.parse_spec,
            Status.model_validate,
            self.act,
            refusal,
        )

    @staticmethod
    def parse_spec(obj: dict[str, Any]) -> Spec:
        if str(obj["spec"].get("size")) == "1000":
            raise Refused("TooLarge", "spec.size is over 100")
        return Spec.model_validate(obj["spec"])

    async def act(self, parsed: Parsed[Spec, Status]) -> float | None:
        self.seen.append(parsed)
        if parsed.spec.size == 0:
            raise Refused("Empty", "spec.size is 0: nothing to do")
        await self.reconciler.writer.write(parsed.obj, {"count": parsed.status.count + 1})
        return 30.0

    def reconcile(self) -> float | None:
        return asyncio.run(self.reconciler.reconcile(KEY))


def test_a_pass_gets_the_object_parsed_once_and_returns_its_requeue() -> None:
    shell = Shell(thing({"size": 3}, {"phase": "Ready", "count": 4}))

    assert shell.reconcile() == 30.0

    [parsed] = shell.seen
    assert parsed.spec == Spec(size=3) and parsed.status == Status(phase="Ready", count=4)
    assert (parsed.key, parsed.generation) == (KEY, 2)
    assert shell.client.statuses == [{"count": 5}]


@pytest.mark.parametrize("gone", ["absent", "deleting"])
def test_an_object_gone_or_being_deleted_is_not_acted_on(gone: str) -> None:
    obj = None if gone == "absent" else thing({"size": 3}, deletionTimestamp="2026-12-06T00:00:00Z")
    shell = Shell(obj)

    assert shell.reconcile() is None
    assert shell.seen == [] and shell.client.calls == []


def test_an_invalid_spec_is_refused_in_status_naming_the_field_and_told_once(
    posted: list[tuple[str, str, str]],
) -> None:
    shell = Shell(thing({"size": "many"}))

    assert shell.reconcile() is None
    assert shell.seen == []
    [written] = shell.client.statuses
    assert (written["phase"], written["reason"]) == ("Degraded", "InvalidSpec")
    assert "spec.size" in written["message"]
    assert written["conditions"][0]["status"] == "False" and written["observedGeneration"] == 2
    assert [(t, r) for t, r, _ in posted] == [("Warning", "InvalidSpec")]

    # The next pass reads the refusal back: nothing new to write, nothing new to tell.
    shell.indexes["things"][KEY] = [thing({"size": "many"}, dict(written), resourceVersion="11")]
    shell.reconcile()
    assert len(shell.client.statuses) == 1 and len(posted) == 1


def test_a_spec_the_kind_refuses_before_parsing_keeps_its_reason() -> None:
    shell = Shell(thing({"size": 1000}))

    shell.reconcile()

    assert [(s["reason"], s["message"]) for s in shell.client.statuses] == [
        ("TooLarge", "spec.size is over 100")
    ]


def test_what_a_pass_refuses_reaches_status_and_nothing_else_is_written() -> None:
    shell = Shell(thing({"size": 0}, {"count": 4}))

    assert shell.reconcile() is None

    [written] = shell.client.statuses
    assert (written["reason"], written["message"]) == ("Empty", "spec.size is 0: nothing to do")
    assert "count" not in written


def test_a_status_that_cannot_be_read_is_refused_and_not_acted_on() -> None:
    shell = Shell(thing({"size": 3}, {"count": "lots"}))

    shell.reconcile()

    assert shell.seen == []
    [written] = shell.client.statuses
    assert written["reason"] == "InvalidStatus" and "count" in written["message"]
    assert "count" not in written, "the unreadable field is left as it is"


def test_a_conflict_reads_the_object_again_and_decides_on_the_fresh_copy() -> None:
    fresh = thing({"size": 3}, {"count": 40}, resourceVersion="9")
    client = RecordingClient(objects={("things", "ml", "thing"): fresh})
    client.conflicts = 1
    shell = Shell(thing({"size": 3}, {"count": 4}), client)

    shell.reconcile()

    assert [p.status.count for p in shell.seen] == [4, 40]
    assert client.calls == [("patch_status", "thing"), ("get", "things", "thing"), ("patch_status", "thing")]
    assert client.statuses == [{"count": 41}]


@pytest.mark.parametrize(
    ("status", "reported"), [(422, True), (403, True), (404, True), (500, False), (409, False)]
)
def test_a_request_refused_for_good_reaches_status_and_an_event_once(
    posted: list[tuple[str, str, str]], status: int, reported: bool
) -> None:
    shell = Shell(thing({"size": 3}))
    error = kube.ApiException(status, "Refused", '{"message": "admission webhook said no"}')

    asyncio.run(shell.reconciler.report_failure(KEY, error, 1))

    if not reported:
        assert shell.client.statuses == [] and posted == []
        return
    [written] = shell.client.statuses
    assert written["reason"] == "ApiRequestRefused" and "admission webhook said no" in written["message"]
    assert [(t, r) for t, r, _ in posted] == [("Warning", "ApiRequestRefused")]
    shell.indexes["things"][KEY] = [thing({"size": 3}, dict(written), resourceVersion="11")]
    asyncio.run(shell.reconciler.report_failure(KEY, error, 2))
    assert len(shell.client.statuses) == 1 and len(posted) == 1, "once per message"


def test_a_refusal_that_cannot_be_written_is_left_to_the_next_pass() -> None:
    client = RecordingClient()
    client.refuse = kube.ApiException(403, "Forbidden", None)
    shell = Shell(thing({"size": 3}), client)

    asyncio.run(shell.reconciler.report_failure(KEY, kube.ApiException(422, "Invalid", None), 1))

    assert client.calls == [("patch_status", "thing")] and client.statuses == []
