"""DriftPolicy: when a served model counts as drifted, and how to retrain it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from .meta import (
    AGE_COLUMN,
    ApiModel,
    Comparison,
    CrdInfo,
    DnsSubdomain,
    Duration,
    PrinterColumn,
    ResourceStatus,
    ShortText,
    Uri,
)
from .trainingrun import TrainingRunSpec


class DriftPolicyPhase(StrEnum):
    """Lifecycle phase of a DriftPolicy."""

    WATCHING = "Watching"
    BREACHED = "Breached"
    RETRAINING = "Retraining"
    COOLING_DOWN = "CoolingDown"


class DriftTarget(ApiModel):
    """The served model to watch."""

    inference_service: DnsSubdomain = Field(
        description="Name of the modelloop InferenceService in the same namespace."
    )


class PrometheusSource(ApiModel):
    """Where the drift metrics are read from."""

    url: Uri = Field(description="Base URL of the Prometheus server, e.g. http://prometheus:9090.")


class DriftMetric(ApiModel):
    """A Prometheus query whose value, compared with a threshold, signals drift."""

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    ] = Field(description="Name of the signal, an identifier (letters, digits, _ and -), e.g. feature-drift.")
    query: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="PromQL query returning one number; {{namespace}} and {{name}} are substituted."
    )
    threshold: float = Field(description="The value the query's result is compared with.")
    comparison: Comparison = Field(
        description="The policy is breached while `value <comparison> threshold` holds, e.g. GreaterThan."
    )


class RetrainSpec(ApiModel):
    """How to retrain when drift is confirmed."""

    training_run_template: TrainingRunSpec = Field(
        description="Spec of the TrainingRun to create; the operator fills in triggeredBy with the evidence."
    )


class DriftPolicySpec(ApiModel):
    """When the target counts as drifted (any metric breached for a whole window) and what to do then."""

    target: DriftTarget = Field(description="The served model to watch.")
    prometheus: PrometheusSource | None = Field(
        None, description="Where to read the metrics; the operator's default Prometheus when absent."
    )
    metrics: list[DriftMetric] = Field(
        min_length=1, max_length=16, description="Drift signals; any one breached counts as a breach."
    )
    window: Duration = Field("10m", description="How long a breach must hold before retraining starts.")
    cooldown: Duration = Field("1h", description="Least time between two retrainings.")
    evaluation_interval: Duration = Field("1m", description="How often the metrics are evaluated.")
    retrain: RetrainSpec = Field(description="The retraining to start on drift.")


class DriftPolicyStatus(ResourceStatus):
    """The observed state of a DriftPolicy."""

    phase: DriftPolicyPhase | None = Field(None, description="Watching, Breached, Retraining or CoolingDown.")
    last_evaluation_time: datetime | None = Field(None, description="When the metrics were last evaluated.")
    breach_start_time: datetime | None = Field(None, description="When the current breach began.")
    last_trigger_time: datetime | None = Field(None, description="When a retraining was last started.")
    last_training_run: DnsSubdomain | None = Field(None, description="Name of the last TrainingRun started.")
    evidence: dict[str, ShortText] = Field(
        default_factory=dict, max_length=32, description="The metric values of the last evaluation."
    )


DRIFT_POLICY = CrdInfo(
    kind="DriftPolicy",
    plural="driftpolicies",
    singular="driftpolicy",
    short_names=("dp",),
    description="DriftPolicy watches a served model's metrics in Prometheus and retrains it when it drifts.",
    spec_model=DriftPolicySpec,
    status_model=DriftPolicyStatus,
    printer_columns=(
        PrinterColumn("Target", ".spec.target.inferenceService", "string", "The InferenceService watched."),
        PrinterColumn("Phase", ".status.phase", "string", "Lifecycle phase of the policy."),
        PrinterColumn("Last Run", ".status.lastTrainingRun", "string", "The last TrainingRun started."),
        AGE_COLUMN,
    ),
)
