"""One model's reconcile: validation against the champion, stage requests, labels, retention, summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modelloop.api import ModelPolicyStatus, ModelVersionStatus
from modelloop.machinery.status import status_json, status_patch
from modelloop.naming import ANNOTATION_REQUESTED_STAGE
from modelloop.registry.plan import ModelPlan, ParsedVersion, plan_model
from modelloop.registry.serving import ServedModel
from registry_fixtures import NOW, decided, gate, policy, version

CHAMPION_ACCURACY = {"champion": {"metric": "accuracy", "margin": 0.01}}
AT = datetime(2026, 11, 23, 10, tzinfo=UTC)  # NOW, as a time


def plan(versions: list[dict[str, Any]], **kwargs: Any) -> ModelPlan:
    """plan_model on the versions as the API server returns them (each status parsed, as the controller
    parses it), with every status it would write checked against the kind's status model (as the CRD's
    schema would check it)."""
    result = plan_model(
        [ParsedVersion(v, ModelVersionStatus.model_validate(v["status"])) for v in versions],
        kwargs.pop("policy", None),
        kwargs.pop("serving", set()),
        kwargs.pop("served", []),
        kwargs.pop("keep", 10),
        AT,
        kwargs.pop("unreadable", ()),
    )
    for status in result.statuses.values():
        ModelVersionStatus.model_validate(stored(status))
    if result.policy_status is not None:
        ModelPolicyStatus.model_validate(
            {k: v for k, v in status_json(result.policy_status).items() if v is not None}
        )
    return result


def stored(status: ModelVersionStatus) -> dict[str, Any]:
    """``status`` as the API server stores it once written (the writer's merge patch: None removes)."""
    return {k: v for k, v in status_json(status).items() if v is not None}


def test_a_new_version_is_validated_enters_candidate_and_gets_its_labels() -> None:
    result = plan(
        [version(1, metrics={"accuracy": 0.95}, validation={"gates": [gate("accuracy", "GreaterThan", 0.9)]})]
    )

    status = result.statuses["iris-v1"]
    assert status.phase == "Validated"
    assert status.stage == "Candidate"
    assert status.history[0].reason == "Registered"
    assert status.key_metric == "accuracy=0.95"
    assert stored(status)["validationTime"] == NOW
    assert status.conditions[0].type == "Ready" and status.conditions[0].status == "True"
    assert result.labels["iris-v1"] == {"modelloop.dev/model": "iris", "modelloop.dev/stage": "candidate"}
    assert [(e.reason, e.type) for e in result.events] == [("ChecksPassed", "Normal")]


def test_a_new_version_is_compared_with_the_current_champion_and_rejected_when_worse() -> None:
    champion = version(1, metrics={"accuracy": 0.96}, status=decided("Champion"))
    worse = version(2, metrics={"accuracy": 0.93}, validation=CHAMPION_ACCURACY)

    result = plan([champion, worse])

    status = result.statuses["iris-v2"]
    assert status.phase == "Rejected"
    assert status.compared_with == "iris-v1"
    assert status.conditions[0].status == "False"
    assert status.stage == "Candidate"
    assert "iris-v1" not in result.statuses  # the champion is left as it was
    assert any(e.type == "Warning" and e.name == "iris-v2" for e in result.events)


def test_a_new_version_is_compared_with_the_champion_on_its_own_held_out_data_when_measured() -> None:
    champion = version(1, metrics={"accuracy": 0.90}, status=decided("Champion"))
    # Better than the champion's record (0.90), worse than the champion on this version's rows (0.97).
    new = version(2, metrics={"accuracy": 0.93}, validation=CHAMPION_ACCURACY)
    new["spec"]["championEvaluation"] = {"version": "iris-v1", "metrics": {"accuracy": 0.97}}

    result = plan([champion, new])

    status = result.statuses["iris-v2"]
    assert status.phase == "Rejected"
    assert status.checks[0].same_data is True
    assert "champion iris-v1's accuracy=0.97 on the same held-out data" in (status.message or "")


def test_the_policys_gates_apply_to_every_version_of_the_model() -> None:
    result = plan(
        [version(1, metrics={"accuracy": 0.85})],
        policy=policy({"validation": {"gates": [gate("accuracy", "GreaterThanOrEqual", 0.9)]}}),
    )

    assert result.statuses["iris-v1"].phase == "Rejected"
    assert result.statuses["iris-v1"].checks[0].name == "policy/accuracy"


def test_a_decided_version_is_never_validated_again() -> None:
    old = version(1, metrics={"accuracy": 0.1}, status=decided("Candidate"))

    result = plan([old], policy=policy({"validation": {"gates": [gate("accuracy", "GreaterThan", 0.9)]}}))

    assert "iris-v1" not in result.statuses


def test_an_invalid_policy_holds_new_versions_pending_and_says_so() -> None:
    broken = policy({"retention": {"keepArchived": -1}})

    result = plan([version(1)], policy=broken)

    assert result.statuses["iris-v1"].phase == "Pending"
    assert result.statuses["iris-v1"].reason == "InvalidModelPolicy"
    assert result.policy_status is not None and result.policy_status.phase == "Invalid"


def test_the_annotation_promotes_a_version_once_and_records_the_request() -> None:
    champion = version(1, status=decided("Champion"))
    candidate = version(2, status=decided("Candidate"), requested="Champion", reason="beats v1 offline")

    result = plan([champion, candidate])

    promoted = result.statuses["iris-v2"]
    assert promoted.stage == "Champion"
    assert promoted.history[-1].reason == "Requested"
    assert "beats v1 offline" in (promoted.history[-1].message or "")
    assert promoted.stage_request is not None
    assert promoted.stage_request.stage == "Champion"
    assert promoted.stage_request.result == "Applied"
    assert result.statuses["iris-v1"].stage == "Archived"
    assert result.labels["iris-v1"]["modelloop.dev/stage"] == "archived"
    assert result.labels["iris-v2"]["modelloop.dev/stage"] == "champion"

    # The next reconcile sees what was written: the same annotation is not a new request.
    candidate["status"], champion["status"] = stored(promoted), stored(result.statuses["iris-v1"])
    again = plan([champion, candidate])
    assert again.statuses == {}


def test_a_stale_champion_annotation_does_not_take_the_title_back() -> None:
    # v1 was made Champion through its annotation, then v2 replaced it; v1's annotation is still there.
    archived = decided("Archived")
    archived["stageRequest"] = {"stage": "Champion", "result": "Applied", "message": "", "time": NOW}
    v1 = version(1, status=archived, requested="Champion")
    v2 = version(2, status=decided("Champion"))

    assert plan([v1, v2]).statuses == {}


def test_removing_the_annotation_clears_the_request_so_the_same_value_can_be_asked_again() -> None:
    handled = decided("Archived")
    handled["stageRequest"] = {"stage": "Champion", "result": "Applied", "message": "", "time": NOW}

    result = plan([version(1, status=handled)])

    assert result.statuses["iris-v1"].stage_request is None
    assert status_patch(handled, result.statuses["iris-v1"])["stageRequest"] is None  # removed


def test_a_request_to_promote_a_rejected_version_is_refused_with_a_warning() -> None:
    rejected = version(1, status=decided("Candidate", phase="Rejected"), requested="Champion")

    result = plan([rejected])

    request = result.statuses["iris-v1"].stage_request
    assert result.statuses["iris-v1"].stage == "Candidate"
    assert request is not None and request.result == "Refused"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "StageRefused")]


def test_an_annotation_naming_no_stage_is_refused_and_says_which_are() -> None:
    result = plan([version(1, status=decided("Candidate"), requested="Gold")])

    request = result.statuses["iris-v1"].stage_request
    assert request is not None and request.result == "Refused"
    assert "Candidate, Challenger, Champion or Archived" in (request.message or "")


def test_a_version_asked_to_be_champion_at_registration_is_promoted_after_validation() -> None:
    result = plan([version(1, requested="champion")])

    status = result.statuses["iris-v1"]
    assert status.phase == "Validated"
    assert [h.stage for h in status.history] == ["Candidate", "Champion"]


def served(stable: int | None = None, canary: int | None = None, service: str = "iris") -> ServedModel:
    return ServedModel(service, stable, canary)


def applied(result: ModelPlan, versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The versions as they are once ``result``'s statuses are written (a restarted operator sees these)."""
    written = {name: stored(status) for name, status in result.statuses.items()}
    return [{**v, "status": written.get(v["metadata"]["name"], v["status"])} for v in versions]


def test_a_canary_in_rollout_is_challenger_and_the_record_says_serving_set_it() -> None:
    v1 = version(1, status=decided("Champion"))
    v2 = version(2, status=decided("Candidate"))

    result = plan([v1, v2], served=[served(stable=1, canary=2)])

    status = result.statuses["iris-v2"]
    assert status.stage == "Challenger"
    assert status.serving_stage == "Challenger"
    assert status.history[-1].reason == "CanaryStarted"
    assert "InferenceService iris" in (status.history[-1].message or "")
    assert result.statuses["iris-v1"].serving_stage == "Champion"
    assert result.statuses["iris-v1"].stage == "Champion"  # already: no history entry added
    assert len(result.statuses["iris-v1"].history) == 1


def test_a_promoted_canary_becomes_champion_and_archives_the_previous_one() -> None:
    versions = [version(1, status=decided("Champion")), version(2, status=decided("Candidate"))]
    in_canary = applied(plan(versions, served=[served(stable=1, canary=2)]), versions)

    result = plan(in_canary, served=[served(stable=2)])

    assert result.statuses["iris-v2"].stage == "Champion"
    assert [h.stage for h in result.statuses["iris-v2"].history] == [
        "Candidate",
        "Challenger",
        "Champion",
    ]
    assert result.statuses["iris-v1"].stage == "Archived"
    assert result.statuses["iris-v1"].history[-1].reason == "ReplacedByChampion"
    assert result.statuses["iris-v1"].serving_stage is None
    assert result.labels["iris-v2"]["modelloop.dev/stage"] == "champion"


def test_a_rolled_back_canary_goes_back_to_the_stage_it_had_before() -> None:
    versions = [version(1, status=decided("Champion")), version(2, status=decided("Candidate"))]
    in_canary = applied(plan(versions, served=[served(stable=1, canary=2)]), versions)

    result = plan(in_canary, served=[served(stable=1)])

    status = result.statuses["iris-v2"]
    assert status.stage == "Candidate"
    assert status.history[-1].reason == "CanaryEnded"
    assert status.serving_stage is None
    assert "iris-v1" not in result.statuses or result.statuses["iris-v1"].stage == "Champion"


def test_serving_stages_are_level_triggered_a_second_pass_changes_nothing() -> None:
    versions = [version(1, status=decided("Champion")), version(2, status=decided("Candidate"))]
    first = plan(versions, served=[served(stable=1, canary=2)])

    again = plan(applied(first, versions), served=[served(stable=1, canary=2)])

    assert again.statuses == {}
    assert not [e for e in again.events if e.reason in ("StageChanged", "StageRefused")]


def test_a_user_who_moves_a_version_by_hand_is_not_overruled_until_serving_changes() -> None:
    versions = [version(1, status=decided("Champion")), version(2, status=decided("Candidate"))]
    in_canary = applied(plan(versions, served=[served(stable=1, canary=2)]), versions)
    meta = {**in_canary[1]["metadata"], "annotations": {ANNOTATION_REQUESTED_STAGE: "Archived"}}
    annotated = [in_canary[0], {**in_canary[1], "metadata": meta}]
    by_hand = applied(plan(annotated, served=[served(stable=1, canary=2)]), annotated)
    assert by_hand[1]["status"]["stage"] == "Archived"

    result = plan(by_hand, served=[served(stable=1, canary=2)])

    assert "iris-v2" not in result.statuses or result.statuses["iris-v2"].stage == "Archived"


def test_a_version_that_is_not_validated_is_not_made_champion_by_serving() -> None:
    v1 = version(1, status=decided("Candidate", phase="Rejected"))

    result = plan([v1], served=[served(stable=1)])

    assert result.statuses["iris-v1"].stage == "Candidate"
    assert result.statuses["iris-v1"].serving_stage == "Champion"  # acted on once, not every pass
    assert [e.reason for e in result.events if e.name == "iris-v1"] == ["StageRefused"]


def test_of_several_services_the_newest_stable_version_is_champion() -> None:
    versions = [version(n, status=decided("Candidate")) for n in (1, 2, 3)]

    result = plan(versions, served=[served(stable=3, service="b"), served(stable=2, service="a")])

    assert result.statuses["iris-v3"].stage == "Champion"
    assert "iris-v2" not in result.statuses  # untouched: still the Candidate it was


def archived_models(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """Versions 1..count archived, then a Champion at count+1."""
    versions = [version(n, status=decided("Archived"), **kwargs) for n in range(1, count + 1)]
    return [*versions, version(count + 1, status=decided("Champion"))]


def deleted(result: ModelPlan) -> list[str]:
    return sorted(v["metadata"]["name"] for v in result.deletions)


def test_retention_deletes_the_archived_versions_beyond_the_newest_n() -> None:
    result = plan(archived_models(5), policy=policy({"retention": {"keepArchived": 2}}))

    assert deleted(result) == ["iris-v1", "iris-v2", "iris-v3"]
    assert {e.name for e in result.events if e.reason == "Retention"} == {"iris-v1", "iris-v2", "iris-v3"}
    assert result.policy_status is not None
    assert (result.policy_status.versions, result.policy_status.latest_version) == (3, 6)
    assert result.policy_status.champion == "iris-v6"


def test_without_a_policy_retention_keeps_the_operators_default() -> None:
    assert deleted(plan(archived_models(5), keep=4)) == ["iris-v1"]


def test_retention_never_deletes_a_served_version_a_users_version_or_the_highest_number() -> None:
    versions = archived_models(4)
    versions[0]["metadata"]["labels"] = {}  # v1 applied by a user
    versions.append(version(6, status=decided("Archived")))  # the highest number, archived

    result = plan(versions, keep=0, serving={2})

    assert deleted(result) == ["iris-v3", "iris-v4"]


def test_retention_never_deletes_champions_challengers_or_candidates() -> None:
    versions = [
        version(1, status=decided("Challenger")),
        version(2, status=decided("Candidate")),
        version(3, status=decided("Champion")),
        version(4, status=decided("Candidate")),
    ]
    assert plan(versions, keep=0).deletions == []


def test_a_champion_replaced_by_a_request_can_be_retained_away_in_the_same_pass() -> None:
    versions = [
        version(1, status=decided("Champion")),
        version(2, status=decided("Candidate"), requested="Champion"),
    ]

    result = plan(versions, keep=0)

    assert deleted(result) == ["iris-v1"]


def test_the_policy_status_is_written_only_when_it_changes() -> None:
    first = plan([version(1, status=decided("Champion"))], policy=policy({}))
    assert first.policy_status is not None
    assert first.policy_status.champion == "iris-v1"
    settled = policy({})
    settled["status"] = {k: v for k, v in status_json(first.policy_status).items() if v is not None}

    assert plan([version(1, status=decided("Champion"))], policy=settled).policy_status is None


def test_a_version_whose_status_cannot_be_read_is_left_as_it_is_but_counted() -> None:
    # v2's status cannot be read (the controller refuses it): it is never written, labelled, deleted or
    # taken for the Champion, but it still counts among the model's versions.
    unreadable = version(2, status={"stage": "Gold"})
    versions = [version(1, status=decided("Archived")), version(3, status=decided("Candidate"))]

    result = plan(versions, policy=policy({}), keep=0, unreadable=[unreadable])

    assert "iris-v2" not in result.statuses and "iris-v2" not in result.labels
    assert deleted(result) == ["iris-v1"]
    assert result.policy_status is not None
    assert (result.policy_status.versions, result.policy_status.latest_version) == (2, 3)


def test_a_status_left_as_it_was_is_not_rewritten_however_its_times_are_spelled() -> None:
    # The same instant as the operator writes it (2026-11-01T00:00:00Z), spelled otherwise by hand.
    champion = decided("Champion", since="2026-11-01T01:00:00+01:00")
    labels = {"modelloop.dev/model": "iris", "modelloop.dev/stage": "champion"}
    v1 = version(1, status=champion)
    v1["metadata"]["labels"].update(labels)

    result = plan([v1])

    assert (result.statuses, result.labels, result.events) == ({}, {}, [])


def test_a_policy_status_that_cannot_be_read_is_replaced_whole() -> None:
    broken = policy({})
    broken["status"] = {"versions": "many", "champion": "iris-v1"}

    result = plan([version(1, status=decided("Champion"))], policy=broken)

    assert result.policy_status is not None
    assert (result.policy_status.versions, result.policy_status.champion) == (1, "iris-v1")
    assert result.policy_status.phase == "Active"
