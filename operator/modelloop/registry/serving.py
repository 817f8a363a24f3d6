"""The stages a rollout implies, derived level-triggered from what InferenceServices report in status.

A version that an InferenceService rolls out as its canary is a Challenger; the version it serves as
stable is the Champion (the previous one is archived); a canary that ends without promotion (rolled
back, aborted) goes back to the stage it had before. Nothing is queued in memory: every reconcile of a
model derives these from the InferenceServices' status, so a restarted operator, or the other replica
after a handover, reaches the same stages.

Each version records in ``status.servingStage`` the stage serving last implied for it, and a change is
made once per implied stage: a user who then moves the version by hand (the requested-stage
annotation) is not overruled until serving implies something new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelloop.api import ModelStage, ModelVersionStatus
from modelloop.api.inferenceservice import rollout_versions
from modelloop.registry.stages import StageChange


@dataclass(frozen=True)
class ServedModel:
    """What one InferenceService reports serving: its stable version and the canary it rolls out."""

    service: str
    stable: int | None
    canary: int | None


@dataclass(frozen=True)
class ServingChange:
    """For one version: the stage change serving implies (None: none to make) and the servingStage to
    record (None removes the record)."""

    name: str
    change: StageChange | None
    record: ModelStage | None


def served_model(name: str, status: Mapping[str, Any]) -> ServedModel:
    """Read an InferenceService's stored status: the versions it serves and rolls out."""
    stable, canary = rollout_versions(status)
    return ServedModel(name, stable, canary)


def serving_changes(
    served: Sequence[ServedModel], names: Mapping[int, str], statuses: Mapping[str, ModelVersionStatus]
) -> list[ServingChange]:
    """The changes serving implies for a model's versions (``names``: version number → object name;
    ``statuses`` by name), ordered so that a new Champion comes last (it archives the old one)."""
    implied: dict[int, tuple[ModelStage, str, str]] = {}
    for model in sorted(served, key=lambda m: m.service):
        if model.canary is not None and model.canary != model.stable:
            message = f"Rolled out as the canary of InferenceService {model.service}."
            implied.setdefault(model.canary, (ModelStage.CHALLENGER, "CanaryStarted", message))
    stables = [m for m in served if m.stable is not None]
    if stables:
        # Were several InferenceServices of one model to serve different versions, the newest is Champion.
        top = max(stables, key=lambda m: (m.stable or 0, m.service))
        assert top.stable is not None
        message = f"Serves the stable traffic of InferenceService {top.service}."
        implied[top.stable] = (ModelStage.CHAMPION, "Promoted", message)

    released: list[ServingChange] = []
    challengers: list[ServingChange] = []
    champions: list[ServingChange] = []
    for number, name in sorted(names.items()):
        status = statuses.get(name)
        if status is None:
            continue
        recorded = status.serving_stage
        if number in implied:
            stage, reason, message = implied[number]
            if recorded == stage:
                continue
            change = None if status.stage == stage else StageChange(name, stage, reason, message)
            target = champions if stage == ModelStage.CHAMPION else challengers
            target.append(ServingChange(name, change, stage))
        elif recorded == ModelStage.CHALLENGER:
            change = None
            if status.stage == ModelStage.CHALLENGER:
                earlier = stage_before_challenger(status)
                message = f"No InferenceService rolls it out any more: back to {earlier.value}."
                change = StageChange(name, earlier, "CanaryEnded", message)
            released.append(ServingChange(name, change, None))
        elif recorded is not None:
            released.append(ServingChange(name, None, None))  # replaced as champion: the record goes
    return [*released, *challengers, *champions]


def stage_before_challenger(status: ModelVersionStatus) -> ModelStage:
    """The stage a version had before it last became Challenger (Candidate when the history says none)."""
    history = status.history
    for index in range(len(history) - 1, -1, -1):
        if history[index].stage == ModelStage.CHALLENGER:
            for earlier in reversed(history[:index]):
                if earlier.stage != ModelStage.CHALLENGER:
                    return earlier.stage
            break
    return ModelStage.CANDIDATE
