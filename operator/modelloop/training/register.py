"""The ModelVersion a successful run registers, and the run's headline metric."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from modelloop.api import API_VERSION, MODEL_VERSION, ModelFramework, TrainingRunSpec, TriggerKind
from modelloop.api.meta import ParamValue
from modelloop.naming import LABEL_MODEL, LABEL_TRAINING_RUN, label_value, run_annotations, standard_labels
from modelloop.registry.validation import format_key_metric, validation_metrics
from modelloop.training.result import TrainerResult

RESULT_MISSING = "ResultMissing"
"""The reason of a run whose trainer reported success but no result that can be registered."""
ARTIFACT_OUTSIDE_FOLDER = "ArtifactOutsideOutputFolder"
"""The reason of a run whose trainer reported a file outside the output folder the operator gave it."""
_SHOWN_URI = 512
"""How many characters of a URI the trainer reported a refusal's message quotes."""


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
    if result.holdout_uri:
        artifact["holdoutUri"] = result.holdout_uri
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


@dataclass(frozen=True)
class RegistrationProblem:
    """Why a succeeded run's result cannot become a ModelVersion: the run fails with this reason and
    message."""

    reason: str
    message: str


def registration_problem(result: TrainerResult, output_folder: str) -> RegistrationProblem | None:
    """Why ``result`` cannot become a ModelVersion, or None when it can.

    ``output_folder`` is where the operator told the trainer to write (``training.job.output_uri``, with
    the trial's folder for a sweep's trial). Every file the version records (the artifact, the drift
    reference data and the held-out rows) must be inside it: the trainer is user code, and a URI it
    reports outside its folder would register, and serve under this team's name, another run's or another
    team's model (or have the detector read another team's data).
    """
    if not result.artifact_uri:
        return RegistrationProblem(RESULT_MISSING, "The trainer reported success but no artifactUri.")
    if result.framework not in {f.value for f in ModelFramework}:
        known = ", ".join(f.value for f in ModelFramework)
        return RegistrationProblem(
            RESULT_MISSING, f"The trainer reported framework {result.framework!r}; expected one of {known}."
        )
    for field, uri in (
        ("artifactUri", result.artifact_uri),
        ("referenceUri", result.reference_uri),
        ("referencePredictionsUri", result.reference_predictions_uri),
        ("holdoutUri", result.holdout_uri),
    ):
        if uri is not None and not within_folder(uri, output_folder):
            shown = uri if len(uri) <= _SHOWN_URI else f"{uri[:_SHOWN_URI]}..."
            return RegistrationProblem(
                ARTIFACT_OUTSIDE_FOLDER,
                f"The trainer reported {field} {shown!r}, which is not inside the run's output folder "
                f"{output_folder.rstrip('/')}/: a run registers only files it wrote there "
                "(MODELLOOP_OUTPUT_URI).",
            )
    return None


def within_folder(uri: str, folder: str) -> bool:
    """Whether ``uri`` names ``folder`` or a file below it.

    The same scheme (in any case) and authority (the bucket or host, exactly), no query or fragment, the
    folder's path segments exactly, then only plain names: none that is empty, ``.`` or ``..``, or holds
    a ``/`` or ``\\`` once percent-decoded. So ``…/run-abc/model.joblib`` is inside ``…/run-abc``, and
    ``…/run-abcd/model.joblib``, ``…/run-abc/../run-x/model.joblib`` and ``…/run-abc/%2e%2e/…`` are not,
    whether the storage resolves such names or keeps them as they are. Nothing is resolved here: the
    trainer reports its folder as it was given, then its file's name.
    """
    if any(c in uri for c in "?#\\"):
        return False
    try:
        target, base = urlsplit(uri), urlsplit(folder)
    except ValueError:
        return False
    if not base.scheme or target.scheme.lower() != base.scheme.lower() or target.netloc != base.netloc:
        return False
    prefix = base.path.rstrip("/").split("/")
    segments = target.path.split("/")
    if segments[: len(prefix)] != prefix:
        return False
    rest = segments[len(prefix) :]
    if rest and rest[-1] == "":
        rest.pop()  # a trailing slash names the same folder
    return all(_plain_name(segment) for segment in rest)


def _plain_name(segment: str) -> bool:
    name = unquote(segment)
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _framework(reported: str | None) -> str:
    return reported or ModelFramework.SKLEARN.value
