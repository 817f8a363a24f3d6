"""ModelPolicy: rules for every version of one model — validation gates and retention."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, ValidationInfo, model_validator

from .meta import (
    AGE_COLUMN,
    ApiModel,
    CelRule,
    CrdInfo,
    DnsSubdomain,
    PrinterColumn,
    ResourceStatus,
    object_name,
)
from .validation import Validation


class Retention(ApiModel):
    """How many archived versions of the model to keep."""

    keep_archived: int = Field(
        ge=0,
        le=10000,
        description=(
            "Archived versions kept per model, newest first; older archived versions that the operator "
            "registered are deleted. Versions serving, Champion or Challenger are never deleted."
        ),
    )


class ModelPolicySpec(ApiModel):
    """Rules for every version of the model this policy is named after."""

    validation: Validation | None = Field(
        None,
        description="Gates every version must pass, in addition to the version's own (from its TrainingRun).",
    )
    retention: Retention | None = Field(
        None, description="Archived versions to keep; without it, the operator's default applies."
    )

    @model_validator(mode="after")
    def _check_name_like_the_crd(self, info: ValidationInfo) -> Self:
        name = object_name(info)
        if name is not None and (len(name) > 63 or "." in name):
            raise ValueError("metadata.name must be the model's name (a DNS label, e.g. iris)")
        return self


class ModelPolicyPhase(StrEnum):
    """Whether the operator applies the policy."""

    ACTIVE = "Active"
    INVALID = "Invalid"


class ModelPolicyStatus(ResourceStatus):
    """The model at a glance, as the operator last saw it."""

    phase: ModelPolicyPhase | None = Field(
        None, description="Active, or Invalid when the spec is not usable."
    )
    champion: DnsSubdomain | None = Field(None, description="The ModelVersion that is Champion now.")
    versions: int | None = Field(None, ge=0, description="ModelVersions of this model that exist now.")
    latest_version: int | None = Field(None, ge=0, description="The highest version number registered.")


MODEL_POLICY = CrdInfo(
    kind="ModelPolicy",
    plural="modelpolicies",
    singular="modelpolicy",
    short_names=("mpol",),
    description=(
        "ModelPolicy holds the validation gates and retention for every version of one model; "
        "it is named after the model (metadata.name = ModelVersion spec.modelName)."
    ),
    spec_model=ModelPolicySpec,
    status_model=ModelPolicyStatus,
    printer_columns=(
        PrinterColumn("Champion", ".status.champion", "string", "The current champion."),
        PrinterColumn("Latest", ".status.latestVersion", "integer", "The highest version number."),
        PrinterColumn("Versions", ".status.versions", "integer", "Versions that exist now."),
        PrinterColumn("Keep", ".spec.retention.keepArchived", "integer", "Archived versions kept."),
        AGE_COLUMN,
    ),
    rules=(
        CelRule(
            rule="size(self.metadata.name) <= 63 && !self.metadata.name.contains('.')",
            message="metadata.name must be the model's name (a DNS label, e.g. iris)",
        ),
    ),
)
