"""InferenceService: a served model, rolled out version by version behind a canary."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, NamedTuple, Self

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from .backend import backend_choices, backend_refusal, backend_rules, either, shadow_choices
from .backends import BACKENDS, DEFAULT_BACKEND, Backend
from .meta import (
    AGE_COLUMN,
    ApiModel,
    CelRule,
    CrdInfo,
    DnsLabel,
    DnsSubdomain,
    Duration,
    ImageReference,
    PrinterColumn,
    Quantity,
    ResourceStatus,
    ServiceUrl,
    ShortText,
    Uri,
    cel_rules,
    duration_between,
)

CanaryStep = Annotated[int, Field(ge=1, le=100)]
# A few per metric, for at most 16 metrics: status stays small.
MEASUREMENTS_KEPT = 64
# An interval of 0s would measure (or step) in a hot loop; one of centuries overflows the clock arithmetic.
ANALYSIS_INTERVAL = duration_between("spec.rollout.analysis.interval", "1s", "24h")
STEP_INTERVAL = duration_between("spec.rollout.stepInterval", "1s", "168h")
SCALE_DOWN_DELAY = duration_between("spec.rollout.scaleDownDelay", "0s", "1h")
DEFAULT_SCALE_DOWN_DELAY = "30s"


class InferenceServicePhase(StrEnum):
    """Lifecycle phase of an InferenceService's rollout."""

    PENDING = "Pending"
    STABLE = "Stable"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"


class DeploymentMode(StrEnum):
    """KServe's deployment modes: Knative (serverless, revisions) or Standard (Deployments)."""

    KNATIVE = "Knative"
    STANDARD = "Standard"


class ScaleMetric(StrEnum):
    """What the autoscaler's target counts."""

    CONCURRENCY = "concurrency"
    RPS = "rps"
    CPU = "cpu"
    MEMORY = "memory"


class LoggerMode(StrEnum):
    """Which payloads KServe's logger posts."""

    ALL = "all"
    REQUEST = "request"
    RESPONSE = "response"


class MeasurementPhase(StrEnum):
    """The verdict of one analysis measurement."""

    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class PauseReason(StrEnum):
    """Why a rollout holds its step."""

    REQUESTED = "Requested"
    INCONCLUSIVE = "Inconclusive"


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
        None,
        description="Serving runtime instead of modelloop's (the ClusterServingRuntime modelloop-server).",
    )
    model_format: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = Field(
        None,
        description=(
            "Model format the runtime must support; by default modelloop-<framework> of the ModelVersion "
            "(modelloop's artifact layout), e.g. modelloop-sklearn."
        ),
    )
    scale_target: int | None = Field(
        None, ge=1, le=1_000_000, description="Autoscaling target per replica, in units of scaleMetric."
    )
    scale_metric: ScaleMetric | None = Field(None, description="concurrency, rps, cpu or memory.")

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

    prometheus_url: ServiceUrl | None = Field(
        None,
        description="Prometheus to query (http or https, without credentials, query or fragment); the "
        "operator's default when absent. The operator's allowedUrlPrefixes may restrict it.",
    )
    interval: Annotated[Duration, ANALYSIS_INTERVAL.check] = Field(
        "1m",
        json_schema_extra=ANALYSIS_INTERVAL.schema,
        description="How often the metrics are checked, from 1s to 24h.",
    )
    failure_limit: int = Field(
        0, ge=0, le=100, description="Failed measurements tolerated; one more rolls the rollout back."
    )
    inconclusive_limit: int = Field(
        3,
        ge=0,
        le=100,
        description=(
            "Inconclusive measurements (no data, Prometheus unreachable) tolerated; one more pauses the "
            "rollout until it is resumed. An inconclusive measurement never advances a step."
        ),
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
    step_interval: Annotated[Duration, STEP_INTERVAL.check] = Field(
        "5m",
        json_schema_extra=STEP_INTERVAL.schema,
        description="How long each step runs before the next, from 1s to 168h.",
    )
    analysis: Analysis | None = Field(
        None, description="Checks gating every step; without them, steps advance on time alone."
    )
    scale_down_delay: Annotated[Duration, SCALE_DOWN_DELAY.check] = Field(
        DEFAULT_SCALE_DOWN_DELAY,
        json_schema_extra=SCALE_DOWN_DELAY.schema,
        description=(
            "How long a version that no longer gets traffic keeps its predictor (the old stable version "
            "after a promotion, the canary after a rollback), so that gateways and clients still routing "
            "by the previous split find it; from 0s to 1h."
        ),
    )
    shadow: bool = Field(
        False,
        description=(
            "Before its first traffic step, the new version gets a mirrored copy of the traffic for one "
            "stepInterval, gated by the analysis like a step; no user sees its answers "
            f"({shadow_choices(BACKENDS)} backend)."
        ),
    )

    @field_validator("steps")
    @classmethod
    def _check_steps_like_the_crd(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("spec.rollout.steps must be non-empty and end at 100")
        if any(later <= earlier for earlier, later in pairwise(steps)):
            raise ValueError("spec.rollout.steps must be strictly increasing")
        return steps


class GatewayReference(ApiModel):
    """A Gateway API Gateway."""

    name: DnsLabel = Field(description="Name of the Gateway.")
    namespace: DnsLabel | None = Field(None, description="Its namespace; the InferenceService's when absent.")


class KServeSettings(ApiModel):
    """Settings of the kserve backend."""

    deployment_mode: DeploymentMode | None = Field(
        None, description="Knative or Standard; the operator's default (MODELLOOP_KSERVE_MODE) when absent."
    )
    gateway: GatewayReference | None = Field(
        None,
        description=(
            "Standard mode: the Gateway whose HTTPRoute splits traffic between stable and canary; the "
            "operator's default (MODELLOOP_GATEWAY) when absent."
        ),
    )


class SeldonSettings(ApiModel):
    """Settings of the seldon backend (Seldon Core v1 SeldonDeployments)."""

    implementation: Annotated[
        str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Z][A-Z0-9_]*$")
    ] = Field(
        "MODELLOOP_SERVER",
        description=(
            "The model server, as registered in Seldon's seldon-config predictor_servers; Seldon "
            "downloads the artifact into /mnt/models for it. MODELLOOP_SERVER is modelloop's "
            "(runtimes/seldon)."
        ),
    )
    image: ImageReference | None = Field(
        None, description="Image of the model server container, instead of the one seldon-config names."
    )


class PayloadLogger(ApiModel):
    """Where the model server's requests and responses are posted (as CloudEvents), e.g. a drift detector."""

    url: Uri = Field(description="Where KServe's payload logger posts.")
    mode: LoggerMode = Field(LoggerMode.ALL, description="all, request or response.")


class InferenceServiceSpec(ApiModel):
    """The desired served model: which version, on which backend, rolled out how."""

    # A backend's settings only with that backend, a shadow phase only where it can mirror: the rules
    # follow from the backends' declarations (modelloop.api.backends, copied from their plugins).
    model_config = ConfigDict(json_schema_extra=cel_rules(*backend_rules(BACKENDS)))

    model: ModelReference = Field(description="The model to serve.")
    backend: Backend = Field(
        DEFAULT_BACKEND,
        description=(
            f"Serving platform: {backend_choices(BACKENDS)}. It cannot change: serve on the other platform "
            "with a new InferenceService, then delete this one."
        ),
    )
    kserve: KServeSettings | None = Field(None, description="Settings of the kserve backend.")
    seldon: SeldonSettings | None = Field(None, description="Settings of the seldon backend.")
    predictor: Predictor | None = Field(None, description="How the model server runs.")
    rollout: Rollout | None = Field(
        None,
        description="Canary rollout of new versions; without it, a new version takes all traffic at once.",
    )
    logger: PayloadLogger | None = Field(None, description="Payload logging, e.g. to a drift detector.")
    paused: bool = Field(
        False, description="Hold the rollout at its current step (traffic stays as it is) until false."
    )

    def outbound_urls(self) -> list[tuple[str, str]]:
        """The URLs of this spec that the operator calls, each with its field as users write it."""
        analysis = self.rollout.analysis if self.rollout else None
        if analysis is None or analysis.prometheus_url is None:
            return []
        return [("spec.rollout.analysis.prometheusUrl", analysis.prometheus_url)]

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        settings = [d.name for d in BACKENDS if d.settings and getattr(self, d.name, None) is not None]
        shadow = self.rollout is not None and self.rollout.shadow
        refusal = backend_refusal(BACKENDS, self.backend.value, settings, shadow)
        if refusal is not None:
            raise ValueError(refusal)
        return self


class Measurement(ApiModel):
    """One measurement of an analysis metric."""

    metric: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="The analysis metric's name."
    )
    phase: MeasurementPhase = Field(description="Passed, Failed or Inconclusive.")
    value: float | None = Field(None, description="The query's value; absent when there was none.")
    time: datetime = Field(description="When it was measured.")
    message: ShortText | None = Field(None, description="The query, its value and bound, or why no value.")


class AnalysisStatus(ApiModel):
    """The analysis of the current rollout."""

    measurements: list[Measurement] = Field(
        default_factory=list,
        max_length=MEASUREMENTS_KEPT,
        description="The last measurements (a few per metric), oldest first.",
    )
    failed: int = Field(0, ge=0, description="Failed measurements in this rollout.")
    inconclusive: int = Field(0, ge=0, description="Inconclusive measurements since it last went on.")
    last_time: datetime | None = Field(None, description="When the metrics were last measured.")
    last_phase: MeasurementPhase | None = Field(
        None, description="The verdict of the last measurement in the current step."
    )


class BackendState(ApiModel):
    """What the serving platform itself reports about the service (Seldon's state and replicas)."""

    state: ShortText | None = Field(None, description="The platform's state, e.g. Seldon's Available.")
    replicas: int | None = Field(None, ge=0, description="Replicas the platform runs, all predictors.")
    available_replicas: int | None = Field(None, ge=0, description="Of them, the available ones.")


class InferenceServiceStatus(ResourceStatus):
    """The observed state of an InferenceService: the versions served and the rollout's progress."""

    phase: InferenceServicePhase | None = Field(
        None, description="Pending, Stable, Progressing, Paused, Promoted, RolledBack or Degraded."
    )
    stable_version: int | None = Field(None, ge=1, description="Version serving the stable traffic.")
    canary_version: int | None = Field(None, ge=1, description="Version being rolled out, if any.")
    canary_weight: int | None = Field(
        None, ge=0, le=100, description="Percentage of traffic modelloop asked for the canary."
    )
    canary_traffic: int | None = Field(
        None, ge=0, le=100, description="Percentage of traffic the canary gets, as the backend reports it."
    )
    shadow: bool | None = Field(
        None,
        description="The canary gets a mirrored copy of the traffic before its first step (rollout.shadow).",
    )
    step_index: int | None = Field(
        None, ge=0, description="Index into spec.rollout.steps of the current step."
    )
    step_start_time: datetime | None = Field(None, description="When the current step began.")
    analysis: AnalysisStatus | None = Field(None, description="The analysis of the current rollout.")
    pause_reason: PauseReason | None = Field(
        None, description="Why the rollout holds: Requested (pause action) or Inconclusive (no data)."
    )
    rolled_back_version: int | None = Field(
        None, ge=1, description="The last version rolled back; it is not rolled out again by itself."
    )
    retiring_version: int | None = Field(
        None,
        ge=1,
        description="The version replaced by the last promotion, kept without traffic until retireTime.",
    )
    retire_time: datetime | None = Field(
        None, description="When the retiring version's predictor goes (spec.rollout.scaleDownDelay)."
    )
    action: ShortText | None = Field(
        None, description="The last modelloop.dev/rollout-action annotation acted on (each value once)."
    )
    backend: Backend | None = Field(None, description="The serving platform the service was deployed on.")
    backend_state: BackendState | None = Field(
        None, description="What the serving platform reports: its state and replicas."
    )
    deployment_mode: DeploymentMode | None = Field(None, description="KServe mode the service runs in.")
    url: ShortText | None = Field(None, description="Where the model answers predictions.")


class RolloutVersions(NamedTuple):
    """The versions an InferenceService serves (stable) and rolls out (canary)."""

    stable: int | None
    canary: int | None


def rollout_versions(status: Mapping[str, Any]) -> RolloutVersions:
    """The versions a stored InferenceService status names, read without parsing the rest of it (the
    indexes hold statuses as stored): anything but a positive integer is None."""

    def number(field: str) -> int | None:
        value = status.get(InferenceServiceStatus.model_fields[field].alias or field)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    return RolloutVersions(number("stable_version"), number("canary_version"))


INFERENCE_SERVICE = CrdInfo(
    kind="InferenceService",
    plural="inferenceservices",
    singular="inferenceservice",
    # KServe's InferenceService already owns "isvc".
    short_names=("mlisvc",),
    description=(
        f"InferenceService serves a model on {either([d.title for d in BACKENDS])} and rolls out new "
        "versions behind a canary."
    ),
    spec_model=InferenceServiceSpec,
    status_model=InferenceServiceStatus,
    spec_rules=(
        CelRule(
            rule="self.backend == oldSelf.backend",
            message=(
                "spec.backend cannot change: serve on the other backend with a new InferenceService, "
                "then delete this one"
            ),
            field_path=".backend",
        ),
    ),
    printer_columns=(
        PrinterColumn("Model", ".spec.model.name", "string", "The model served."),
        PrinterColumn("Stable", ".status.stableVersion", "integer", "Version serving the stable traffic."),
        PrinterColumn("Canary", ".status.canaryVersion", "integer", "Version being rolled out."),
        PrinterColumn(
            "Traffic", ".status.canaryTraffic", "integer", "Percentage of traffic on the canary, as observed."
        ),
        PrinterColumn("Step", ".status.stepIndex", "integer", "Index of the current rollout step."),
        PrinterColumn("Phase", ".status.phase", "string", "Lifecycle phase of the rollout."),
        PrinterColumn("Backend", ".spec.backend", "string", "Serving platform.", priority=1),
        PrinterColumn("URL", ".status.url", "string", "Where the model answers.", priority=1),
        AGE_COLUMN,
    ),
)
