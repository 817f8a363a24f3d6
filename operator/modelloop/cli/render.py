"""How ``modelloop lineage`` and ``modelloop history`` show the registry's answers as text.

The answers themselves are built by ``modelloop.registry``; this module only lays them out for a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelloop.registry.history import StageEntry, format_time
from modelloop.registry.lineage import LineageReport
from modelloop.serving.backends import DEFAULT_BACKEND


def render_timeline(changes: Sequence[StageEntry]) -> str:
    """The changes as an aligned table: time, version, stage, reason, message."""
    rows = [("TIME", "VERSION", "STAGE", "REASON", "MESSAGE")]
    rows += [(format_time(c.time), c.version, c.stage, c.reason or "-", c.message or "-") for c in changes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + f"  {row[4]}\n"
        for row in rows
    )


def render_champion(champion: StageEntry | None) -> str:
    """The version that was Champion and since when, or ``none``."""
    if champion is None:
        return "none"
    return f"{champion.version}  (Champion since {format_time(champion.time)})"


def render_lineage(lineage: LineageReport) -> str:
    """The lineage as text: one indented block per link, newest first; unknown values as ``-``."""
    mv = lineage["modelVersion"]
    where = f"  (namespace {mv['namespace']})" if mv["namespace"] else ""
    lines = [f"ModelVersion {mv['name']}{where}"]
    lines += _fields(
        ("model", _joined(mv["model"], f"version {mv['version']}" if mv["version"] is not None else None)),
        ("artifact", _joined(mv["artifact"]["uri"], _parenthesized(mv["artifact"]["digest"]))),
        ("framework", _joined(mv["framework"]["name"], mv["framework"]["version"])),
        ("metrics", _pairs(mv["metrics"])),
        ("phase", mv["phase"]),
        ("stage", mv["stage"]),
        ("created", _joined(mv["created"], f"by {mv['createdBy']}" if mv["createdBy"] else None)),
        (
            "registered",
            mv["registeredBy"] and f"by {mv['registeredBy']} (as the API server authenticated it)",
        ),
    )
    run = lineage["trainingRun"]
    if run is None:
        lines.append("← TrainingRun: not recorded")
    else:
        deleted = "" if run["found"] else "  (deleted; as recorded by the ModelVersion)"
        image = run["image"] and (
            f"{run['image']}@{run['imageDigest']}" if run["imageDigest"] else run["image"]
        )
        lines.append(f"← TrainingRun {run['name']}{deleted}")
        lines += _fields(
            ("phase", run["phase"] if run["found"] else "not found"),
            ("image", image),
            ("code", run["codeVersion"]),
            ("dataset", _joined(run["datasetUri"], _parenthesized(run["datasetHash"]))),
            ("params", _pairs(run["params"])),
            ("started", run["startTime"]),
            ("completed", run["completionTime"]),
        )
    trigger = lineage["trigger"]
    if trigger is None:
        lines.append("← triggered by: not recorded")
        return "\n".join(lines) + "\n"
    policy = trigger["policy"]
    deleted = "  (deleted)" if policy is not None and not policy["found"] else ""
    lines.append(f"← triggered by {_joined(trigger['kind'], trigger['name'])}{deleted}")
    lines += _fields(("evidence", _pairs(trigger["evidence"])))
    if policy is not None:
        lines += _fields(("policy", policy["phase"] if policy["found"] else "not found"))
    return "\n".join(lines) + "\n"


def _fields(*pairs: tuple[str, str | None]) -> list[str]:
    return [f"    {f'{label}:':<11} {value or '-'}" for label, value in pairs]


def _joined(*parts: str | None) -> str | None:
    present = [part for part in parts if part]
    return " ".join(present) if present else None


def _parenthesized(text: str | None) -> str | None:
    return f"({text})" if text else None


def _pairs(values: Mapping[str, Any]) -> str | None:
    """``a=1, b=x``, sorted by key; values other than strings as JSON (true, 0.95)."""
    shown = (
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in sorted(values.items())
    )
    return ", ".join(shown) or None


def render_rollout(service: Mapping[str, Any]) -> str:
    """An InferenceService's rollout as ``modelloop rollout status`` shows it."""
    meta, spec, status = service["metadata"], service.get("spec") or {}, service.get("status") or {}
    steps = ((spec.get("rollout") or {}).get("steps")) or []
    step = status.get("stepIndex")
    if status.get("shadow"):
        at = f"shadow, before step 1 of {len(steps)}"
    else:
        at = "-" if step is None else f"{step + 1} of {len(steps)}"
    backend = status.get("backendState") or {}
    lines = [
        f"Name:       {meta['name']}",
        f"Namespace:  {meta['namespace']}",
        f"Model:      {(spec.get('model') or {}).get('name', '-')}",
        f"Phase:      {status.get('phase', '-')}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
        f"Message:    {status.get('message', '-')}",
        f"Stable:     {_or_dash(status.get('stableVersion'))}",
        f"Canary:     {_or_dash(status.get('canaryVersion'))}",
        f"Step:       {at}" + (f" (since {status['stepStartTime']})" if status.get("stepStartTime") else ""),
        f"Traffic:    asked {_or_dash(status.get('canaryWeight'))}%, "
        f"observed {_or_dash(status.get('canaryTraffic'))}%",
        f"URL:        {status.get('url', '-')}",
        f"Backend:    {spec.get('backend', DEFAULT_BACKEND.name)}"
        + (f" ({backend['state']})" if backend.get("state") else "")
        + (
            f", {backend.get('availableReplicas', 0)} of {backend['replicas']} replicas available"
            if backend.get("replicas") is not None
            else ""
        ),
    ]
    if status.get("pauseReason"):
        lines.append(f"Paused:     {status['pauseReason']}")
    if status.get("rolledBackVersion"):
        lines.append(f"Rolled back: version {status['rolledBackVersion']}")
    analysis = status.get("analysis") or {}
    if analysis:
        lines.append(
            f"Analysis:   {analysis.get('failed', 0)} failed, {analysis.get('inconclusive', 0)} inconclusive"
            + (f", last {analysis['lastPhase']}" if analysis.get("lastPhase") else "")
        )
        for entry in analysis.get("measurements") or ():
            lines.append(
                f"  {entry.get('time', '')}  {entry.get('phase', ''):<12}  {entry.get('message', '')}"
            )
    return "\n".join(lines) + "\n"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], low: float, high: float, width: int = 24) -> str:
    """``values`` as bars between ``low`` and ``high`` (the last ``width`` of them)."""
    span = (high - low) or 1.0
    return "".join(
        _BARS[min(len(_BARS) - 1, max(0, int((v - low) / span * (len(_BARS) - 1) + 0.5)))]
        for v in values[-width:]
    )


def render_trials(run: Mapping[str, Any]) -> str:
    """A sweep's trials as ``modelloop trials`` shows them: phase, objective, learning curve, params, and
    why a trial was stopped early."""
    spec, status = run.get("spec") or {}, run.get("status") or {}
    sweep = spec.get("sweep") or {}
    metric = (sweep.get("objective") or {}).get("metric", "-")
    trials = status.get("trials") or []
    curves = [v for t in trials for v in ((t.get("curve") or {}).get("values") or ())]
    low, high = (min(curves), max(curves)) if curves else (0.0, 1.0)
    best = status.get("bestTrial")
    lines = [
        f"Name:       {run['metadata']['name']}",
        f"Strategy:   {sweep.get('strategy', 'Grid')}"
        + (f", early stopping {sweep['earlyStopping']['rule']}" if sweep.get("earlyStopping") else ""),
        f"Phase:      {status.get('phase', '-')}"
        + (f" ({status['message']})" if status.get("message") else ""),
        f"Trials:     {status.get('trialsStarted', len(trials))} started"
        + (f", {status['trialsDropped']} dropped from status" if status.get("trialsDropped") else ""),
        f"Curves:     {metric} from {low:.4g} (▁) to {high:.4g} (█)",
        "",
        f"{'TRIAL':>5}  {'PHASE':<9}  {metric.upper():>10}  {'CURVE':<24}  PARAMS",
    ]
    for trial in trials:
        value = (trial.get("metrics") or {}).get(metric)
        values = (trial.get("curve") or {}).get("values") or []
        mark = "*" if trial.get("index") == best else " "
        lines.append(
            f"{trial.get('index', ''):>4}{mark}  {trial.get('phase', '-'):<9}  "
            f"{'-' if value is None else f'{value:.4g}':>10}  {sparkline(values, low, high):<24}  "
            f"{_params(trial.get('params') or {})}"
        )
        pruning = trial.get("pruning")
        if pruning:
            against = pruning.get("threshold")
            lines.append(
                f"{'':>7}stopped at step {pruning['step']} by {pruning['rule']}: best {pruning['value']:.4g}"
                + (f" against {against:.4g}" if against is not None else "")
            )
    return "\n".join(lines) + "\n"


def _params(params: Mapping[str, Any]) -> str:
    """A trial's parameters, floats to four significant digits."""
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())]
    return ", ".join(shown) or "-"
