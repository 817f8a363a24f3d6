"""The stages a rollout implies, read from InferenceServices' status."""

from __future__ import annotations

from typing import Any

from modelloop.api import ModelStage, ModelVersionStatus
from modelloop.registry.serving import served_model, stage_before_challenger


def entry(stage: str) -> dict[str, str]:
    return {"stage": stage, "time": "2026-11-01T00:00:00Z", "reason": "R", "message": "m"}


def status(**fields: Any) -> ModelVersionStatus:
    return ModelVersionStatus.model_validate(fields)


def test_an_inference_services_status_says_what_it_serves() -> None:
    model = served_model("iris", {"stableVersion": 2, "canaryVersion": 3, "phase": "Progressing"})
    assert (model.service, model.stable, model.canary) == ("iris", 2, 3)


def test_what_is_not_a_version_number_is_ignored() -> None:
    model = served_model("iris", {"stableVersion": "2", "canaryVersion": True})
    assert (model.stable, model.canary) == (None, None)


def test_the_stage_before_challenger_is_read_from_the_history() -> None:
    history = [entry("Candidate"), entry("Archived"), entry("Challenger")]
    assert stage_before_challenger(status(history=history)) == ModelStage.ARCHIVED


def test_without_history_the_stage_before_challenger_is_candidate() -> None:
    assert stage_before_challenger(status()) == ModelStage.CANDIDATE
    assert stage_before_challenger(status(history=[entry("Challenger")])) == ModelStage.CANDIDATE
