"""The ModelVersion a successful run registers, and the run's headline metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelloop.api import API_VERSION, MODEL_VERSION, ModelFramework, TrainingRunSpec, TriggerKind
from modelloop.api.meta import ParamValue
from modelloop.naming import LABEL_MODEL, LABEL_TRAINING_RUN, label_value, run_annotations, standard_labels
from modelloop.registry.validation import format_key_metric, validation_metrics
from modelloop.training.result import TrainerResult


def run_key_metric(spec: TrainingRunSpec, metrics: Mapping[str, float]) -> str | None:
    """The metric `kubectl get` shows for a run: the first validation gate's, else the sweep objective's,
    else a well-known one, else the first by name; formatted ``name=value``."""
    return format_key_metric(
        [*validation_metrics(spec.validation), *([spec.sweep.objective.metric] if spec.sweep else [])],
        metrics,
    )


def model_version_name(model_name: str, version: int) -> str:
    """ModelVersions are named ``<model>-v<version>``: the API server then refuses a duplicate version."""
    return f"{model_name}-v{version}"


def render_model_version(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    result: TrainerResult,
    version: int,
    params: Mapping[str, ParamValue],
    image_digest: str | None = None,
) -> dict[str, Any]:
    """The ModelVersion recording what ``run`` produced. It has no owner: the registry outlives runs."""
    meta = run["metadata"]
    trigger = (
        spec.triggered_by.model_dump(exclude_none=True) if spec.triggered_by else {"kind": TriggerKind.USER}
    )
    framework: dict[str, Any] = {"name": _framework(result.framework)}
    if result.framework_version:
        framework["version"] = result.framework_version[:64]
    artifact: dict[str, Any] = {"uri": result.artifact_uri}
    if result.artifact_digest:
        artifact["digest"] = result.artifact_digest
    if result.reference_uri:
        artifact["referenceUri"] = result.reference_uri
    if result.reference_predictions_uri:
        artifact["referencePredictionsUri"] = result.reference_predictions_uri
    lineage: dict[str, Any] = {
        "trainingRun": meta["name"],
        "image": spec.image,
        "datasetUri": spec.dataset.uri,
        "params": dict(params),
        "trigger": trigger,
    }
    for key, value in (
        ("imageDigest", image_digest),
        ("codeVersion", result.code_version),
        ("datasetHash", result.dataset_hash or spec.dataset.hash),
    ):
        if value:
            lineage[key] = value
    version_spec: dict[str, Any] = {
        "modelName": spec.output.model_name,
        "version": version,
        "artifact": artifact,
        "framework": framework,
        "metrics": dict(result.metrics),
        "lineage": lineage,
        "createdBy": f"trainingrun/{meta['name']}",
    }
    champion = result.champion
    if champion is not None and champion.error is None and champion.metrics:
        # Measured on this version's own held-out rows: the registry compares like with like.
        version_spec["championEvaluation"] = {"version": champion.version, "metrics": dict(champion.metrics)}
    if spec.validation is not None:
        # The gates travel with the version: its record says what it had to pass.
        version_spec["validation"] = spec.validation.model_dump(mode="json", exclude_none=True)
    return {
        "apiVersion": API_VERSION,
        "kind": MODEL_VERSION.kind,
        "metadata": {
            "name": model_version_name(spec.output.model_name, version),
            "namespace": meta["namespace"],
            "labels": {
                **standard_labels("registry", spec.output.model_name),
                LABEL_MODEL: spec.output.model_name,
                LABEL_TRAINING_RUN: label_value(meta["name"]),
            },
            "annotations": run_annotations(run),
        },
        "spec": version_spec,
    }


def registration_problem(result: TrainerResult) -> str | None:
    """Why ``result`` cannot become a ModelVersion, or None when it can."""
    if not result.artifact_uri:
        return "The trainer reported success but no artifactUri."
    if result.framework not in {f.value for f in ModelFramework}:
        known = ", ".join(f.value for f in ModelFramework)
        return f"The trainer reported framework {result.framework!r}; expected one of {known}."
    return None


def _framework(reported: str | None) -> str:
    return reported or ModelFramework.SKLEARN.value
