"""Validation of a model version: every gate, and the comparison with the model's champion, as checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelloop.api import (
    ChampionComparison,
    ChampionEvaluation,
    Comparison,
    ModelVersionPhase,
    ObjectiveDirection,
    Validation,
    ValidationCheck,
    ValidationGate,
)

_SYMBOLS = {
    Comparison.GREATER_THAN_OR_EQUAL: ">=",
    Comparison.GREATER_THAN: ">",
    Comparison.LESS_THAN_OR_EQUAL: "<=",
    Comparison.LESS_THAN: "<",
}


@dataclass(frozen=True)
class Champion:
    """The version a new one is compared with."""

    name: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one version: its phase, why, and every check (as status records it)."""

    phase: ModelVersionPhase
    reason: str
    message: str
    checks: list[ValidationCheck]
    compared_with: str | None


def validate_version(
    metrics: Mapping[str, float],
    own: Validation | None,
    policy: Validation | None,
    champion: Champion | None,
    champion_evaluation: ChampionEvaluation | None = None,
) -> Verdict:
    """Check ``metrics`` against the version's own gates, the model policy's gates, and the champion.

    The champion comparison is the version's own when it has one, else the policy's. Without a champion
    there is nothing to compare with, and that check passes (the first version of a model has to become
    champion somehow). A metric that was not reported fails its check: an unmeasured model is not
    known to be good enough.

    When ``champion_evaluation`` (the trainer's measurement of the champion on this version's own held-out
    data) is of the current champion and has the compared metric, the version is compared with that value:
    two models measured on the same rows. Otherwise with the champion's own recorded metric.
    """
    checks = [
        *(_gate_check("gate", gate, metrics) for gate in (own.gates if own else ())),
        *(_gate_check("policy", gate, metrics) for gate in (policy.gates if policy else ())),
    ]
    comparison = (own.champion if own else None) or (policy.champion if policy else None)
    compared_with = None
    if comparison is not None:
        checks.append(_champion_check(comparison, metrics, champion, champion_evaluation))
        compared_with = champion.name if champion else None
    failed = [check for check in checks if not check.passed]
    if not checks:
        return Verdict(
            ModelVersionPhase.VALIDATED,
            "NoGates",
            "No validation gates apply (none in the version, no ModelPolicy gates); validated as registered.",
            [],
            None,
        )
    if failed:
        return Verdict(
            ModelVersionPhase.REJECTED,
            "ChecksFailed",
            f"{len(failed)} of {len(checks)} checks failed: " + "; ".join(c.message or "" for c in failed),
            checks,
            compared_with,
        )
    return Verdict(
        ModelVersionPhase.VALIDATED,
        "ChecksPassed",
        f"All {len(checks)} checks passed.",
        checks,
        compared_with,
    )


def _gate_check(source: str, gate: ValidationGate, metrics: Mapping[str, float]) -> ValidationCheck:
    value = metrics.get(gate.metric)
    wanted = f"{gate.metric} {_SYMBOLS[gate.comparison]} {gate.threshold:g}"
    if value is None:
        passed, message = False, f"{gate.metric} was not reported (wanted {wanted})"
    else:
        passed = gate.comparison.holds(value, gate.threshold)
        message = f"{gate.metric}={value:g} {'meets' if passed else 'fails'} {wanted}"
    return ValidationCheck(
        name=f"{source}/{gate.metric}",
        metric=gate.metric,
        value=value,
        threshold=gate.threshold,
        comparison=gate.comparison,
        passed=passed,
        message=message,
    )


def _champion_check(
    comparison: ChampionComparison,
    metrics: Mapping[str, float],
    champion: Champion | None,
    evaluation: ChampionEvaluation | None,
) -> ValidationCheck:
    metric = comparison.metric
    # Without a champion the check passes; with one, only a comparison made below passes it.
    check = ValidationCheck(
        name=f"champion/{metric}", metric=metric, value=metrics.get(metric), passed=champion is None
    )
    if champion is None:
        check.message = "The model has no champion yet: nothing to compare with."
        return check
    if evaluation is not None and evaluation.version == champion.name and metric in evaluation.metrics:
        best: float | None = evaluation.metrics[metric]
        check.same_data = True
    else:
        best = champion.metrics.get(metric)
    if best is None:
        check.message = f"champion {champion.name} has no metric {metric} to compare with"
        return check
    if comparison.direction == ObjectiveDirection.MAXIMIZE:
        threshold, rule = best - comparison.margin, Comparison.GREATER_THAN_OR_EQUAL
    else:
        threshold, rule = best + comparison.margin, Comparison.LESS_THAN_OR_EQUAL
    check.threshold, check.comparison = threshold, rule
    wanted = (
        f"champion {champion.name}'s {metric}={best:g}"
        + (" on the same held-out data" if check.same_data else "")
        + (f" within a margin of {comparison.margin:g}" if comparison.margin else "")
    )
    if check.value is None:
        check.message = f"{metric} was not reported (wanted to compare with {wanted})"
        return check
    check.passed = rule.holds(check.value, threshold)
    verb = "is no worse than" if check.passed else "is worse than"
    check.message = f"{metric}={check.value:g} {verb} {wanted}"
    return check


def validation_metrics(validation: Validation | None) -> list[str]:
    """The metrics a validation looks at, gates first."""
    if validation is None:
        return []
    return [
        *(gate.metric for gate in validation.gates),
        *([validation.champion.metric] if validation.champion else []),
    ]


def format_key_metric(metric_names: Sequence[str], metrics: Mapping[str, float]) -> str | None:
    """The metric ``kubectl get`` shows, formatted ``name=value``: the first of ``metric_names`` that was
    reported, else a well-known one, else the first by name."""
    candidates = [*metric_names, *_PREFERRED_METRICS, *sorted(metrics)]
    name = next((m for m in candidates if m in metrics), None)
    return None if name is None else f"{name}={metrics[name]:.4g}"


_PREFERRED_METRICS = ("accuracy", "f1_macro", "roc_auc", "r2", "rmse")
