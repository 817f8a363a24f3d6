"""Conditions follow the Kubernetes API conventions."""

from modelloop.conditions import find_condition, set_condition, utc_now


def test_a_new_condition_is_appended_with_its_transition_time_and_generation() -> None:
    conditions = set_condition(
        [{"type": "Other", "status": "True"}],
        type_="Ready",
        status="False",
        reason="Pending",
        message="waiting",
        observed_generation=3,
        now="2026-01-01T00:00:00Z",
    )

    assert conditions == [
        {"type": "Other", "status": "True"},
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waiting",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        },
    ]


def test_transition_time_stays_when_only_reason_or_message_change() -> None:
    before = set_condition(
        None, type_="Ready", status="False", reason="A", message="a", observed_generation=1, now="T1"
    )

    after = set_condition(
        before, type_="Ready", status="False", reason="B", message="b", observed_generation=2, now="T2"
    )

    assert len(after) == 1
    assert after[0]["lastTransitionTime"] == "T1"
    assert (after[0]["reason"], after[0]["message"], after[0]["observedGeneration"]) == ("B", "b", 2)


def test_transition_time_moves_when_status_changes() -> None:
    before = set_condition(
        None, type_="Ready", status="False", reason="A", message="a", observed_generation=1, now="T1"
    )

    after = set_condition(
        before, type_="Ready", status="True", reason="A", message="a", observed_generation=1, now="T2"
    )

    assert after[0]["lastTransitionTime"] == "T2"


def test_set_condition_does_not_mutate_its_input() -> None:
    before = [{"type": "Ready", "status": "False", "reason": "A", "message": "", "lastTransitionTime": "T1"}]
    snapshot = [dict(c) for c in before]

    set_condition(
        before, type_="Ready", status="True", reason="B", message="", observed_generation=None, now="T2"
    )

    assert before == snapshot


def test_find_condition_returns_none_when_absent() -> None:
    assert find_condition(None, "Ready") is None
    assert find_condition([{"type": "Other"}], "Ready") is None


def test_utc_now_is_rfc3339_in_utc_with_whole_seconds() -> None:
    now = utc_now()
    assert len(now) == 20 and now.endswith("Z") and now[10] == "T"
