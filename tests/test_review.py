"""The foundation's reconcile: a spec is re-validated and status says what the operator made of it."""

from typing import Any

import pydantic

from modelloop.review import INVALID_SPEC, Event, ReviewOutcome, review_spec


class Resources(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    gpus: int = pydantic.Field(ge=0)
    gpu_product: str | None = pydantic.Field(default=None, alias="gpuProduct")


class Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    image: str
    resources: Resources
    steps: list[int] = []


ACCEPTED = ReviewOutcome(phase="Pending", ready="False", reason="Pending", message="waits")
VALID: dict[str, Any] = {"image": "trainer:1", "resources": {"gpus": 2, "gpuProduct": "A100"}}


def test_a_valid_spec_gets_the_accepted_phase_generation_and_ready_condition() -> None:
    review = review_spec(Spec, VALID, {}, generation=4, accepted=ACCEPTED, now="T1")

    assert review.status["phase"] == "Pending"
    assert review.status["observedGeneration"] == 4
    assert review.status["conditions"] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waits",
            "lastTransitionTime": "T1",
            "observedGeneration": 4,
        }
    ]
    assert review.event == Event("Normal", "Pending", "waits")


def test_a_phase_set_by_the_kinds_own_logic_is_kept() -> None:
    review = review_spec(Spec, VALID, {"phase": "Running"}, generation=1, accepted=ACCEPTED, now="T1")
    assert review.status["phase"] == "Running"


def test_an_invalid_spec_turns_ready_false_with_a_message_naming_each_field() -> None:
    spec = {"image": "trainer:1", "resources": {"gpus": -1}, "steps": [1, "x"]}

    review = review_spec(Spec, spec, {}, generation=2, accepted=ACCEPTED, now="T1")

    ready = review.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", INVALID_SPEC)
    assert "spec.resources.gpus: Input should be greater than or equal to 0" in ready["message"]
    assert "spec.steps[1]:" in ready["message"]
    assert review.event is not None and review.event.type == "Warning"


def test_no_event_when_nothing_changed() -> None:
    first = review_spec(Spec, VALID, {}, generation=1, accepted=ACCEPTED, now="T1")

    second = review_spec(Spec, VALID, first.status, generation=2, accepted=ACCEPTED, now="T1")

    assert second.event is None
    assert second.status["observedGeneration"] == 2


def test_an_event_when_a_spec_becomes_valid_again() -> None:
    broken = review_spec(
        Spec, {"image": "x", "resources": {"gpus": -1}}, {}, generation=1, accepted=ACCEPTED, now="T1"
    )

    fixed = review_spec(Spec, VALID, broken.status, generation=2, accepted=ACCEPTED, now="T1")

    assert fixed.event == Event("Normal", "Pending", "waits")
