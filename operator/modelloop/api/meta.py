"""Shared building blocks of modelloop's custom resources.

The pydantic models in this package are the single source of truth for the CRDs: their field
descriptions, bounds and CEL rules end up in the generated OpenAPI schema (see ``crd.py``), and
the operator validates specs with the very same models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "modelloop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "modelloop"

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[mkMGTPE]|([eE][+-]?[0-9]+))?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"

# Bounds on every string, list and map keep objects small and let the API server's
# cost estimate of the CEL rules pass (it multiplies by these maxima).
MAX_URI_LENGTH = 2048
MAX_MESSAGE_LENGTH = 32768
MAX_MAP_ENTRIES = 64

DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A Kubernetes DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters."""

DnsSubdomain = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
"""A Kubernetes DNS-1123 subdomain, the form of most object names."""

LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
"""A Kubernetes label value."""

MetricName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=METRIC_NAME_PATTERN)]
"""The name of a model metric, e.g. ``accuracy`` or ``val_loss``."""

# [registry[:port]/]path[:tag][@digest], as the OCI distribution spec names images: no whitespace, a
# lower-case path, a tag of up to 128 characters, a digest algorithm:hex.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE_PATTERN = (
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,})?$"
)
ImageReference = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_REFERENCE_PATTERN)
]
"""A container image reference, e.g. ``ghcr.io/modelloop/trainer:0.1.0`` or one by digest."""

Uri = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_LENGTH)]
"""A URI such as ``s3://bucket/key``, ``gs://...``, ``file:///...`` or ``sklearn://iris``."""

SERVICE_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
ServiceUrl = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URI_LENGTH, pattern=SERVICE_URL_PATTERN)
]
"""The base URL of a service the operator itself calls (Prometheus, a drift detector): http or https, a
host and an optional path; no credentials, query or fragment, which would end up in status and logs."""

ShortText = Annotated[str, StringConstraints(max_length=1024)]
"""A short free-form text such as a reason, an image reference or an evidence value."""

Message = Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)]
"""A human-readable message."""

Duration = Annotated[str, StringConstraints(max_length=64, pattern=DURATION_PATTERN)]
"""A duration such as ``90s``, ``5m`` or ``1h30m`` (units ms, s, m, h)."""

Quantity = Annotated[
    Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "minimum": 0, "pattern": QUANTITY_PATTERN, "maxLength": 64}
    ),
]
"""A Kubernetes resource quantity: a non-negative integer or a string such as ``500m`` or ``4Gi``."""

MAX_PARAM_STRING = 1024
"""Characters a string hyperparameter may have (checked by the operator: CEL cannot see untyped nodes)."""

ParamValue = Annotated[
    bool | int | float | Annotated[str, StringConstraints(max_length=MAX_PARAM_STRING)],
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
"""A hyperparameter value: an integer, a number, a string or a boolean.

Structural schemas cannot express such a union, so the CRD leaves the node free-form; and CEL
cannot see untyped nodes, so no rule can keep them scalar at admission. The operator's
validation with these models rejects other values with a message naming the parameter.
"""

FreeFormObject = Annotated[
    dict[str, JsonValue],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A JSON object passed through unchanged, such as a Kubernetes ``affinity``."""


def parse_duration(value: str) -> timedelta:
    """Parse a ``Duration`` string such as ``1h30m`` or ``250ms`` into a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: expected e.g. 90s, 5m or 1h30m")
    unit_seconds = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    seconds = sum(
        float(amount) * unit_seconds[unit] for amount, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", value)
    )
    return timedelta(seconds=seconds)


class ApiModel(BaseModel):
    """Base of every model of modelloop's API: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        protected_namespaces=(),
    )


CelReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` rule, checked by the API server at admission."""

    rule: str
    message: str | None = None
    message_expression: str | None = None
    field_path: str | None = None
    reason: CelReason | None = None

    def to_schema(self) -> dict[str, str]:
        """The rule as it appears in a CRD's OpenAPI schema."""
        entry = {"rule": self.rule}
        optional = {
            "message": self.message,
            "messageExpression": self.message_expression,
            "fieldPath": self.field_path,
            "reason": self.reason,
        }
        entry.update({key: value for key, value in optional.items() if value is not None})
        return entry


def object_name(info: ValidationInfo) -> str | None:
    """The object's metadata.name, when a spec is validated with ``context={"name": ...}``.

    A spec model cannot see its object's metadata; given the name this way, it also checks the rules
    that the CRD states on the whole object and that read the name.
    """
    name = info.context.get("name") if isinstance(info.context, Mapping) else None
    return name if isinstance(name, str) else None


def cel_rules(*rules: CelRule) -> JsonDict:
    """A ``json_schema_extra`` value that attaches CEL rules to a model or a field."""
    return {"x-kubernetes-validations": [dict(rule.to_schema()) for rule in rules]}


@dataclass(frozen=True)
class DurationBounds:
    """The bounds of one ``Duration`` field: ``check`` (the operator's, in the field's ``Annotated``) and
    ``schema`` (its ``json_schema_extra``: the CEL rule the API server checks at admission) refuse a
    duration outside [minimum, maximum] with the same ``message``."""

    check: AfterValidator
    schema: JsonDict
    message: str


def duration_between(field: str, minimum: str, maximum: str) -> DurationBounds:
    """The bounds [minimum, maximum] of the Duration field ``field``, named as users write it (e.g.
    ``spec.evaluationInterval``) in the message."""
    message = f"{field} must be between {minimum} and {maximum}"
    low, high = parse_duration(minimum), parse_duration(maximum)

    def check(value: str) -> str:
        try:
            within = low <= parse_duration(value) <= high
        except OverflowError:  # more days than a timedelta holds: far above any maximum
            within = False
        if not within:
            raise ValueError(message)
        return value

    rule = f"duration(self) >= duration('{minimum}') && duration(self) <= duration('{maximum}')"
    return DurationBounds(AfterValidator(check), cel_rules(CelRule(rule=rule, message=message)), message)


class ConditionStatus(StrEnum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the resource's current state, in the Kubernetes API conventions."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of the condition in CamelCase, e.g. Ready or Succeeded.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation that the condition was set from."
    )
    last_transition_time: datetime = Field(
        description="Last time the condition changed from one status to another."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Programmatic identifier in CamelCase for the condition's last transition.",
    )
    message: Message = Field(description="Human-readable details about the last transition.")


class ResourceStatus(ApiModel):
    """The status fields that every modelloop kind shares."""

    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation that the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Observations of the object's state; at most one per condition type.",
    )
    reason: str | None = Field(
        None, max_length=1024, description="Programmatic identifier in CamelCase for the current phase."
    )
    message: Message | None = Field(
        None, description="Human-readable explanation of the current phase, saying what to change."
    )


class Comparison(StrEnum):
    """How a metric's value is compared with a threshold."""

    GREATER_THAN_OR_EQUAL = "GreaterThanOrEqual"
    GREATER_THAN = "GreaterThan"
    LESS_THAN_OR_EQUAL = "LessThanOrEqual"
    LESS_THAN = "LessThan"

    def holds(self, value: float, threshold: float) -> bool:
        """Whether ``value <comparison> threshold`` is true."""
        match self:
            case Comparison.GREATER_THAN_OR_EQUAL:
                return value >= threshold
            case Comparison.GREATER_THAN:
                return value > threshold
            case Comparison.LESS_THAN_OR_EQUAL:
                return value <= threshold
            case Comparison.LESS_THAN:
                return value < threshold


class TriggerKind(StrEnum):
    """What started a training run."""

    USER = "User"
    SCHEDULE = "Schedule"
    DRIFT_POLICY = "DriftPolicy"


class Trigger(ApiModel):
    """What started a training run, and the evidence it acted on."""

    kind: TriggerKind = Field(description="What started the run: User, Schedule or DriftPolicy.")
    name: DnsSubdomain | None = Field(
        None, description="Name of the object that started the run, e.g. the DriftPolicy."
    )
    evidence: dict[str, ShortText] = Field(
        default_factory=dict,
        max_length=32,
        description="Observations that justified the run, e.g. the drift score that breached its threshold.",
    )


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """The effect of a node taint."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A toleration copied into the pod spec, as in core/v1 Toleration."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="(has(self.key) && self.key != '') || self.operator == 'Exists'",
                message="operator must be Exists when key is empty",
                field_path=".operator",
            ),
            CelRule(
                rule="self.operator != 'Exists' || !has(self.value) || self.value == ''",
                message="value must be empty when operator is Exists",
                field_path=".value",
            ),
            CelRule(
                rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                message="tolerationSeconds requires effect NoExecute",
                field_path=".tolerationSeconds",
            ),
        )
    )

    key: str | None = Field(
        None, max_length=316, description="Taint key to match; empty matches every key (operator Exists)."
    )
    operator: TolerationOperator = Field(
        TolerationOperator.EQUAL, description="Exists matches any value; Equal matches `value` exactly."
    )
    value: LabelValue | None = Field(None, description="Taint value to match when operator is Equal.")
    effect: TaintEffect | None = Field(None, description="Taint effect to match; empty matches every effect.")
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated before eviction; unset means forever."
    )

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Toleration:
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise ValueError("toleration operator must be Exists when key is empty")
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError("toleration value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("toleration tolerationSeconds requires effect NoExecute")
        return self


PrinterColumnType = Literal["string", "integer", "number", "boolean", "date"]


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get`` for a kind."""

    name: str
    json_path: str
    type: PrinterColumnType
    description: str
    priority: int = 0


AGE_COLUMN = PrinterColumn(
    name="Age",
    json_path=".metadata.creationTimestamp",
    type="date",
    description="Time since the object was created.",
)


@dataclass(frozen=True)
class CrdInfo:
    """Everything needed to generate one kind's CustomResourceDefinition."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[ApiModel]
    status_model: type[ApiModel]
    printer_columns: tuple[PrinterColumn, ...]
    rules: tuple[CelRule, ...] = ()
    """CEL rules on the whole object (they may read ``self.metadata.name``). The spec model checks the
    same when it is validated with the object's name in its context (see ``object_name``)."""
    spec_rules: tuple[CelRule, ...] = ()
    """CEL rules on the kind's spec as a whole, such as immutability. They are kept off the spec model
    so that a spec embedded elsewhere (a DriftPolicy's TrainingRun template) does not inherit them."""

    @property
    def group(self) -> str:
        """The API group, modelloop.dev."""
        return GROUP

    @property
    def version(self) -> str:
        """The served and stored version."""
        return VERSION

    @property
    def api_version(self) -> str:
        """``group/version`` as written in an object's apiVersion."""
        return API_VERSION

    @property
    def crd_name(self) -> str:
        """The CRD's metadata.name, ``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"
