"""Validation of a model version: gates, policy gates and the champion comparison, each a check."""

from __future__ import annotations

import pytest

from modelloop.api import ChampionEvaluation, ModelVersionPhase, Validation
from modelloop.registry.validation import Champion, format_key_metric, validate_version


def validation(**fields: object) -> Validation:
    return Validation.model_validate(fields)


ACCURACY_90 = {"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.9}


def test_a_version_meeting_every_gate_is_validated_with_each_check_listed() -> None:
    own = validation(gates=[ACCURACY_90])
    policy = validation(gates=[{"metric": "rmse", "comparison": "LessThan", "threshold": 0.5}])

    verdict = validate_version({"accuracy": 0.95, "rmse": 0.2}, own, policy, None)

    assert verdict.phase == ModelVersionPhase.VALIDATED
    assert verdict.reason == "ChecksPassed"
    assert [(c.name, c.value, c.threshold, c.passed) for c in verdict.checks] == [
        ("gate/accuracy", 0.95, 0.9, True),
        ("policy/rmse", 0.2, 0.5, True),
    ]


def test_a_version_below_an_absolute_gate_is_rejected_and_the_message_says_by_how_much() -> None:
    verdict = validate_version({"accuracy": 0.71}, validation(gates=[ACCURACY_90]), None, None)

    assert verdict.phase == ModelVersionPhase.REJECTED
    assert verdict.reason == "ChecksFailed"
    assert "accuracy=0.71 fails accuracy >= 0.9" in verdict.message
    assert verdict.checks[0].passed is False


def test_an_unreported_metric_fails_its_gate() -> None:
    verdict = validate_version({"f1": 0.99}, validation(gates=[ACCURACY_90]), None, None)

    assert verdict.phase == ModelVersionPhase.REJECTED
    assert "accuracy was not reported" in (verdict.checks[0].message or "")
    assert verdict.checks[0].value is None


def test_without_any_gate_a_version_is_validated_and_says_why() -> None:
    verdict = validate_version({"accuracy": 0.1}, None, None, None)

    assert (verdict.phase, verdict.reason, verdict.checks) == (ModelVersionPhase.VALIDATED, "NoGates", [])


@pytest.mark.parametrize(
    ("value", "passed"),
    [(0.95, True), (0.93, True), (0.92, False)],
    ids=["better", "worse-within-margin", "worse-beyond-margin"],
)
def test_the_champion_comparison_allows_a_regression_up_to_the_margin(value: float, passed: bool) -> None:
    own = validation(champion={"metric": "accuracy", "margin": 0.02})
    champion = Champion("iris-v1", {"accuracy": 0.95})

    verdict = validate_version({"accuracy": value}, own, None, champion)

    check = verdict.checks[0]
    assert check.name == "champion/accuracy"
    assert check.passed is passed
    assert check.threshold == pytest.approx(0.93)
    assert check.comparison == "GreaterThanOrEqual"
    assert verdict.compared_with == "iris-v1"
    assert "iris-v1" in (check.message or "")


def test_for_a_metric_to_minimize_the_champion_comparison_looks_the_other_way() -> None:
    own = validation(champion={"metric": "rmse", "direction": "Minimize", "margin": 0.1})
    champion = Champion("iris-v4", {"rmse": 1.0})

    assert validate_version({"rmse": 1.05}, own, None, champion).phase == ModelVersionPhase.VALIDATED
    rejected = validate_version({"rmse": 1.2}, own, None, champion)
    assert rejected.phase == ModelVersionPhase.REJECTED
    assert rejected.checks[0].comparison == "LessThanOrEqual"


def test_the_first_version_of_a_model_passes_the_champion_comparison() -> None:
    verdict = validate_version({"accuracy": 0.5}, validation(champion={"metric": "accuracy"}), None, None)

    assert verdict.phase == ModelVersionPhase.VALIDATED
    assert verdict.compared_with is None
    assert "no champion" in (verdict.checks[0].message or "")


def test_a_champion_without_the_metric_cannot_vouch_for_the_new_version() -> None:
    verdict = validate_version(
        {"accuracy": 0.99},
        validation(champion={"metric": "accuracy"}),
        None,
        Champion("iris-v1", {"f1": 0.9}),
    )

    assert verdict.phase == ModelVersionPhase.REJECTED
    assert "iris-v1 has no metric accuracy" in verdict.message


def test_the_versions_own_champion_comparison_wins_over_the_policys() -> None:
    own = validation(champion={"metric": "accuracy", "margin": 0.5})
    policy = validation(champion={"metric": "accuracy", "margin": 0.0})

    verdict = validate_version({"accuracy": 0.6}, own, policy, Champion("iris-v1", {"accuracy": 0.9}))

    assert verdict.phase == ModelVersionPhase.VALIDATED
    assert len(verdict.checks) == 1


def same_data(version: str, **metrics: float) -> ChampionEvaluation:
    return ChampionEvaluation(version=version, metrics=metrics)


def test_a_version_better_than_the_champions_record_but_worse_on_the_same_data_is_rejected() -> None:
    own = validation(champion={"metric": "accuracy"})
    # The champion's own record came from easier held-out rows; on this version's rows it scores 0.95.
    champion = Champion("iris-v3", {"accuracy": 0.89})

    verdict = validate_version({"accuracy": 0.91}, own, None, champion, same_data("iris-v3", accuracy=0.95))

    assert verdict.phase == ModelVersionPhase.REJECTED
    check = verdict.checks[0]
    assert (check.passed, check.threshold, check.same_data) == (False, 0.95, True)
    assert check.message == (
        "accuracy=0.91 is worse than champion iris-v3's accuracy=0.95 on the same held-out data"
    )
    assert verdict.compared_with == "iris-v3"
    # Without the evaluation, the record alone would have let it through.
    assert validate_version({"accuracy": 0.91}, own, None, champion).phase == ModelVersionPhase.VALIDATED


def test_a_version_no_worse_than_the_champion_on_the_same_data_passes_within_the_margin() -> None:
    own = validation(champion={"metric": "accuracy", "margin": 0.02})
    champion = Champion("iris-v3", {"accuracy": 0.99})

    verdict = validate_version({"accuracy": 0.94}, own, None, champion, same_data("iris-v3", accuracy=0.95))

    assert verdict.phase == ModelVersionPhase.VALIDATED
    assert verdict.checks[0].same_data is True
    assert (
        "no worse than champion iris-v3's accuracy=0.95 on the same held-out data within a margin of 0.02"
        in (verdict.checks[0].message or "")
    )


@pytest.mark.parametrize(
    "evaluation",
    [same_data("iris-v2", accuracy=0.5), same_data("iris-v3", f1_macro=0.5)],
    ids=["of-another-champion", "without-the-metric"],
)
def test_an_evaluation_of_another_champion_or_metric_falls_back_to_the_champions_record(
    evaluation: ChampionEvaluation,
) -> None:
    own = validation(champion={"metric": "accuracy"})

    verdict = validate_version(
        {"accuracy": 0.9}, own, None, Champion("iris-v3", {"accuracy": 0.95}), evaluation
    )

    check = verdict.checks[0]
    assert verdict.phase == ModelVersionPhase.REJECTED
    assert check.same_data is None
    assert check.threshold == 0.95
    assert "same held-out data" not in (check.message or "")


def test_key_metric_prefers_the_metrics_the_gates_look_at() -> None:
    metrics = {"accuracy": 0.95312, "zeta": 1.0, "loss": 0.1}
    assert format_key_metric(["loss"], metrics) == "loss=0.1"
    assert format_key_metric([], metrics) == "accuracy=0.9531"
    assert format_key_metric([], {"zeta": 2.0, "beta": 1.0}) == "beta=1"
    assert format_key_metric([], {}) is None
