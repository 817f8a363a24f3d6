"""A distributed TrainingRun's gang: one pod per node, each a torchrun agent, started and failed together.

Two engines run a gang. Where Kubeflow Trainer is installed, a ``TrainJob`` that references a
ClusterTrainingRuntime (Trainer turns it into a JobSet of indexed Jobs and sets torchrun's ``PET_*``
variables). Elsewhere modelloop renders the same thing with plain Kubernetes: an Indexed Job (one pod per
node, ``completions = parallelism = nodes``) and a headless Service, so that the pods reach each other as
``<job>-<index>.<service>``, with the variables Kubeflow Trainer sets. A training script moves between the
two unchanged.

Either way an attempt is all or nothing: one node failing fails it (the Indexed Job has no retries of its
own; a TrainJob's Jobs would retry a pod, so the operator ends the attempt itself when a pod fails), and
``spec.backoffLimit`` restarts the whole gang as a new attempt under a new name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelloop.api import TRAINING_RUN, TrainingEngine, TrainingRunSpec
from modelloop.api.meta import ParamValue
from modelloop.naming import LABEL_ATTEMPT, LABEL_GANG, gang_name, owner_reference, run_annotations
from modelloop.training.job import (
    CONTAINER,
    ChampionModel,
    TrialPlan,
    job_manifest,
    pod_spec,
    trainer_command,
    trainer_env,
    trial_run_params,
    workload_annotations,
    workload_labels,
)

TRAINJOB_GROUP = "trainer.kubeflow.org"
TRAINJOB_VERSION = "v1alpha1"
TRAINJOB_API_VERSION = f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}"
TRAINJOB_PLURAL = "trainjobs"
TRAINJOB_KIND = "TrainJob"
DEFAULT_RUNTIME = "torch-distributed"
# The container Kubeflow Trainer's torch runtimes run the trainer in, and their replicated Job.
TRAINJOB_CONTAINER = "node"
TRAINJOB_REPLICATED_JOB = "node"
PATCH_MANAGER = "modelloop.dev/operator"

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MASTER_PORT = 29500
"""torchrun's rendezvous port on node 0, as Kubeflow Trainer's torch plugin uses."""
PET_NNODES = "PET_NNODES"
PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
PET_NODE_RANK = "PET_NODE_RANK"
PET_MASTER_ADDR = "PET_MASTER_ADDR"
PET_MASTER_PORT = "PET_MASTER_PORT"


def procs_per_node(spec: TrainingRunSpec) -> int:
    """The number of worker processes each node runs: spec.distributed.procsPerNode resolved against what
    each node's pod requests (both engines get the same number; Kubeflow Trainer v2.2 takes only one)."""
    assert spec.distributed is not None
    asked = spec.distributed.procs_per_node
    if isinstance(asked, int):
        return asked
    gpus = spec.resources.gpus
    if asked == "gpu" or (asked == "auto" and gpus > 0):
        return max(1, gpus)
    if asked == "cpu":
        return max(1, whole_cpus(spec.resources.cpu))
    return 1


def whole_cpus(quantity: int | str | None) -> int:
    """The whole CPUs in a CPU quantity (``2``, ``"2"``, ``"2500m"``, ``"1.5"``), rounded down; 0 when unset
    or not a CPU amount."""
    if quantity is None:
        return 0
    text = str(quantity)
    try:
        cores = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 0
    return math.floor(cores) if math.isfinite(cores) else 0


def engine_for(spec: TrainingRunSpec, trainer_installed: bool) -> TrainingEngine:
    """What runs a run with ``spec``: a Job for one node, else a TrainJob where Kubeflow Trainer's API is
    served, else an Indexed Job."""
    if spec.distributed is None:
        return TrainingEngine.JOB
    return TrainingEngine.KUBEFLOW_TRAINER if trainer_installed else TrainingEngine.INDEXED_JOB


def render_gang(
    engine: TrainingEngine,
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    artifact_root: str,
    *,
    attempt: int = 0,
    trial: TrialPlan | None = None,
    champion: ChampionModel | None = None,
    default_runtime: str = DEFAULT_RUNTIME,
) -> list[dict[str, Any]]:
    """The objects to create, in order, for one attempt of a distributed run (or of one trial of its sweep):
    a headless Service and an Indexed Job, or one TrainJob. Each is named ``gang_name`` and owned by the
    run; the last one is the attempt's workload."""
    meta = run["metadata"]
    name = gang_name(meta["name"], meta["uid"], None if trial is None else trial.index, attempt)
    if engine == TrainingEngine.KUBEFLOW_TRAINER:
        return [_train_job(run, spec, artifact_root, name, attempt, trial, champion, default_runtime)]
    return [_service(run, name), _indexed_job(run, spec, artifact_root, name, attempt, trial, champion)]


def _gang_labels(
    run: Mapping[str, Any], spec: TrainingRunSpec, name: str, attempt: int, trial: TrialPlan | None
) -> dict[str, str]:
    return {**workload_labels(run, spec, trial), LABEL_GANG: name, LABEL_ATTEMPT: str(attempt)}


def _service(run: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The headless Service that gives the gang's pods their DNS names (``<job>-<index>.<service>``), also
    before they are ready: rendezvous happens before any pod could be."""
    meta = run["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {LABEL_GANG: name},
            "annotations": run_annotations(run),
            "ownerReferences": [owner_reference(run, TRAINING_RUN.kind, block_deletion=False)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_GANG: name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def _indexed_job(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    artifact_root: str,
    name: str,
    attempt: int,
    trial: TrialPlan | None,
    champion: ChampionModel | None,
) -> dict[str, Any]:
    assert spec.distributed is not None
    nodes = spec.distributed.nodes
    labels = _gang_labels(run, spec, name, attempt, trial)
    pod = pod_spec(run, spec, trial_run_params(spec, trial), artifact_root, trial, champion)
    pod["subdomain"] = name  # the Job controller sets each pod's hostname to <job>-<index>
    container = pod["containers"][0]
    container["env"] = [*container["env"], *_pet_env(spec, f"{name}-0.{name}")]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        # One failed node fails the attempt: the gang restarts whole (spec.backoffLimit), never one pod.
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels, "annotations": run_annotations(run)}, "spec": pod},
    }
    # With a queue, Kueue admits the whole gang (one Workload of `nodes` pods) or none of it.
    return job_manifest(run, spec, name, labels, trial, job_spec)


def _pet_env(spec: TrainingRunSpec, master: str) -> list[dict[str, Any]]:
    """torchrun's options as Kubeflow Trainer's torch plugin passes them: node count, processes per node,
    this node's rank (the pod's completion index), and node 0's address and port."""
    assert spec.distributed is not None
    return [
        {"name": PET_NNODES, "value": str(spec.distributed.nodes)},
        {"name": PET_NPROC_PER_NODE, "value": str(procs_per_node(spec))},
        {
            "name": PET_NODE_RANK,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        },
        {"name": PET_MASTER_ADDR, "value": master},
        {"name": PET_MASTER_PORT, "value": str(MASTER_PORT)},
    ]


def _train_job(
    run: Mapping[str, Any],
    spec: TrainingRunSpec,
    artifact_root: str,
    name: str,
    attempt: int,
    trial: TrialPlan | None,
    champion: ChampionModel | None,
    default_runtime: str,
) -> dict[str, Any]:
    """A TrainJob: the trainer (image, command, env, resources per node, nodes and processes) in its spec,
    and what a runtime patch may set on the pods (labels, annotations, scheduling, security contexts)."""
    assert spec.distributed is not None
    meta = run["metadata"]
    labels = _gang_labels(run, spec, name, attempt, trial)
    params: Mapping[str, ParamValue] = trial_run_params(spec, trial)
    pod = pod_spec(run, spec, params, artifact_root, trial, champion)
    container = pod["containers"][0]
    assert container["name"] == CONTAINER
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": trainer_command(spec),
        "env": trainer_env(run, spec, params, artifact_root, trial, champion),
        "numNodes": spec.distributed.nodes,
        "numProcPerNode": procs_per_node(spec),
    }
    if spec.args:
        trainer["args"] = list(spec.args)
    if "resources" in container:
        trainer["resourcesPerNode"] = container["resources"]
    pod_patch: dict[str, Any] = {
        "securityContext": pod["securityContext"],
        "containers": [{"name": TRAINJOB_CONTAINER, "securityContext": container["securityContext"]}],
    }
    for key in ("nodeSelector", "tolerations", "affinity"):
        if key in pod:
            pod_patch[key] = pod[key]
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": TRAINJOB_REPLICATED_JOB,
                            "template": {
                                "spec": {
                                    "template": {
                                        "metadata": {"labels": labels, "annotations": run_annotations(run)},
                                        "spec": pod_patch,
                                    }
                                }
                            },
                        }
                    ]
                }
            }
        },
    }
    job_spec: dict[str, Any] = {
        "runtimeRef": {
            "apiGroup": TRAINJOB_GROUP,
            "kind": "ClusterTrainingRuntime",
            "name": spec.distributed.runtime or default_runtime,
        },
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": TRAINJOB_API_VERSION,
        "kind": TRAINJOB_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": workload_annotations(run, trial),
            "ownerReferences": [owner_reference(run, TRAINING_RUN.kind, block_deletion=False)],
        },
        "spec": job_spec,
    }
