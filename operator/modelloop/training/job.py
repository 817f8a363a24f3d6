"""The batch/v1 Job of a TrainingRun (or of one trial of its sweep), rendered from the spec."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelloop.api import TRAINING_RUN, TrainingRunSpec
from modelloop.api.meta import ParamValue
from modelloop.naming import (
    ANNOTATION_TRIAL_PARAMS,
    LABEL_MODEL,
    LABEL_TRAINING_RUN,
    LABEL_TRIAL,
    job_name,
    label_value,
    owner_reference,
    run_annotations,
    standard_labels,
    user_labels,
)
from modelloop.registry.stages import champion_of
from modelloop.training import result as contract

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
DEFAULT_COMMAND = ["modelloop-train"]
DISTRIBUTED_COMMAND = ["torchrun", "--no-python", "modelloop-train"]


@dataclass(frozen=True)
class TrialPlan:
    """One trial of a sweep: its index and the params it runs with (spec.params overridden)."""

    index: int
    params: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ChampionModel:
    """The model's current Champion ModelVersion, which the trainer evaluates on the run's held-out data."""

    name: str
    artifact_uri: str


def current_champion(versions: Iterable[Mapping[str, Any]]) -> ChampionModel | None:
    """The Champion among one model's ModelVersion objects (as the registry index holds them), if any."""
    by_name = {v["metadata"]["name"]: v for v in versions}
    name = champion_of({n: v.get("status") or {} for n, v in by_name.items()})
    if name is None:
        return None
    uri = ((by_name[name].get("spec") or {}).get("artifact") or {}).get("uri")
    return ChampionModel(name=name, artifact_uri=str(uri)) if uri else None


UID_PREFIX = 8
"""How many characters of a run's uid its artifact folder's name carries."""


def output_uri(
    spec: TrainingRunSpec, run: Mapping[str, Any], artifact_root: str, trial: int | None = None
) -> str:
    """Where the trainer writes the artifacts of ``run`` (a TrainingRun object), or of one trial of its sweep.

    ``<artifactRoot>/<namespace>/<model>/<run>-<uid8>[/trial-<N>]``, or with ``spec.output.artifactUriPrefix``
    ``<prefix>/<run>-<uid8>[/trial-<N>]``: the namespace keeps teams that share a bucket apart, and the
    start of the run's uid gives a run deleted and created again under the same name a new folder, so it
    never writes over the artifact that an earlier run's ModelVersion points to. This is the one place the
    layout is decided: everything else reads the ``artifactUri`` the trainer reports, which registration
    accepts only inside this folder (``register.registration_problem``).
    """
    meta = run["metadata"]
    if spec.output.artifact_uri_prefix:
        prefix = spec.output.artifact_uri_prefix.rstrip("/")
    else:
        prefix = f"{artifact_root.rstrip('/')}/{meta['namespace']}/{spec.output.model_name}"
    uri = f"{prefix}/{run_folder(meta['name'], meta['uid'])}"
    return uri if trial is None else f"{uri}/trial-{trial}"


def run_folder(run_name: str, run_uid: str) -> str:
    """The name of a run's artifact folder: its name and the start of its uid (``iris-rf-3f2a1b4c``)."""
    short = "".join(c for c in run_uid.lower() if c.isalnum())[:UID_PREFIX]
    return f"{run_name}-{short}"


def render_job(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    artifact_root: str,
    trial: TrialPlan | None = None,
    champion: ChampionModel | None = None,
) -> dict[str, Any]:
    """The Job that trains ``run`` (a TrainingRun object as read from the API server).

    With a ``champion``, the trainer also evaluates it on the run's held-out data.

    The pod gets no service account token (results travel by termination message), runs as non-root with
    no privileges, tolerates the GPU taint when it asks for GPUs, and is pinned to the GPU product asked
    for. With a Kueue queue, the Job starts suspended for Kueue to admit it.
    """
    meta = run["metadata"]
    name = job_name(meta["name"], meta["uid"], None if trial is None else trial.index)
    labels = workload_labels(run, spec, trial)
    params = trial_run_params(spec, trial)

    job_spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": labels, "annotations": run_annotations(run)},
            "spec": pod_spec(run, spec, params, artifact_root, trial, champion),
        },
    }
    if spec.backoff_limit is not None:
        job_spec["backoffLimit"] = spec.backoff_limit
    return job_manifest(run, spec, name, labels, trial, job_spec)


def job_manifest(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    name: str,
    labels: Mapping[str, str],
    trial: TrialPlan | None,
    job_spec: dict[str, Any],
) -> dict[str, Any]:
    """A run's Job (or one of its gangs') around ``job_spec``: with the run's deadline and TTL, suspended for
    Kueue when the run names a queue, named ``name`` and owned by the run."""
    meta = run["metadata"]
    for key, value in (
        ("activeDeadlineSeconds", spec.active_deadline_seconds),
        ("ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
    ):
        if value is not None:
            job_spec[key] = value
    if spec.queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": workload_annotations(run, trial),
            "ownerReferences": [owner_reference(run, TRAINING_RUN.kind)],
        },
        "spec": job_spec,
    }


def workload_labels(run: Mapping[str, Any], spec: TrainingRunSpec, trial: TrialPlan | None) -> dict[str, str]:
    """The labels of what trains ``run`` (a Job, a TrainJob, their pods): the user's, modelloop's, the
    run's and the trial's, and the Kueue queue's."""
    meta = run["metadata"]
    labels = {
        **user_labels(meta.get("labels")),
        **standard_labels("trainer", meta["name"]),
        LABEL_TRAINING_RUN: label_value(meta["name"]),
        LABEL_MODEL: spec.output.model_name,
    }
    if trial is not None:
        labels[LABEL_TRIAL] = str(trial.index)
    if spec.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    return labels


def workload_annotations(run: Mapping[str, Any], trial: TrialPlan | None) -> dict[str, str]:
    """The annotations of a run's Job or TrainJob: the run's (``run_annotations``) and a trial's params."""
    annotations = run_annotations(run)
    if trial is not None:
        annotations[ANNOTATION_TRIAL_PARAMS] = json.dumps(trial.params, separators=(",", ":"))
    return annotations


def trial_run_params(spec: TrainingRunSpec, trial: TrialPlan | None) -> dict[str, ParamValue]:
    """The params a run (or one trial of its sweep) trains with: spec.params, a trial's overriding them."""
    return dict(spec.params) if trial is None else {**spec.params, **trial.params}


def trial_index(job: Mapping[str, Any]) -> int | None:
    """The sweep trial a Job runs (its label), or None for a single run's Job."""
    value = (job["metadata"].get("labels") or {}).get(LABEL_TRIAL)
    return int(value) if value is not None and value.isdigit() else None


def job_trial_params(job: Mapping[str, Any]) -> dict[str, ParamValue]:
    """The sweep's parameters a trial Job runs with, as recorded on the Job when it was created."""
    raw = (job["metadata"].get("annotations") or {}).get(ANNOTATION_TRIAL_PARAMS)
    try:
        params = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def pod_spec(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    params: Mapping[str, ParamValue],
    artifact_root: str,
    trial: TrialPlan | None,
    champion: ChampionModel | None,
) -> dict[str, Any]:
    resources = spec.resources
    # Quantities travel as strings (the API's canonical form).
    requests: dict[str, str] = {}
    if resources.cpu is not None:
        requests["cpu"] = str(resources.cpu)
    if resources.memory is not None:
        requests["memory"] = str(resources.memory)
    limits: dict[str, str] = {}
    if resources.memory is not None:
        limits["memory"] = str(resources.memory)
    if resources.gpus > 0:
        # Extended resources are requested through limits (requests default to them).
        limits[GPU_RESOURCE] = str(resources.gpus)

    node_selector = dict(spec.node_selector)
    if resources.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = resources.gpu_product
    tolerations = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    if resources.gpus > 0 and not any(_tolerates_gpu_taint(t) for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": trainer_command(spec),
        "env": trainer_env(run, spec, params, artifact_root, trial, champion),
        "terminationMessagePath": contract.RESULT_PATH,
        "terminationMessagePolicy": "File",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.args:
        container["args"] = list(spec.args)
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}

    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.affinity:
        pod["affinity"] = spec.affinity.model_dump(mode="json", exclude_unset=True)
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return pod


def trainer_command(spec: TrainingRunSpec) -> list[str]:
    """The trainer's entrypoint: spec.command, else modelloop's trainer, under torchrun for a distributed
    run (torchrun reads its options from the PET_* variables each node's pod gets)."""
    if spec.command:
        return list(spec.command)
    return list(DISTRIBUTED_COMMAND if spec.distributed is not None else DEFAULT_COMMAND)


def trainer_env(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    params: Mapping[str, ParamValue],
    artifact_root: str,
    trial: TrialPlan | None,
    champion: ChampionModel | None,
) -> list[dict[str, str]]:
    env = {
        contract.ENV_RUN_NAME: run["metadata"]["name"],
        contract.ENV_MODEL_NAME: spec.output.model_name,
        contract.ENV_PARAMS: json.dumps(dict(params), sort_keys=True, separators=(",", ":")),
        contract.ENV_DATASET_URI: spec.dataset.uri,
        contract.ENV_DATASET_FORMAT: spec.dataset.format.value,
        contract.ENV_OUTPUT_URI: output_uri(spec, run, artifact_root, None if trial is None else trial.index),
        contract.ENV_RESULT_PATH: contract.RESULT_PATH,
        contract.ENV_CODE_VERSION: spec.image,
    }
    if trial is not None:
        env[contract.ENV_TRIAL] = str(trial.index)
    if spec.dataset.target_column:
        env[contract.ENV_TARGET_COLUMN] = spec.dataset.target_column
    if spec.dataset.hash:
        env[contract.ENV_DATASET_HASH] = spec.dataset.hash
    if spec.dataset.additional:
        additional = [d.model_dump(mode="json", exclude_none=True) for d in spec.dataset.additional]
        env[contract.ENV_ADDITIONAL_DATASETS] = json.dumps(additional, separators=(",", ":"))
    if champion is not None:
        env[contract.ENV_CHAMPION_URI] = champion.artifact_uri
        env[contract.ENV_CHAMPION_VERSION] = champion.name
    return [{"name": k, "value": v} for k, v in env.items()]


def _tolerates_gpu_taint(toleration: Mapping[str, Any]) -> bool:
    effect_ok = toleration.get("effect") in (None, "", "NoSchedule")
    if toleration.get("operator") == "Exists" and not toleration.get("key"):
        return effect_ok
    return toleration.get("key") == GPU_RESOURCE and effect_ok
