"""ModelVersion: the immutable record of one registered model version, with its lineage."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, ValidationInfo, model_validator

from .meta import (
    AGE_COLUMN,
    MAX_MAP_ENTRIES,
    ApiModel,
    CelRule,
    Comparison,
    CrdInfo,
    DnsLabel,
    DnsSubdomain,
    MetricName,
    ParamValue,
    PrinterColumn,
    ResourceStatus,
    ShortText,
    Trigger,
    Uri,
    object_name,
)
from .validation import Validation

Digest = Annotated[str, StringConstraints(max_length=256, pattern=r"^[a-z0-9]+:[a-fA-F0-9]+$")]


class ModelVersionPhase(StrEnum):
    """Outcome of a ModelVersion's validation."""

    PENDING = "Pending"
    VALIDATED = "Validated"
    REJECTED = "Rejected"


class ModelStage(StrEnum):
    """Where a ModelVersion stands in serving."""

    CANDIDATE = "Candidate"
    CHALLENGER = "Challenger"
    CHAMPION = "Champion"
    ARCHIVED = "Archived"


class ModelFramework(StrEnum):
    """Model formats, named as KServe's model formats."""

    SKLEARN = "sklearn"
    PYTORCH = "pytorch"
    ONNX = "onnx"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    TENSORFLOW = "tensorflow"


class Artifact(ApiModel):
    """The stored model."""

    uri: Uri = Field(description="Where the model artifact is stored, e.g. s3://models/iris/run-1.")
    digest: Digest | None = Field(None, description="Content digest of the artifact, e.g. sha256:<hex>.")
    reference_uri: Uri | None = Field(
        None,
        description="The trainer's reference sample of the training features, read by the drift detector.",
    )
    reference_predictions_uri: Uri | None = Field(
        None,
        description=(
            "The model's predictions on the reference sample, row for row, read by the drift detector."
        ),
    )
    holdout_uri: Uri | None = Field(
        None,
        description=(
            "The trainer's held-out rows (holdout.csv: features, label, the model's prediction and class "
            "probabilities), from which the drift detector estimates the model's performance before labels "
            "arrive."
        ),
    )


class ChampionEvaluation(ApiModel):
    """The champion measured on this version's own held-out data, by the trainer."""

    version: DnsSubdomain = Field(description="Name of the champion ModelVersion, e.g. iris-v3.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="The champion's metrics on this version's held-out data.",
    )


class Framework(ApiModel):
    """The model's format, which picks the serving runtime."""

    name: ModelFramework = Field(description="Model format as KServe names it, e.g. sklearn or pytorch.")
    version: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="Version of the framework the model was trained with, e.g. 1.5.2."
    )


class Lineage(ApiModel):
    """Where a model version came from: code, data, parameters and what started its training."""

    training_run: DnsSubdomain | None = Field(None, description="Name of the TrainingRun that produced it.")
    image: ShortText | None = Field(None, description="Trainer image the model was trained with.")
    image_digest: Digest | None = Field(None, description="Digest of the trainer image.")
    code_version: ShortText | None = Field(
        None, description="Version of the training code, e.g. a git commit."
    )
    dataset_uri: Uri | None = Field(None, description="The data the model was trained on.")
    dataset_hash: ShortText | None = Field(None, description="Content hash of that data.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Hyperparameters the model was trained with.",
    )
    trigger: Trigger | None = Field(None, description="What started the training.")


class ModelVersionSpec(ApiModel):
    """One registered version of a model. Immutable: register a new ModelVersion to change anything."""

    model_name: DnsLabel = Field(description="Name of the model this is a version of.")
    version: int = Field(
        ge=1, description="Version number, unique per model; the object is named <modelName>-v<version>."
    )
    artifact: Artifact = Field(description="The stored model.")
    framework: Framework = Field(description="The model's format.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=MAX_MAP_ENTRIES, description="Metrics measured at training time."
    )
    champion_evaluation: ChampionEvaluation | None = Field(
        None,
        description=(
            "The champion's metrics on this version's own held-out data, measured by the trainer; the "
            "champion comparison uses them when they are the current champion's."
        ),
    )
    lineage: Lineage | None = Field(None, description="Where the model came from.")
    validation: Validation | None = Field(
        None,
        description=(
            "Gates this version must pass, e.g. copied from its TrainingRun; a ModelPolicy named after the "
            "model adds its own."
        ),
    )
    created_by: ShortText | None = Field(
        None, description="Who or what registered it, e.g. trainingrun/iris-1 or a person's name."
    )

    @model_validator(mode="after")
    def _check_name_like_the_crd(self, info: ValidationInfo) -> Self:
        name = object_name(info)
        if name is not None and name != f"{self.model_name}-v{self.version}":
            raise ValueError("metadata.name must be <spec.modelName>-v<spec.version>, e.g. iris-v3")
        return self


class ValidationCheck(ApiModel):
    """The result of one validation gate."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="Name of the check, e.g. gate-accuracy or champion-comparison."
    )
    metric: MetricName | None = Field(None, description="The metric checked.")
    value: float | None = Field(
        None, description="The metric's value; absent when the metric was not reported."
    )
    threshold: float | None = Field(None, description="The value it was compared with.")
    comparison: Comparison | None = Field(None, description="How value was compared with threshold.")
    same_data: bool | None = Field(
        None,
        description=(
            "True when a champion comparison used the champion's metric on this version's own held-out data "
            "(spec.championEvaluation) rather than the champion's own recorded metric."
        ),
    )
    passed: bool = Field(description="Whether the check passed.")
    message: ShortText | None = Field(None, description="Human-readable outcome of the check.")


class StageTransition(ApiModel):
    """One change of a ModelVersion's stage."""

    stage: ModelStage = Field(description="The stage entered.")
    time: datetime = Field(description="When the stage was entered.")
    reason: ShortText | None = Field(
        None, description="Why, in CamelCase, e.g. Registered, Requested or ReplacedByChampion."
    )
    message: ShortText | None = Field(None, description="Who asked for the change, and why, in words.")


class StageRequestResult(StrEnum):
    """What became of a stage request."""

    APPLIED = "Applied"
    REFUSED = "Refused"


class StageRequest(ApiModel):
    """The last stage requested through the modelloop.dev/requested-stage annotation, and its outcome."""

    stage: ShortText = Field(description="The annotation's value, as written, e.g. Champion.")
    result: StageRequestResult = Field(description="Applied or Refused.")
    message: ShortText | None = Field(None, description="Why it was refused, or what it changed.")
    time: datetime = Field(description="When the request was handled.")


class ModelVersionStatus(ResourceStatus):
    """The observed state of a ModelVersion: its validation and its stage."""

    phase: ModelVersionPhase | None = Field(None, description="Pending, Validated or Rejected.")
    stage: ModelStage | None = Field(None, description="Candidate, Challenger, Champion or Archived.")
    serving_stage: ModelStage | None = Field(
        None,
        description="The stage serving last implied (Challenger while an InferenceService rolls it out, "
        "Champion once it serves the stable traffic); each is applied once.",
    )
    checks: list[ValidationCheck] = Field(
        default_factory=list, max_length=32, description="Results of the validation checks."
    )
    history: list[StageTransition] = Field(
        default_factory=list,
        max_length=64,
        description="Stage changes, oldest first; the operator keeps the latest.",
    )
    key_metric: ShortText | None = Field(
        None, description="The headline metric for kubectl get, e.g. accuracy=0.953."
    )
    validation_time: datetime | None = Field(None, description="When the checks were evaluated.")
    compared_with: DnsSubdomain | None = Field(
        None, description="The champion this version was compared with, when there was one."
    )
    stage_request: StageRequest | None = Field(
        None, description="The last stage requested through the modelloop.dev/requested-stage annotation."
    )


MODEL_VERSION = CrdInfo(
    kind="ModelVersion",
    plural="modelversions",
    singular="modelversion",
    short_names=("mv",),
    description=(
        "ModelVersion records one immutable version of a model: artifact, framework, metrics and lineage."
    ),
    spec_model=ModelVersionSpec,
    status_model=ModelVersionStatus,
    printer_columns=(
        PrinterColumn("Model", ".spec.modelName", "string", "Name of the model."),
        PrinterColumn("Version", ".spec.version", "integer", "Version number."),
        PrinterColumn("Metric", ".status.keyMetric", "string", "The headline metric."),
        PrinterColumn("Validated", ".status.phase", "string", "Outcome of the validation."),
        PrinterColumn("Stage", ".status.stage", "string", "Stage in serving."),
        AGE_COLUMN,
    ),
    # Deriving the name from model and version makes the API server itself refuse a second
    # ModelVersion with the same version of a model (AlreadyExists). CEL's cost estimate cannot
    # bound string(int) inside a concatenation, hence the comparison in two halves.
    rules=(
        CelRule(
            rule=(
                "self.metadata.name.startsWith(self.spec.modelName + '-v')"
                " && self.metadata.name.substring(size(self.spec.modelName) + 2) == string(self.spec.version)"
            ),
            message="metadata.name must be <spec.modelName>-v<spec.version>, e.g. iris-v3",
        ),
    ),
    spec_rules=(
        CelRule(rule="self == oldSelf", message="spec is immutable: register a new ModelVersion instead"),
    ),
)
