"""One model's reconcile: validation against the champion, stage requests, labels, retention, summary."""

from __future__ import annotations

from typing import Any

from modelloop.api import ModelStage
from modelloop.registry.plan import plan_model
from modelloop.registry.stages import StageChange
from registry_fixtures import NOW, decided, gate, policy, version

CHAMPION_ACCURACY = {"champion": {"metric": "accuracy", "margin": 0.01}}


def plan(versions: list[dict[str, Any]], **kwargs: Any) -> Any:
    return plan_model(
        versions,
        kwargs.pop("policy", None),
        kwargs.pop("serving", set()),
        kwargs.pop("requests", []),
        kwargs.pop("keep", 10),
        NOW,
    )


def test_a_new_version_is_validated_enters_candidate_and_gets_its_labels() -> None:
    result = plan(
        [version(1, metrics={"accuracy": 0.95}, validation={"gates": [gate("accuracy", "GreaterThan", 0.9)]})]
    )

    status = result.statuses["iris-v1"]
    assert status["phase"] == "Validated"
    assert status["stage"] == "Candidate"
    assert status["history"][0]["reason"] == "Registered"
    assert status["keyMetric"] == "accuracy=0.95"
    assert status["validationTime"] == NOW
    assert status["conditions"][0]["type"] == "Ready" and status["conditions"][0]["status"] == "True"
    assert result.labels["iris-v1"] == {"modelloop.dev/model": "iris", "modelloop.dev/stage": "candidate"}
    assert [(e.reason, e.type) for e in result.events] == [("ChecksPassed", "Normal")]


def test_a_new_version_is_compared_with_the_current_champion_and_rejected_when_worse() -> None:
    champion = version(1, metrics={"accuracy": 0.96}, status=decided("Champion"))
    worse = version(2, metrics={"accuracy": 0.93}, validation=CHAMPION_ACCURACY)

    result = plan([champion, worse])

    status = result.statuses["iris-v2"]
    assert status["phase"] == "Rejected"
    assert status["comparedWith"] == "iris-v1"
    assert status["conditions"][0]["status"] == "False"
    assert status["stage"] == "Candidate"
    assert "iris-v1" not in result.statuses  # the champion is left as it was
    assert any(e.type == "Warning" and e.name == "iris-v2" for e in result.events)


def test_the_policys_gates_apply_to_every_version_of_the_model() -> None:
    result = plan(
        [version(1, metrics={"accuracy": 0.85})],
        policy=policy({"validation": {"gates": [gate("accuracy", "GreaterThanOrEqual", 0.9)]}}),
    )

    assert result.statuses["iris-v1"]["phase"] == "Rejected"
    assert result.statuses["iris-v1"]["checks"][0]["name"] == "policy/accuracy"


def test_a_decided_version_is_never_validated_again() -> None:
    old = version(1, metrics={"accuracy": 0.1}, status=decided("Candidate"))

    result = plan([old], policy=policy({"validation": {"gates": [gate("accuracy", "GreaterThan", 0.9)]}}))

    assert "iris-v1" not in result.statuses


def test_an_invalid_policy_holds_new_versions_pending_and_says_so() -> None:
    broken = policy({"retention": {"keepArchived": -1}})

    result = plan([version(1)], policy=broken)

    assert result.statuses["iris-v1"]["phase"] == "Pending"
    assert result.statuses["iris-v1"]["reason"] == "InvalidModelPolicy"
    assert result.policy_status is not None and result.policy_status["phase"] == "Invalid"


def test_the_annotation_promotes_a_version_once_and_records_the_request() -> None:
    champion = version(1, status=decided("Champion"))
    candidate = version(2, status=decided("Candidate"), requested="Champion", reason="beats v1 offline")

    result = plan([champion, candidate])

    promoted = result.statuses["iris-v2"]
    assert promoted["stage"] == "Champion"
    assert promoted["history"][-1]["reason"] == "Requested"
    assert "beats v1 offline" in promoted["history"][-1]["message"]
    assert promoted["stageRequest"]["stage"] == "Champion"
    assert promoted["stageRequest"]["result"] == "Applied"
    assert result.statuses["iris-v1"]["stage"] == "Archived"
    assert result.labels["iris-v1"]["modelloop.dev/stage"] == "archived"
    assert result.labels["iris-v2"]["modelloop.dev/stage"] == "champion"

    # The next reconcile sees what was written: the same annotation is not a new request.
    candidate["status"], champion["status"] = promoted, result.statuses["iris-v1"]
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

    assert result.statuses["iris-v1"]["stageRequest"] is None


def test_a_request_to_promote_a_rejected_version_is_refused_with_a_warning() -> None:
    rejected = version(1, status=decided("Candidate", phase="Rejected"), requested="Champion")

    result = plan([rejected])

    assert result.statuses["iris-v1"]["stage"] == "Candidate"
    assert result.statuses["iris-v1"]["stageRequest"]["result"] == "Refused"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "StageRefused")]


def test_an_annotation_naming_no_stage_is_refused_and_says_which_are() -> None:
    result = plan([version(1, status=decided("Candidate"), requested="Gold")])

    request = result.statuses["iris-v1"]["stageRequest"]
    assert request["result"] == "Refused"
    assert "Candidate, Challenger, Champion or Archived" in request["message"]


def test_a_version_asked_to_be_champion_at_registration_is_promoted_after_validation() -> None:
    result = plan([version(1, requested="champion")])

    status = result.statuses["iris-v1"]
    assert status["phase"] == "Validated"
    assert [h["stage"] for h in status["history"]] == ["Candidate", "Champion"]


def test_the_serving_controllers_requests_apply_after_the_annotations() -> None:
    v1 = version(1, status=decided("Champion"))
    v2 = version(2, status=decided("Candidate"))
    request = StageChange("iris-v2", ModelStage.CHALLENGER, "CanaryStarted", "InferenceService iris")

    result = plan([v1, v2], requests=[request])

    assert result.statuses["iris-v2"]["stage"] == "Challenger"
    assert result.statuses["iris-v2"]["history"][-1]["reason"] == "CanaryStarted"
    assert "stageRequest" not in result.statuses["iris-v2"]


def archived_models(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """Versions 1..count archived, then a Champion at count+1."""
    versions = [version(n, status=decided("Archived"), **kwargs) for n in range(1, count + 1)]
    return [*versions, version(count + 1, status=decided("Champion"))]


def deleted(result: Any) -> list[str]:
    return sorted(v["metadata"]["name"] for v in result.deletions)


def test_retention_deletes_the_archived_versions_beyond_the_newest_n() -> None:
    result = plan(archived_models(5), policy=policy({"retention": {"keepArchived": 2}}))

    assert deleted(result) == ["iris-v1", "iris-v2", "iris-v3"]
    assert {e.name for e in result.events if e.reason == "Retention"} == {"iris-v1", "iris-v2", "iris-v3"}
    assert result.policy_status is not None
    assert (result.policy_status["versions"], result.policy_status["latestVersion"]) == (3, 6)
    assert result.policy_status["champion"] == "iris-v6"


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
    assert first.policy_status["champion"] == "iris-v1"
    settled = policy({})
    settled["status"] = first.policy_status

    assert plan([version(1, status=decided("Champion"))], policy=settled).policy_status is None
