"""The rollout state machine: one pure step from (spec, status, what the backend reports, measurements, now)
to the next status and what the backend should serve.

Its whole state lives in the InferenceService's status (stable and canary versions, the step and when it
began, the weight asked for, the analysis so far), so a restarted operator, or another replica after a
handover, renders exactly the traffic it was at: there is no jump. A step advances only once the backend
reports the asked-for traffic, its time is up, and (with analysis) the last measurement passed; a failed
measurement beyond ``failureLimit`` rolls back; inconclusive ones (no data, Prometheus unreachable) hold
the step and, beyond ``inconclusiveLimit``, pause it. A rollback first takes the canary's traffic to 0
(Knative pins the previous revision then) and only then removes it.

A version that loses its traffic keeps its predictor for ``spec.rollout.scaleDownDelay`` (30 s unless set):
the old stable version after a promotion (``status.retiringVersion`` until ``retireTime``, rendered
without traffic) and the canary after a rollback. A gateway applies a route change some time after it is
written, and clients hold connections: during that time, requests still go by the previous split, and
find the version they are sent to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from modelloop.api import (
    InferenceServicePhase,
    InferenceServiceSpec,
    MeasurementPhase,
    ModelVersionPhase,
    PauseReason,
    parse_duration,
)
from modelloop.api.inferenceservice import (
    DEFAULT_SCALE_DOWN_DELAY,
    MEASUREMENTS_KEPT,
    AnalysisStatus,
    InferenceServiceStatus,
    Measurement,
)
from modelloop.naming import ANNOTATION_ROLLOUT_ACTION
from modelloop.reasons import Event

ACTIONS = ("promote", "abort", "pause", "resume")
# While the backend has not yet reported the traffic asked for, look again this soon.
CONVERGE_POLL_SECONDS = 2.0
MEASUREMENTS_PER_METRIC = 4
# A measurement's message is cut to this length in status.
MAX_MEASUREMENT_MESSAGE = 1024
Phase = InferenceServicePhase
Status = InferenceServiceStatus


@dataclass(frozen=True)
class Observed:
    """What the backend reports about the service it runs.

    ``current``: it has seen modelloop's latest write (so ``canary_traffic`` describes it);
    ``canary_traffic``: percent the canary really gets (None: unknown, or no canary);
    ``shadow``: the canary gets a mirrored copy of the traffic (its answers reach no one);
    ``state``, ``replicas``, ``available_replicas``: the platform's own words for it, where it has them.
    """

    exists: bool = False
    current: bool = False
    ready: bool = False
    failed: bool = False
    canary_traffic: int | None = None
    shadow: bool = False
    url: str | None = None
    message: str = ""
    state: str | None = None
    replicas: int | None = None
    available_replicas: int | None = None


@dataclass(frozen=True)
class MetricResult:
    """One analysis metric measured once."""

    metric: str
    phase: MeasurementPhase
    value: float | None
    message: str


@dataclass(frozen=True)
class Serving:
    """What the backend should serve: the stable version and, during a rollout, the canary at a weight
    (or, ``shadow``, mirrored: it gets a copy of the traffic and its weight is 0). After a promotion,
    ``retiring`` is the version it replaced, kept running without traffic for the scale-down delay."""

    stable: int
    canary: int | None = None
    weight: int = 0
    shadow: bool = False
    retiring: int | None = None


@dataclass(frozen=True)
class Target:
    """The version the InferenceService should serve, or why there is none."""

    version: int | None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Decision:
    """The outcome of one pass: the status to write, what to serve (None: nothing yet), the events to
    post, and when to look again (None: when something changes)."""

    status: Status
    serving: Serving | None
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


@dataclass
class _Pass:
    """The mutable scratch of one pass of ``decide``."""

    status: Status
    events: list[Event] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def parse_action(annotations: Mapping[str, str] | None) -> str | None:
    """The annotation's value as written (``promote`` or ``promote@<anything>``: the CLI adds a token so
    that each use is a new request), or None."""
    value = (annotations or {}).get(ANNOTATION_ROLLOUT_ACTION)
    return value.strip() if value and value.strip() else None


def action_verb(value: str) -> str:
    return value.split("@", 1)[0].strip().lower()


def target_version(spec: InferenceServiceSpec, versions: Sequence[Mapping[str, Any]]) -> Target:
    """The version to serve: the pinned one (when it exists), or the newest Validated version."""
    model = spec.model.name
    numbers = {int(v["spec"]["version"]): v for v in versions if isinstance(v["spec"].get("version"), int)}
    if spec.model.version is not None:
        if spec.model.version in numbers:
            return Target(spec.model.version)
        return Target(
            None, "VersionNotFound", f"Model {model} has no version {spec.model.version}: register it first."
        )
    validated = [
        n for n, v in numbers.items() if (v.get("status") or {}).get("phase") == ModelVersionPhase.VALIDATED
    ]
    if not validated:
        return Target(
            None,
            "NoValidatedVersion",
            f"Model {model} has no Validated version yet; it is served once it has.",
        )
    return Target(max(validated))


def measurement_due(spec: InferenceServiceSpec, status: Status, observed: Observed, now: datetime) -> bool:
    """Whether this pass should measure the analysis metrics: a canary takes the traffic asked for, the
    rollout is not paused, and an interval has passed since the step began or was last measured."""
    analysis = spec.rollout.analysis if spec.rollout else None
    if analysis is None or status.canary_version is None or _paused(spec, status):
        return False
    if status.phase == Phase.ROLLED_BACK or not _converged(spec, status, observed):
        return False
    return now >= _next_measurement(status, parse_duration(analysis.interval))


def decide(
    spec: InferenceServiceSpec,
    status: Status,
    target: Target,
    observed: Observed,
    now: datetime,
    action: str | None = None,
    measurements: Sequence[MetricResult] = (),
) -> Decision:
    """One step of the state machine. ``action`` is the rollout-action annotation's value when it was not
    acted on yet; ``measurements`` the analysis metrics measured in this pass (see ``measurement_due``).
    ``status`` is not changed: the decision carries a new one."""
    work = _Pass(status.model_copy(deep=True))
    s = work.status
    asked = serving_of(status)
    if action is not None:
        s.action = action
        _act(spec, work, action_verb(action), now)

    if s.stable_version is None:
        if target.version is None:
            _set_phase(s, Phase.PENDING, target.reason, target.message)
            return Decision(s, None, tuple(work.events))
        s.stable_version = target.version
        _set_phase(s, Phase.PROGRESSING, "Deploying", f"Deploying version {target.version}.")
        work.event("Normal", "Deploying", f"Serving version {target.version}.")
    elif s.canary_version is None or s.phase != Phase.ROLLED_BACK:
        _follow_target(spec, work, target, now)
    if serving_of(s) != asked:
        # The backend's report is about what was asked before this pass, not about the new ask.
        observed = replace(observed, current=False)

    if s.canary_version is not None:
        _progress(spec, work, observed, measurements, now)
    else:
        _settle(work, observed, now)

    s.url = observed.url or s.url
    s.canary_traffic = observed.canary_traffic if s.canary_version is not None else None
    return Decision(s, serving_of(s), tuple(work.events), min(work.requeue) if work.requeue else None)


def serving_of(status: Status) -> Serving | None:
    """What a status asks the backend to serve (None before any version)."""
    if status.stable_version is None:
        return None
    if status.canary_version is None:
        return Serving(status.stable_version, retiring=status.retiring_version)
    shadow = bool(status.shadow)
    weight = 0 if shadow else status.canary_weight or 0
    return Serving(status.stable_version, status.canary_version, weight, shadow)


def _set_phase(s: Status, phase: Phase, reason: str, message: str) -> None:
    s.phase, s.reason, s.message = phase, reason, message


def _end_steps(s: Status) -> None:
    """No canary step runs any more (its weight, shadow, index and start are gone)."""
    s.canary_weight = s.shadow = s.step_index = s.step_start_time = None


def _act(spec: InferenceServiceSpec, work: _Pass, verb: str, now: datetime) -> None:
    s = work.status
    canary = s.canary_version
    in_rollout = canary is not None and s.phase != Phase.ROLLED_BACK
    if verb == "pause":
        s.pause_reason = PauseReason.REQUESTED
        work.event("Normal", "Paused", "Rollout paused through the rollout-action annotation.")
    elif verb == "resume":
        if s.analysis is not None:
            s.analysis.inconclusive = 0
        s.pause_reason = None
        if not in_rollout and s.rolled_back_version is not None:
            s.rolled_back_version = None  # resuming after a rollback retries the version
            work.event("Normal", "Resumed", "The rolled-back version may be rolled out again.")
        else:
            work.event("Normal", "Resumed", "Rollout resumed through the rollout-action annotation.")
    elif verb == "promote" and in_rollout:
        _promote(
            work,
            "PromotedManually",
            f"Version {canary} promoted through the rollout-action annotation.",
            spec,
            now,
        )
    elif verb == "abort" and in_rollout:
        _roll_back(work, "Aborted", f"Version {canary} aborted through the rollout-action annotation.", now)
    elif verb in ("promote", "abort"):
        work.event("Warning", "NoRollout", f"No rollout in progress: '{verb}' has nothing to act on.")
    else:
        work.event(
            "Warning", "UnknownAction", f"Unknown rollout action '{verb}': use one of {', '.join(ACTIONS)}."
        )


def _follow_target(spec: InferenceServiceSpec, work: _Pass, target: Target, now: datetime) -> None:
    """Start (or restart, or drop) a rollout when the target differs from what is served."""
    s = work.status
    stable, canary, version = s.stable_version, s.canary_version, target.version
    if version is None or version == canary:
        return
    if version == stable:
        if canary is not None:
            _roll_back(
                work,
                "Superseded",
                f"Version {canary} is no longer the target; back to version {stable}.",
                now,
            )
        return
    if version == s.rolled_back_version:
        return  # rolled back: not rolled out again by itself (the resume action retries it)
    # A new version to roll out ends a retirement at once: the backend runs one version beside the stable.
    s.retiring_version = s.retire_time = None
    if spec.rollout is None:
        s.stable_version, s.canary_version = version, None
        s.canary_weight = s.step_index = None
        _set_phase(s, Phase.PROGRESSING, "Deploying", f"Replacing version {stable} by {version}.")
        work.event("Normal", "Deploying", f"Version {version} replaces version {stable} (no rollout steps).")
        return
    if canary is not None:
        work.event("Normal", "CanaryReplaced", f"Version {version} replaces canary version {canary}.")
    shadow = spec.rollout.shadow
    weight = 0 if shadow else spec.rollout.steps[0]
    s.canary_version, s.canary_weight = version, weight
    s.shadow, s.step_index = (True, None) if shadow else (None, 0)
    s.step_start_time = now
    s.analysis = AnalysisStatus() if spec.rollout.analysis else None
    s.pause_reason = None
    _set_phase(s, Phase.PROGRESSING, "ShadowStarted" if shadow else "CanaryStarted", _step_message(spec, s))
    first = "mirrored traffic first (shadow)" if shadow else f"{weight}% first"
    work.event("Normal", str(s.reason), f"Rolling out version {version} beside version {stable}: {first}.")


def _progress(
    spec: InferenceServiceSpec,
    work: _Pass,
    observed: Observed,
    measurements: Sequence[MetricResult],
    now: datetime,
) -> None:
    s = work.status
    canary = s.canary_version
    if s.phase == Phase.ROLLED_BACK:
        # Retiring a rolled-back canary: once no traffic reaches it, and the scale-down delay since the
        # rollback is over, it goes.
        if observed.current and not observed.canary_traffic and not observed.shadow:
            retire = _started(s) + scale_down_delay(spec)
            if now >= retire:
                s.canary_version = None
                _end_steps(s)
            else:
                work.requeue.append(max(0.5, (retire - now).total_seconds()))
        else:
            work.requeue.append(CONVERGE_POLL_SECONDS)
        return
    if spec.rollout is None:  # the rollout was removed from the spec mid-way: finish it at once
        _promote(
            work,
            "Promoted",
            f"Version {canary} takes all traffic: the spec has no rollout any more.",
            spec,
            now,
        )
        return
    steps = spec.rollout.steps
    index = min(s.step_index or 0, len(steps) - 1)
    if measurements and _record(spec, work, measurements, now) == Phase.ROLLED_BACK:
        return
    if _paused(spec, s):
        why = "spec.paused is true" if spec.paused else _pause_message(s)
        _set_phase(s, Phase.PAUSED, "Paused", f"Rollout of version {canary} is paused: {why}.")
        return
    s.phase = Phase.PROGRESSING
    if not _converged(spec, s, observed):
        s.reason = "WaitingForTraffic"
        wanted = "a mirrored copy" if s.shadow else f"{s.canary_weight}%"
        s.message = f"Waiting for the backend to give version {canary} {wanted} of the traffic" + (
            f": {observed.message}" if observed.message else "."
        )
        work.requeue.append(CONVERGE_POLL_SECONDS)
        return
    step_due = _started(s) + parse_duration(spec.rollout.step_interval)
    analysis = spec.rollout.analysis
    passed = analysis is None or (s.analysis is not None and s.analysis.last_phase == MeasurementPhase.PASSED)
    if now >= step_due and passed:
        following = 0 if s.shadow else index + 1  # after the shadow phase comes the first step
        if following >= len(steps) or steps[following] >= 100:
            _promote(work, "Promoted", f"Version {canary} passed every step and is promoted.", spec, now)
            return
        s.step_index, s.canary_weight, s.shadow, s.step_start_time = following, steps[following], None, now
        s.reason, s.message = "StepAdvanced", _step_message(spec, s)
        if s.analysis is not None:
            s.analysis.last_phase = None
        work.event("Normal", "StepAdvanced", s.message)
        work.requeue.append(CONVERGE_POLL_SECONDS)
        return
    s.reason = "StepRunning"
    waits = [max(0.0, (step_due - now).total_seconds())]
    if analysis is not None:
        interval = parse_duration(analysis.interval)
        waits.append(max(0.0, (_next_measurement(s, interval) - now).total_seconds()))
    if now >= step_due:  # time is up but the last measurement did not pass: the next one decides
        waits = waits[1:]
    s.message = _step_message(spec, s)
    work.requeue.append(max(0.5, min(waits)))


def _step_message(spec: InferenceServiceSpec, status: Status) -> str:
    steps = len(spec.rollout.steps) if spec.rollout else 1
    canary = status.canary_version
    if status.shadow:
        return (
            f"Version {canary} gets a mirrored copy of the traffic; its answers reach no one "
            f"(shadow, before step 1 of {steps})."
        )
    index = status.step_index or 0
    return f"Version {canary} gets {status.canary_weight}% of the traffic (step {index + 1} of {steps})."


def _record(
    spec: InferenceServiceSpec, work: _Pass, results: Sequence[MetricResult], now: datetime
) -> Phase | None:
    """Fold one round of measurements into status: a failure counts, beyond failureLimit rolls back; an
    inconclusive round holds the step, beyond inconclusiveLimit pauses. Returns the phase after."""
    assert spec.rollout is not None and spec.rollout.analysis is not None
    limits = spec.rollout.analysis
    s = work.status
    analysis = s.analysis = s.analysis or AnalysisStatus()
    kept = [
        *analysis.measurements,
        *(
            Measurement(
                metric=result.metric,
                phase=result.phase,
                value=result.value,
                time=now,
                message=result.message[:MAX_MEASUREMENT_MESSAGE],
            )
            for result in results
        ),
    ]
    analysis.measurements = _bounded(kept)
    analysis.last_time = now
    failed = [r for r in results if r.phase == MeasurementPhase.FAILED]
    inconclusive = [r for r in results if r.phase == MeasurementPhase.INCONCLUSIVE]
    canary = s.canary_version
    if failed:
        analysis.failed += 1
        analysis.last_phase = MeasurementPhase.FAILED
        detail = "; ".join(r.message for r in failed)
        if analysis.failed > limits.failure_limit:
            _roll_back(work, "AnalysisFailed", f"Version {canary} failed analysis: {detail}", now)
        else:
            work.event(
                "Warning",
                "MeasurementFailed",
                f"{detail} ({analysis.failed} of {limits.failure_limit} tolerated).",
            )
    elif inconclusive:
        analysis.inconclusive += 1
        analysis.last_phase = MeasurementPhase.INCONCLUSIVE
        detail = "; ".join(r.message for r in inconclusive)
        if analysis.inconclusive > limits.inconclusive_limit:
            s.pause_reason = PauseReason.INCONCLUSIVE
            work.event("Warning", "AnalysisInconclusive", f"Rollout of version {canary} paused: {detail}")
    else:
        analysis.last_phase = MeasurementPhase.PASSED
    return s.phase


def scale_down_delay(spec: InferenceServiceSpec) -> timedelta:
    """How long a version that lost its traffic keeps its predictor."""
    return parse_duration(spec.rollout.scale_down_delay if spec.rollout else DEFAULT_SCALE_DOWN_DELAY)


def _promote(work: _Pass, reason: str, message: str, spec: InferenceServiceSpec, now: datetime) -> None:
    s = work.status
    previous = s.stable_version
    s.stable_version, s.canary_version = s.canary_version, None
    _end_steps(s)
    s.pause_reason = None
    delay = scale_down_delay(spec)
    if delay and previous is not None:
        s.retiring_version, s.retire_time = previous, now + delay
        work.requeue.append(max(0.5, delay.total_seconds()))
    _set_phase(s, Phase.PROMOTED, reason, message)
    work.event("Normal", reason, f"{message} It replaces version {previous}.")


def _roll_back(work: _Pass, reason: str, message: str, now: datetime) -> None:
    s = work.status
    s.rolled_back_version = s.canary_version
    s.canary_weight, s.shadow, s.step_start_time, s.pause_reason = 0, None, now, None
    _set_phase(s, Phase.ROLLED_BACK, reason, message)
    work.event("Warning", "RolledBack", message)
    work.requeue.append(CONVERGE_POLL_SECONDS)


def _settle(work: _Pass, observed: Observed, now: datetime) -> None:
    """No canary: the stable version is served; say whether the backend serves it well. A version retiring
    since a promotion goes once its time is up."""
    s = work.status
    stable = s.stable_version
    _end_steps(s)
    s.pause_reason = None
    if s.retiring_version is not None:
        if s.retire_time is None or now >= s.retire_time:
            s.retiring_version = s.retire_time = None
        else:
            work.requeue.append(max(0.5, (s.retire_time - now).total_seconds()))
    if observed.failed:
        message = f"The backend cannot serve version {stable}: {observed.message or 'not ready'}."
        _set_phase(s, Phase.DEGRADED, "BackendFailed", message)
        work.requeue.append(CONVERGE_POLL_SECONDS * 5)
        return
    if not (observed.current and observed.ready):
        if s.phase in (Phase.PENDING, Phase.PROGRESSING, None):
            message = f"Waiting for the backend to serve version {stable}" + (
                f": {observed.message}" if observed.message else "."
            )
            _set_phase(s, Phase.PROGRESSING, "Deploying", message)
        work.requeue.append(CONVERGE_POLL_SECONDS)
        return
    if s.phase in (Phase.PENDING, Phase.PROGRESSING, Phase.DEGRADED, Phase.PAUSED, None):
        _set_phase(s, Phase.STABLE, "Serving", f"Serving version {stable}.")


def _paused(spec: InferenceServiceSpec, status: Status) -> bool:
    return spec.paused or status.pause_reason is not None


def _pause_message(status: Status) -> str:
    if status.pause_reason == PauseReason.INCONCLUSIVE:
        analysis = status.analysis or AnalysisStatus()
        last = analysis.measurements[-1].message if analysis.measurements else None
        return (
            f"{analysis.inconclusive} inconclusive measurements ({last or 'no data'}); "
            "resume it once the metrics are back"
        )
    return "paused through the rollout-action annotation; resume it to go on"


def _converged(spec: InferenceServiceSpec, status: Status, observed: Observed) -> bool:
    """Whether the backend serves the canary what ``status`` asks, or already what its next step asks.

    The second is a step (or the promotion) that an operator applied and stopped before writing: the
    controller writes such a decision after the backend's report (``modelloop.controllers.
    inferenceservice``). The step is due, so this pass decides it again, on what it measures, and asks for
    what the backend serves already, instead of taking the canary's traffic back to the step before.
    """
    if not observed.current:
        return False
    shadow = bool(status.shadow)
    weight = 0 if shadow else status.canary_weight
    if observed.canary_traffic == weight and observed.shadow == shadow:
        return True
    return not observed.shadow and observed.canary_traffic == _next_weight(spec, status)


def _next_weight(spec: InferenceServiceSpec, status: Status) -> int | None:
    """The canary's weight at the step after the one ``status`` is at (100: promoted)."""
    if spec.rollout is None or status.canary_version is None:
        return None
    steps = spec.rollout.steps
    following = 0 if status.shadow else min(status.step_index or 0, len(steps) - 1) + 1
    return 100 if following >= len(steps) else min(steps[following], 100)


def _started(status: Status) -> datetime:
    assert status.step_start_time is not None, "a rollout in progress has a stepStartTime"
    return status.step_start_time


def _next_measurement(status: Status, interval: timedelta) -> datetime:
    started = _started(status)
    last = status.analysis.last_time if status.analysis else None
    return (max(started, last) if last else started) + interval


def _bounded(measurements: list[Measurement]) -> list[Measurement]:
    """The last few measurements of each metric, oldest first, at most MEASUREMENTS_KEPT."""
    seen: dict[str, int] = {}
    kept: list[Measurement] = []
    for entry in reversed(measurements):
        count = seen.get(entry.metric, 0)
        if count < MEASUREMENTS_PER_METRIC:
            seen[entry.metric] = count + 1
            kept.append(entry)
    return list(reversed(kept))[-MEASUREMENTS_KEPT:]


__all__ = [
    "ACTIONS",
    "ANNOTATION_ROLLOUT_ACTION",
    "Decision",
    "MetricResult",
    "Observed",
    "Serving",
    "Target",
    "action_verb",
    "decide",
    "measurement_due",
    "parse_action",
    "serving_of",
    "target_version",
]
