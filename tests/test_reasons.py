"""A validation error as status tells it: every offending field named as a user writes it."""

import pydantic

from modelloop.reasons import describe_validation_error


class Resources(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    gpus: int = pydantic.Field(ge=0)
    gpu_product: str | None = pydantic.Field(default=None, alias="gpuProduct")


class Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    image: str
    resources: Resources
    steps: list[int] = []


def test_each_offending_field_is_named_with_its_path() -> None:
    spec = {"image": "trainer:1", "resources": {"gpus": -1}, "steps": [1, "x"]}
    try:
        Spec.model_validate(spec)
    except pydantic.ValidationError as error:
        message = describe_validation_error(error)
        status_message = describe_validation_error(error, prefix="status")
    assert "spec.resources.gpus: Input should be greater than or equal to 0" in message
    assert "spec.steps[1]:" in message
    assert status_message.startswith("status.")
