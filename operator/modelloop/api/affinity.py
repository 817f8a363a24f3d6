"""core/v1 Affinity as a bounded schema: a training pod's affinity is passed through unchanged, but every
list and string in it has a size limit, so the API server refuses an oversized one at admission."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from .meta import ApiModel

MAX_TERMS = 4
MAX_EXPRESSIONS = 4
MAX_VALUES = 16

_Key = Annotated[str, StringConstraints(min_length=1, max_length=317)]  # a prefixed label key
_Value = Annotated[str, StringConstraints(max_length=63)]  # a label value
_Namespace = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class SelectorOperator(StrEnum):
    """Operators of a label or node selector requirement."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class SelectorRequirement(ApiModel):
    """A requirement on a label (or a node field): key, operator and values."""

    key: _Key = Field(description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists, DoesNotExist, Gt or Lt.")
    values: list[_Value] = Field(default_factory=list, max_length=MAX_VALUES, description="The values.")


class NodeSelectorTerm(ApiModel):
    """Node requirements, all of which must hold."""

    match_expressions: list[SelectorRequirement] = Field(
        default_factory=list, max_length=MAX_EXPRESSIONS, description="Requirements on node labels."
    )
    match_fields: list[SelectorRequirement] = Field(
        default_factory=list, max_length=MAX_EXPRESSIONS, description="Requirements on node fields."
    )


class NodeSelector(ApiModel):
    """Terms of which at least one must hold."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="The terms, ORed."
    )


class PreferredSchedulingTerm(ApiModel):
    """A weighted node preference."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(ApiModel):
    """Node affinity of a pod."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Nodes the pod prefers."
    )


class LabelSelector(ApiModel):
    """A label selector."""

    match_labels: dict[str, _Value] = Field(
        default_factory=dict, max_length=MAX_EXPRESSIONS * 2, description="Labels that must equal."
    )
    match_expressions: list[SelectorRequirement] = Field(
        default_factory=list, max_length=MAX_EXPRESSIONS, description="Requirements on labels."
    )


class PodAffinityTerm(ApiModel):
    """Pods the pod should (or should not) run near, within a topology domain."""

    label_selector: LabelSelector | None = Field(None, description="The other pods.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces of the other pods.")
    namespaces: list[_Namespace] = Field(
        default_factory=list, max_length=MAX_VALUES, description="Namespaces of the other pods."
    )
    topology_key: _Key = Field(description="The node label that defines a domain.")
    match_label_keys: list[_Key] = Field(
        default_factory=list, max_length=MAX_EXPRESSIONS, description="Pod labels whose values must match."
    )
    mismatch_label_keys: list[_Key] = Field(
        default_factory=list, max_length=MAX_EXPRESSIONS, description="Pod labels whose values must differ."
    )


class WeightedPodAffinityTerm(ApiModel):
    """A weighted pod (anti-)affinity preference."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(ApiModel):
    """Pod affinity (or anti-affinity) of a pod."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Terms preferred."
    )


class Affinity(ApiModel):
    """A pod's affinity, as core/v1 Affinity."""

    node_affinity: NodeAffinity | None = Field(None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Pod anti-affinity.")
