"""InferenceService: a served model, rolled out version by version behind a canary."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Self

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from .meta import (
    AGE_COLUMN,
    ApiModel,
    CelRule,
    CrdInfo,
    DnsLabel,
    DnsSubdomain,
    Duration,
    PrinterColumn,
    Quantity,
    ResourceStatus,
    ShortText,
    Uri,
    cel_rules,
)

CanaryStep = Annotated[int, Field(ge=1, le=100)]


class InferenceServicePhase(StrEnum):
    """Lifecycle phase of an InferenceService's rollout."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class Backend(StrEnum):
    """The serving platform that runs the model."""

    KSERVE = "kserve"
    SELDON = "seldon"


class ModelReference(ApiModel):
    """Which ModelVersion to serve."""

    name: DnsLabel = Field(description="Name of the model (ModelVersion spec.modelName).")
    version: int | None = Field(
        None, ge=1, description="Version to serve; when absent, the latest Validated version is rolled out."
    )


class PredictorResources(ApiModel):
    """Compute each predictor replica requests."""

    cpu: Quantity | None = Field(None, description="CPU request, e.g. 1 or 500m.")
    memory: Quantity | None = Field(None, description="Memory request, e.g. 2Gi.")
    gpus: int | None = Field(None, ge=0, le=16, description="Number of GPUs (nvidia.com/gpu) per replica.")


class Predictor(ApiModel):
    """How the model server runs."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule=(
                    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas"
                ),
                message="spec.predictor.minReplicas must not exceed spec.predictor.maxReplicas",
                field_path=".minReplicas",
            )
        )
    )

    min_replicas: int | None = Field(
        None, ge=0, le=1000, description="Fewest replicas; 0 allows scale to zero."
    )
    max_replicas: int | None = Field(None, ge=1, le=1000, description="Most replicas the autoscaler may run.")
    resources: PredictorResources | None = Field(None, description="Compute each replica requests.")
    service_account_name: DnsSubdomain | None = Field(
        None, description="ServiceAccount of the predictor pods, e.g. one with access to the artifact store."
    )
    runtime: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        None, description="Serving runtime to use instead of the backend's default for the model format."
    )

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            raise ValueError("spec.predictor.minReplicas must not exceed spec.predictor.maxReplicas")
        return self


class AnalysisMetric(ApiModel):
    """A Prometheus query whose result must stay within bounds while the canary runs."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.min) || has(self.max)",
                message="an analysis metric needs min, max or both",
                reason="FieldValueRequired",
            ),
            CelRule(
                rule="!has(self.min) || !has(self.max) || self.min <= self.max",
                message="an analysis metric's min must not exceed its max",
                field_path=".min",
            ),
        )
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="Name of the check, e.g. error-rate."
    )
    query: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description=(
            "PromQL query returning one number; {{namespace}}, {{name}} and {{version}} are substituted."
        )
    )
    min: float | None = Field(None, description="Lowest acceptable value.")
    max: float | None = Field(None, description="Highest acceptable value.")

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("an analysis metric needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("an analysis metric's min must not exceed its max")
        return self


class Analysis(ApiModel):
    """Prometheus checks that gate every canary step."""

    prometheus_url: Uri | None = Field(
        None, description="Prometheus to query; the operator's default when absent."
    )
    interval: Duration = Field("1m", description="How often the metrics are checked.")
    failure_limit: int = Field(
        0, ge=0, le=100, description="Failed checks tolerated before the rollout is rolled back."
    )
    metrics: list[AnalysisMetric] = Field(
        min_length=1, max_length=16, description="Checks that must pass for the rollout to advance."
    )


class Rollout(ApiModel):
    """How a new version replaces the stable one: canary traffic steps, each gated by analysis."""

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=20,
        json_schema_extra=cel_rules(
            CelRule(
                rule="size(self) > 0 && self[size(self) - 1] == 100",
                message="spec.rollout.steps must be non-empty and end at 100",
            ),
            CelRule(
                rule="self.isSorted() && self.all(s, self.indexOf(s) == self.lastIndexOf(s))",
                message="spec.rollout.steps must be strictly increasing",
            ),
        ),
        description="Percentages of traffic the canary gets, strictly increasing and ending at 100.",
    )
    step_interval: Duration = Field("5m", description="How long each step runs before the next.")
    analysis: Analysis | None = Field(
        None, description="Checks gating every step; without them, steps advance on time alone."
    )

    @field_validator("steps")
    @classmethod
    def _check_steps_like_the_crd(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("spec.rollout.steps must be non-empty and end at 100")
        if any(later <= earlier for earlier, later in pairwise(steps)):
            raise ValueError("spec.rollout.steps must be strictly increasing")
        return steps


class InferenceServiceSpec(ApiModel):
    """The desired served model: which version, on which backend, rolled out how."""

    model: ModelReference = Field(description="The model to serve.")
    backend: Backend = Field(Backend.KSERVE, description="Serving platform: kserve or seldon.")
    predictor: Predictor | None = Field(None, description="How the model server runs.")
    rollout: Rollout | None = Field(
        None,
        description="Canary rollout of new versions; without it, a new version takes all traffic at once.",
    )


class InferenceServiceStatus(ResourceStatus):
    """The observed state of an InferenceService: the versions served and the rollout's progress."""

    phase: InferenceServicePhase | None = Field(
        None, description="Pending, Progressing, Promoted, RolledBack or Failed."
    )
    stable_version: int | None = Field(None, ge=1, description="Version serving the stable traffic.")
    canary_version: int | None = Field(None, ge=1, description="Version being rolled out, if any.")
    canary_traffic: int | None = Field(
        None, ge=0, le=100, description="Percentage of traffic the canary gets."
    )
    step_index: int | None = Field(
        None, ge=0, description="Index into spec.rollout.steps of the current step."
    )
    step_start_time: datetime | None = Field(None, description="When the current step began.")
    failed_checks: int | None = Field(
        None, ge=0, description="Analysis checks failed in the current rollout."
    )
    url: ShortText | None = Field(None, description="Where the model answers predictions.")


INFERENCE_SERVICE = CrdInfo(
    kind="InferenceService",
    plural="inferenceservices",
    singular="inferenceservice",
    # KServe's InferenceService already owns "isvc".
    short_names=("mlisvc",),
    description=(
        "InferenceService serves a model on KServe or Seldon Core and rolls out new versions behind a canary."
    ),
    spec_model=InferenceServiceSpec,
    status_model=InferenceServiceStatus,
    printer_columns=(
        PrinterColumn("Model", ".spec.model.name", "string", "The model served."),
        PrinterColumn("Backend", ".spec.backend", "string", "Serving platform."),
        PrinterColumn("Stable", ".status.stableVersion", "integer", "Version serving the stable traffic."),
        PrinterColumn("Canary", ".status.canaryVersion", "integer", "Version being rolled out."),
        PrinterColumn("Traffic", ".status.canaryTraffic", "integer", "Percentage of traffic on the canary."),
        PrinterColumn("Phase", ".status.phase", "string", "Lifecycle phase of the rollout."),
        PrinterColumn("URL", ".status.url", "string", "Where the model answers.", priority=1),
        AGE_COLUMN,
    ),
)
