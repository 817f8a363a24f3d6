"""A DriftPolicy's decision, as a pure function of its spec, its last status, what the metrics say now and
how far its last retraining has come.

One evaluation judges every metric: a value past its threshold is a breach; no value (no data, NaN, an
unreachable Prometheus) is inconclusive and never a breach; a query Prometheus refuses makes the policy
Degraded with Prometheus's own message. An estimated metric (``estimate``: a value made without labels)
is judged by its value alone, its band only shown in the evidence, unless it asks to be judged by its whole
band (``breachWhen: WholeBand``), when the band's bound nearer the threshold must be past it too, and a
band without data is inconclusive. A breach counts only once it has held at every evaluation for the
whole ``window``: an inconclusive or clean evaluation in between starts the window again. A confirmed
breach starts a retraining unless one is in flight (its run trains, or its version is in validation or
canary), the ``cooldown`` since the last one has not passed, or the budget of the period is spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelloop.api import (
    DriftMetric,
    DriftPolicyPhase,
    DriftPolicySpec,
    DriftPolicyStatus,
    EstimateBreach,
    EvaluationResult,
    parse_duration,
)
from modelloop.api.meta import Comparison, Condition
from modelloop.conditions import ConditionValue, format_time, with_condition
from modelloop.reasons import Event

_SYMBOLS = {
    Comparison.GREATER_THAN_OR_EQUAL: ">=",
    Comparison.GREATER_THAN: ">",
    Comparison.LESS_THAN_OR_EQUAL: "<=",
    Comparison.LESS_THAN: "<",
}
EVIDENCE_TEXT_LIMIT = 1024
# Reasons of skipped retrainings, as modelloop_retrainings_total{result="skipped"} counts them.
SKIP_IN_FLIGHT = "InFlight"
SKIP_COOLDOWN = "Cooldown"
SKIP_BUDGET = "BudgetExhausted"
STARTED = "DriftConfirmed"


@dataclass(frozen=True)
class Measurement:
    """One metric's query, run once: its value, or why there is none; for an estimated metric (its spec's
    ``estimate``), the band its two other queries read too."""

    metric: DriftMetric
    query: str
    time: datetime
    value: float | None = None
    error: str | None = None
    refused: bool = False
    """Prometheus refused the query itself (bad PromQL): the policy is wrong, not the data missing."""
    lower: float | None = None
    upper: float | None = None
    """The bounds of an estimate's band; None (or NaN) where its query found no data."""

    @property
    def conclusive(self) -> bool:
        if self.error is not None or self.value is None or math.isnan(self.value):
            return False
        return not self._whole_band or self._decisive_bound is not None

    @property
    def breached(self) -> bool:
        if not self.conclusive or self.value is None:
            return False
        comparison, threshold = self.metric.comparison, self.metric.threshold
        if not comparison.holds(self.value, threshold):
            return False
        bound = self._decisive_bound
        return not self._whole_band or (bound is not None and comparison.holds(bound, threshold))

    @property
    def band(self) -> tuple[float | None, float | None]:
        """The estimate's band, (lower, upper), each None when its query found no data."""
        return _known(self.lower), _known(self.upper)

    def shown(self) -> str:
        """The value as status shows it: ``0.42``, ``no data`` or the error; an estimate that must be
        judged by its band adds that the band has no data, when it has none."""
        if self.error is None and self.value is not None and not math.isnan(self.value):
            if not self.conclusive:
                return f"{self.value:.6g} (band: no data)"
            return f"{self.value:.6g}"
        return self.error or "no data"

    def evidence(self) -> str:
        """The value, the threshold it was compared with, the time and the query; for an estimate, that it
        was estimated, and its band."""
        wanted = f"{_SYMBOLS[self.metric.comparison]} {self.metric.threshold:g}"
        if self.metric.estimate is None:
            text = f"{self.shown()} (breach when {wanted}) at {_iso(self.time)}; query: {self.query}"
            return text[:EVIDENCE_TEXT_LIMIT]
        known = self.error is None and _known(self.value) is not None
        value = f"{self.value:.6g}" if known else self.shown()
        lower, upper = self.band
        band = (
            "band: no data"
            if lower is None and upper is None
            else f"band [{_bound_text(lower)}, {_bound_text(upper)}]"
        )
        whole = "the whole band is " if self._whole_band else ""
        text = (
            f"{value} estimated without labels, {band} (breach when {whole}{wanted}) at {_iso(self.time)}; "
            f"query: {self.query}"
        )
        return text[:EVIDENCE_TEXT_LIMIT]

    @property
    def _whole_band(self) -> bool:
        estimate = self.metric.estimate
        return estimate is not None and estimate.breach_when == EstimateBreach.WHOLE_BAND

    @property
    def _decisive_bound(self) -> float | None:
        """The band's bound nearer the threshold when the estimate is past it: the upper one of a metric
        breached below its threshold, the lower one of one breached above."""
        lower, upper = self.band
        below = self.metric.comparison in (Comparison.LESS_THAN, Comparison.LESS_THAN_OR_EQUAL)
        return upper if below else lower


def _known(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _bound_text(value: float | None) -> str:
    return "no data" if value is None else f"{value:.6g}"


@dataclass(frozen=True)
class InFlight:
    """The policy's last retraining, still on its way: what it is doing."""

    what: str


@dataclass(frozen=True)
class PolicyDecision:
    """The whole new status, and what to do: start a retraining with this evidence, or count a skip."""

    status: DriftPolicyStatus
    start_run: str | None = None
    """The TrainingRun to create: its name, derived from the breach it acts on (a retried pass creates
    the same one, never a second)."""
    evidence: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def evaluation_due(spec: DriftPolicySpec, status: DriftPolicyStatus, generation: int, now: datetime) -> bool:
    """Whether the metrics are to be queried in this pass: at every interval, and at once for a new spec."""
    last = status.last_evaluation_time
    if last is None or status.observed_generation != generation:
        return True
    return now >= last + parse_duration(spec.evaluation_interval)


def evaluation_lag(
    spec: DriftPolicySpec, status: DriftPolicyStatus, generation: int, now: datetime
) -> float | None:
    """How many seconds after it was due an evaluation at ``now`` runs; None for a policy's first
    evaluation or one of a new spec, which are due at once."""
    last = status.last_evaluation_time
    if last is None or status.observed_generation != generation:
        return None
    return max(0.0, (now - last - parse_duration(spec.evaluation_interval)).total_seconds())


def run_name(policy: str, breach_start: datetime) -> str:
    """``<policy>-<breach start in Unix seconds>``: one breach, one run, however often it is decided."""
    return f"{policy[:240]}-{int(breach_start.timestamp())}"


def decide(
    policy: str,
    spec: DriftPolicySpec,
    previous: DriftPolicyStatus,
    measurements: Sequence[Measurement] | None,
    in_flight: InFlight | None,
    now: datetime,
    generation: int,
    trained: str | None = None,
) -> PolicyDecision:
    """The new status of policy ``policy``; ``measurements`` is None in a pass that evaluates nothing;
    ``trained`` is the ModelVersion the last retraining registered, once it has."""
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    if trained is not None:
        status.last_model_version = trained
    period = parse_duration(spec.budget.period)
    recent = [t for t in previous.retrainings if now - t < period]

    events: list[Event] = []
    refused: list[Measurement] = []
    if measurements is not None:
        refused = [m for m in measurements if m.refused]
        breached = [m for m in measurements if m.breached]
        unknown = [m for m in measurements if not m.conclusive]
        if refused:
            result = EvaluationResult.DEGRADED
        elif breached:
            result = EvaluationResult.BREACHED
        elif unknown:
            result = EvaluationResult.INCONCLUSIVE
        else:
            result = EvaluationResult.WATCHING
        status.last_result = result
        status.last_evaluation_time = _second(now)
        status.evidence = {m.metric.name: m.shown()[:EVIDENCE_TEXT_LIMIT] for m in measurements}
        first = measurements[0]
        status.last_value = f"{first.metric.name}={first.shown()}"[:EVIDENCE_TEXT_LIMIT]
        if result == EvaluationResult.BREACHED:
            status.breach_start_time = previous.breach_start_time or _second(now)
            if previous.breach_start_time is None:
                names = ", ".join(f"{m.metric.name}={m.shown()}" for m in breached)
                events.append(Event("Normal", "BreachStarted", f"Breached: {names}."))
        else:
            status.breach_start_time = None

    result_now = status.last_result
    breach_start = status.breach_start_time
    window = parse_duration(spec.window)
    confirmed = breach_start is not None and now - breach_start >= window
    last_trigger = status.last_trigger_time
    cooldown = parse_duration(spec.cooldown)
    cooling = last_trigger is not None and now - last_trigger < cooldown
    decision_time = measurements is not None  # a skip is counted once per evaluation, not per event

    start: str | None = None
    skipped: str | None = None
    evidence: dict[str, str] = {}
    if result_now == EvaluationResult.DEGRADED:
        phase, reason = DriftPolicyPhase.DEGRADED, "QueryRefused"
        message = "Prometheus refused a query: " + "; ".join(
            f"{m.metric.name}: {m.error}" for m in refused or measurements or ()
        )
        if not refused:
            message = previous.message or message
    elif in_flight is not None:
        phase, reason = DriftPolicyPhase.RETRAINING, "RetrainingInFlight"
        message = in_flight.what
        if confirmed:
            message += "; the breach it confirms starts no other retraining"
            skipped = SKIP_IN_FLIGHT if decision_time else None
    elif confirmed and cooling and last_trigger is not None:
        phase, reason = DriftPolicyPhase.COOLING_DOWN, "Cooldown"
        until = _iso(last_trigger + cooldown)
        message = f"Drift confirmed, but the cooldown after the last retraining lasts until {until}."
        skipped = SKIP_COOLDOWN if decision_time else None
    elif confirmed and len(recent) >= spec.budget.max_retrainings:
        phase, reason = DriftPolicyPhase.BREACHED, SKIP_BUDGET
        message = (
            f"Drift confirmed, but {len(recent)} retrainings in the last {spec.budget.period} spend the "
            f"budget of {spec.budget.max_retrainings}; the next is allowed at {_iso(min(recent) + period)}."
        )
        skipped = SKIP_BUDGET if decision_time else None
    elif confirmed and breach_start is not None:
        start = run_name(policy, breach_start)
        evidence = {m.metric.name: m.evidence() for m in measurements or () if m.breached}
        evidence["breachStart"] = _iso(breach_start)
        evidence["confirmedAt"] = _iso(now)
        evidence["window"] = spec.window
        phase, reason = DriftPolicyPhase.RETRAINING, "RetrainingStarted"
        message = f"Drift held for {spec.window} since {_iso(breach_start)}: started TrainingRun {start}."
        status.last_trigger_time, status.last_training_run, status.last_model_version = (
            _second(now),
            start,
            None,
        )
        status.breach_start_time = None  # this breach is acted on; a new one must hold a window again
        recent.append(_second(now))
        events.append(Event("Normal", "RetrainingStarted", message))
    elif result_now == EvaluationResult.BREACHED and breach_start is not None:
        phase, reason = DriftPolicyPhase.BREACHED, "BreachHolding"
        message = (
            f"Breached since {_iso(breach_start)}: drift is confirmed if it holds until "
            f"{_iso(breach_start + window)} (window {spec.window})."
        )
    elif cooling and last_trigger is not None:
        phase, reason = DriftPolicyPhase.COOLING_DOWN, "Cooldown"
        message = (
            f"Retrained at {_iso(last_trigger)}; the cooldown lasts until {_iso(last_trigger + cooldown)}."
        )
    elif result_now == EvaluationResult.INCONCLUSIVE:
        phase, reason = DriftPolicyPhase.INCONCLUSIVE, "Inconclusive"
        unknown_now = [m for m in measurements or () if not m.conclusive]
        message = (
            "The metrics cannot tell drift, which is never taken for a breach: "
            + "; ".join(f"{m.metric.name}: {m.shown()}" for m in unknown_now)
            if unknown_now
            else previous.message or "The metrics cannot tell drift."
        )
    else:
        phase, reason = DriftPolicyPhase.WATCHING, "Watching"
        message = "No metric is breached."
    if skipped is not None:
        events.append(Event("Normal", "RetrainingSkipped", message))
    troubled = phase in (DriftPolicyPhase.DEGRADED, DriftPolicyPhase.INCONCLUSIVE)
    if phase == DriftPolicyPhase.DEGRADED and previous.message != message:
        events.append(Event("Warning", reason, message))
    elif phase != previous.phase and all(e.reason != reason for e in events):
        events.append(Event("Warning" if troubled else "Normal", reason, message))

    status.phase, status.reason, status.message = phase, reason, message
    status.retrainings, status.retrainings_in_period = recent, len(recent)
    status.conditions = _ready_condition(previous, phase, reason, message, generation, now)
    return PolicyDecision(
        status=status,
        start_run=start,
        evidence=evidence,
        skipped=skipped,
        events=events,
        requeue_after=_next_evaluation(spec, status, now, window),
    )


def _next_evaluation(
    spec: DriftPolicySpec, status: DriftPolicyStatus, now: datetime, window: timedelta
) -> float:
    """Seconds to the next evaluation; sooner when the window of a breach ends before it."""
    interval = parse_duration(spec.evaluation_interval)
    last = status.last_evaluation_time or now
    due = last + interval
    breach_start = status.breach_start_time
    if breach_start is not None and now < breach_start + window < due:
        due = breach_start + window
    return max(0.0, (due - now).total_seconds())


def _ready_condition(
    previous: DriftPolicyStatus,
    phase: DriftPolicyPhase,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Ready is True while the policy can tell drift, Unknown while it cannot (Inconclusive; its
    transition time is how long), False when its queries are refused."""
    value: ConditionValue = "True"
    if phase == DriftPolicyPhase.INCONCLUSIVE:
        value = "Unknown"
    elif phase == DriftPolicyPhase.DEGRADED:
        value = "False"
    return with_condition(
        previous.conditions,
        type_="Ready",
        status=value,
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )


def _iso(moment: datetime) -> str:
    return format_time(moment)


def _second(moment: datetime) -> datetime:
    """Times in a policy's status are whole seconds, as Kubernetes writes them."""
    return moment.replace(microsecond=0)
