"""Validation gates: what a trained model must reach, alone and against the model's current champion.

Used by a TrainingRun (its gates travel into the ModelVersion it registers), by a ModelVersion itself and
by a ModelPolicy (gates for every version of one model).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .meta import ApiModel, Comparison, MetricName


class ObjectiveDirection(StrEnum):
    """Whether a metric is better high or low."""

    MAXIMIZE = "Maximize"
    MINIMIZE = "Minimize"


class ValidationGate(ApiModel):
    """A condition that a trained model's metric must meet to be validated."""

    metric: MetricName = Field(description="Name of the metric the trainer reports, e.g. accuracy.")
    comparison: Comparison = Field(
        description="How the metric must compare with the threshold, e.g. GreaterThanOrEqual."
    )
    threshold: float = Field(description="The value the metric is compared with.")


class ChampionComparison(ApiModel):
    """How a new version must compare with the model's current champion."""

    metric: MetricName = Field(description="The metric compared, e.g. accuracy.")
    direction: ObjectiveDirection = Field(
        ObjectiveDirection.MAXIMIZE, description="Maximize when higher is better, Minimize when lower is."
    )
    margin: float = Field(
        0.0,
        ge=0,
        description=(
            "How much worse than the champion the new version may be, in the metric's own units; "
            "0 means at least as good."
        ),
    )


class Validation(ApiModel):
    """Gates that decide whether a model version is Validated or Rejected."""

    gates: list[ValidationGate] = Field(
        default_factory=list, max_length=16, description="Every gate must pass for the model to be validated."
    )
    champion: ChampionComparison | None = Field(
        None,
        description="Compare with the model's current champion; passes when the model has no champion yet.",
    )
