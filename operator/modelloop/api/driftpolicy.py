"""DriftPolicy: when a served model counts as drifted, and how to retrain it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from .meta import (
    AGE_COLUMN,
    ApiModel,
    CelRule,
    Comparison,
    CrdInfo,
    DnsSubdomain,
    Duration,
    LabelValue,
    PrinterColumn,
    ResourceStatus,
    ServiceUrl,
    ShortText,
    Uri,
    cel_rules,
    duration_between,
)
from .trainingrun import TrainingRunSpec


class DriftPolicyPhase(StrEnum):
    """Lifecycle phase of a DriftPolicy."""

    WATCHING = "Watching"
    BREACHED = "Breached"
    RETRAINING = "Retraining"
    COOLING_DOWN = "CoolingDown"
    INCONCLUSIVE = "Inconclusive"
    DEGRADED = "Degraded"


class EvaluationResult(StrEnum):
    """What one evaluation of a policy's metrics found."""

    WATCHING = "Watching"
    BREACHED = "Breached"
    INCONCLUSIVE = "Inconclusive"
    DEGRADED = "Degraded"


class DriftTarget(ApiModel):
    """The served model to watch."""

    inference_service: DnsSubdomain = Field(
        description="Name of the modelloop InferenceService in the same namespace."
    )


# Each duration is bounded: an interval of 0s would be a hot loop, a budget period of 1ms no budget, and
# a duration of centuries overflows the operator's clock arithmetic.
EVALUATION_INTERVAL = duration_between("spec.evaluationInterval", "1s", "24h")
WINDOW = duration_between("spec.window", "0s", "720h")
COOLDOWN = duration_between("spec.cooldown", "0s", "8760h")
BUDGET_PERIOD = duration_between("spec.budget.period", "1m", "8760h")


class PrometheusSource(ApiModel):
    """Where the drift metrics are read from."""

    url: ServiceUrl = Field(
        description="Base URL of the Prometheus server, e.g. http://prometheus:9090 (http or https, without "
        "credentials, query or fragment); the operator's allowedUrlPrefixes may restrict it."
    )


class DetectorSource(ApiModel):
    """The drift detector (runtimes/detector) that the target's payload logger feeds."""

    url: ServiceUrl = Field(
        description="Base URL of the detector, e.g. http://drift-detector.ml:8080. The operator tells it "
        "which versions are served and where their reference samples are, and asks it for recent data; "
        "the operator's allowedUrlPrefixes may restrict it."
    )


class RetrainingBudget(ApiModel):
    """At most so many retrainings in a period, whatever the metrics say."""

    max_retrainings: int = Field(3, ge=1, le=1000, description="Retrainings allowed in one period.")
    period: Annotated[Duration, BUDGET_PERIOD.check] = Field(
        "24h",
        json_schema_extra=BUDGET_PERIOD.schema,
        description="The sliding period the budget counts over, from 1m to 8760h.",
    )


class RecentData(ApiModel):
    """The detector's window of recent rows, added to the retraining's data."""

    uri_prefix: Uri = Field(
        description="Where the detector writes the dataset file, e.g. s3://datasets/recent; the file name "
        "carries the service, the time and the content hash."
    )


PromQuery = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
"""A PromQL query returning one number."""
QUERY_PLACEHOLDERS = (
    "{{namespace}}, {{name}} (the InferenceService), {{model}} and {{version}} (the stable version served) "
    "are substituted"
)


class EstimateBreach(StrEnum):
    """When an estimated metric counts as breached."""

    ESTIMATE = "Estimate"
    WHOLE_BAND = "WholeBand"


class MetricEstimate(ApiModel):
    """The metric's query reads an estimate made without labels, and these queries read its band."""

    lower_query: PromQuery = Field(
        description="PromQL query returning the lower bound of the estimate's band, e.g. "
        "min(modelloop_estimated_performance_lower{...}); " + QUERY_PLACEHOLDERS + "."
    )
    upper_query: PromQuery = Field(
        description="PromQL query returning the upper bound of the estimate's band, e.g. "
        "min(modelloop_estimated_performance_upper{...}); " + QUERY_PLACEHOLDERS + "."
    )
    breach_when: EstimateBreach = Field(
        EstimateBreach.ESTIMATE,
        description="Estimate: the estimate past the threshold is a breach, whatever its band says. "
        "WholeBand: only when the whole band is past the threshold too (its bound nearer the threshold: the "
        "upper one for LessThan and LessThanOrEqual, the lower one for GreaterThan and GreaterThanOrEqual), "
        "so that an estimate within its error of the threshold never retrains; the band missing is then "
        "inconclusive.",
    )


class DriftMetric(ApiModel):
    """A Prometheus query whose value, compared with a threshold, signals drift."""

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    ] = Field(description="Name of the signal, an identifier (letters, digits, _ and -), e.g. feature-drift.")
    query: PromQuery = Field(description="PromQL query returning one number; " + QUERY_PLACEHOLDERS + ".")
    threshold: float = Field(description="The value the query's result is compared with.")
    comparison: Comparison = Field(
        description="The policy is breached while `value <comparison> threshold` holds, e.g. GreaterThan."
    )
    estimate: MetricEstimate | None = Field(
        None,
        description="Set when the query reads an estimate made without labels, such as the drift "
        "detector's modelloop_estimated_performance: the operator reads its band too, and a retraining's "
        "evidence says that the value was estimated and gives its band. A band query without data leaves "
        "the band out; it makes the metric inconclusive only with breachWhen WholeBand.",
    )


class RetrainSpec(ApiModel):
    """How to retrain when drift is confirmed."""

    training_run_template: TrainingRunSpec = Field(
        description="Spec of the TrainingRun to create; the operator fills in triggeredBy with the evidence."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Labels of the TrainingRun (its Job and pods get them too), e.g. a team or a queue.",
    )
    recent_data: RecentData | None = Field(
        None,
        description="Add the detector's recent rows (joined with their feedback labels) to the run's data, "
        "so that it learns from the data that drifted; needs spec.detector.",
    )


RECENT_DATA_NEEDS_DETECTOR = (
    "spec.retrain.recentData needs spec.detector: the detector exports the recent data"
)


class DriftPolicySpec(ApiModel):
    """When the target counts as drifted (any metric breached for a whole window) and what to do then."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.retrain.recentData) || has(self.detector)",
                message=RECENT_DATA_NEEDS_DETECTOR,
                field_path=".retrain.recentData",
            ),
        )
    )

    target: DriftTarget = Field(description="The served model to watch.")
    prometheus: PrometheusSource | None = Field(
        None, description="Where to read the metrics; the operator's default Prometheus when absent."
    )
    metrics: list[DriftMetric] = Field(
        min_length=1, max_length=16, description="Drift signals; any one breached counts as a breach."
    )
    window: Annotated[Duration, WINDOW.check] = Field(
        "10m",
        json_schema_extra=WINDOW.schema,
        description="How long a breach must hold before retraining starts, at most 720h.",
    )
    cooldown: Annotated[Duration, COOLDOWN.check] = Field(
        "1h",
        json_schema_extra=COOLDOWN.schema,
        description="Least time between two retrainings, at most 8760h.",
    )
    evaluation_interval: Annotated[Duration, EVALUATION_INTERVAL.check] = Field(
        "1m",
        json_schema_extra=EVALUATION_INTERVAL.schema,
        description="How often the metrics are evaluated, from 1s to 24h.",
    )
    budget: RetrainingBudget = Field(
        default_factory=RetrainingBudget,
        json_schema_extra={"default": {}},
        description="At most so many retrainings per period.",
    )
    detector: DetectorSource | None = Field(
        None, description="The drift detector fed by the target's payload logger, when there is one."
    )
    retrain: RetrainSpec = Field(description="The retraining to start on drift.")

    def outbound_urls(self) -> list[tuple[str, str]]:
        """The URLs of this spec that the operator calls, each with its field as users write it."""
        urls = [("spec.prometheus.url", self.prometheus.url)] if self.prometheus else []
        return urls + ([("spec.detector.url", self.detector.url)] if self.detector else [])

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if self.retrain.recent_data is not None and self.detector is None:
            raise ValueError(RECENT_DATA_NEEDS_DETECTOR)
        return self


class DriftPolicyStatus(ResourceStatus):
    """The observed state of a DriftPolicy."""

    phase: DriftPolicyPhase | None = Field(
        None, description="Watching, Breached, Retraining, CoolingDown, Inconclusive or Degraded."
    )
    last_result: EvaluationResult | None = Field(
        None, description="What the last evaluation found: Watching, Breached, Inconclusive or Degraded."
    )
    last_evaluation_time: datetime | None = Field(None, description="When the metrics were last evaluated.")
    last_value: ShortText | None = Field(
        None, description="The first metric's value at the last evaluation, e.g. feature-drift=0.42."
    )
    breach_start_time: datetime | None = Field(None, description="When the current breach began.")
    last_trigger_time: datetime | None = Field(None, description="When a retraining was last started.")
    last_training_run: DnsSubdomain | None = Field(None, description="Name of the last TrainingRun started.")
    last_model_version: DnsSubdomain | None = Field(
        None, description="The ModelVersion the last TrainingRun registered."
    )
    retrainings: list[datetime] = Field(
        default_factory=list, max_length=1000, description="When each retraining of the budget period began."
    )
    retrainings_in_period: int | None = Field(
        None, ge=0, description="Retrainings started in the budget period."
    )
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
        PrinterColumn("Value", ".status.lastValue", "string", "The first metric at the last evaluation."),
        PrinterColumn("Last Run", ".status.lastTrainingRun", "string", "The last TrainingRun started."),
        AGE_COLUMN,
    ),
)
