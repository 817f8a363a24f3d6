"""What a training Job and its pods say about the run: phase, reason and message, times, the result."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelloop.api import TrainingRunPhase
from modelloop.naming import (
    ANNOTATION_RUN_UID,
    ANNOTATION_TRAINING_RUN,
    ANNOTATION_TRIAL_PARAMS,
    LABEL_ATTEMPT,
    LABEL_GANG,
    LABEL_TRIAL,
)
from modelloop.training.job import CONTAINER
from modelloop.training.result import TrainerResult, parse_result

# Container states in which a pod cannot start until someone changes the image or its configuration.
IMAGE_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    }
)


JOB_CREATED_MESSAGE = "The training Job is created; its pod waits to be scheduled and started."
GANG_CREATED_MESSAGE = "The gang is created; its pods wait to be scheduled and started."
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
NODE_FAILED = "NodeFailed"
QUEUED = "Queued"


@dataclass(frozen=True)
class JobObservation:
    """The state of one training Job, as the run's status reports it."""

    phase: TrainingRunPhase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    result: TrainerResult | None = None
    image_digest: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in (TrainingRunPhase.SUCCEEDED, TrainingRunPhase.FAILED)


def observe_gang(
    workload: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    nodes: int,
    queued: Mapping[str, Any] | None = None,
) -> JobObservation:
    """Read one attempt of a distributed run: its Indexed Job or TrainJob (``workload``), its pods, and the
    Kueue Workload that queues it, if any (``queued``, as ``slim_queued`` keeps it).

    Succeeded when the workload completed (every node), with node 0's result; failed as soon as any node's
    pod failed (its index, exit code and message), or when the workload failed for another reason
    (a deadline); pending whole while its queue holds it, with Kueue's reason."""
    status = workload.get("status") or {}
    start_time = status.get("startTime")
    digest = next((d for p in pods if (d := _image_digest(p))), None)
    failed_pod = _first_failed(pods)
    failed = _condition(workload, "Failed")
    if failed_pod is not None:
        return JobObservation(
            TrainingRunPhase.FAILED,
            NODE_FAILED,
            node_failure_message(failed_pod),
            start_time,
            (_terminated(failed_pod) or {}).get("finishedAt") or (failed or {}).get("lastTransitionTime"),
            parse_result((_terminated(failed_pod) or {}).get("message")),
            digest,
        )
    complete = _condition(workload, "Complete")
    if complete is not None:
        rank_zero = [p for p in pods if node_index(p) == 0 and _terminated(p) is not None]
        newest = sorted(rank_zero, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        result = parse_result((_terminated(newest[-1]) or {}).get("message")) if newest else None
        return JobObservation(
            TrainingRunPhase.SUCCEEDED,
            "Succeeded",
            f"All {nodes} nodes completed.",
            start_time,
            status.get("completionTime") or complete.get("lastTransitionTime"),
            result,
            digest,
        )
    if failed is not None:
        return JobObservation(
            TrainingRunPhase.FAILED,
            str(failed.get("reason") or "GangFailed"),
            str(failed.get("message") or "The gang failed."),
            start_time,
            failed.get("lastTransitionTime"),
            None,
            digest,
        )
    if (workload.get("spec") or {}).get("suspend"):
        return _queued(f"The gang of {nodes} nodes waits whole", queued)
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if running:
        return JobObservation(
            TrainingRunPhase.RUNNING,
            "Running",
            f"Training on {len(running)} of {nodes} nodes.",
            start_time or min(str(p["status"].get("startTime") or "") for p in running) or None,
            image_digest=digest,
        )
    for pod in pods:
        waiting = _waiting(pod)
        if waiting is not None and waiting.get("reason") in IMAGE_PROBLEMS:
            return JobObservation(
                TrainingRunPhase.PENDING,
                str(waiting["reason"]),
                f"Node {node_index(pod)}: {waiting.get('message') or waiting['reason']}",
                start_time,
            )
        scheduled = _condition(pod, "PodScheduled", status="False")
        if scheduled is not None and scheduled.get("reason") == "Unschedulable":
            return JobObservation(
                TrainingRunPhase.PENDING,
                "Unschedulable",
                f"Node {node_index(pod)}: {scheduled.get('message') or 'no node fits the pod.'}",
                start_time,
            )
    return JobObservation(TrainingRunPhase.PENDING, "GangCreated", GANG_CREATED_MESSAGE)


def node_index(pod: Mapping[str, Any]) -> int | None:
    """The node rank of a gang's pod: its completion index (annotation, or label since Kubernetes 1.28)."""
    meta = pod["metadata"]
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(
        COMPLETION_INDEX
    )
    return int(value) if value is not None and str(value).isdigit() else None


def _first_failed(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The gang's pod that failed first (its container ended with a non-zero exit code), if any: the
    others usually fail after it, because it left."""
    failed = [p for p in pods if (t := _terminated(p)) is not None and t.get("exitCode") not in (0, None)]
    return min(failed, key=lambda p: str((_terminated(p) or {}).get("finishedAt") or ""), default=None)


def node_failure_message(pod: Mapping[str, Any]) -> str:
    """What a failed node says: its index, its pod, the exit code and the trainer's own explanation (or
    the termination message's start)."""
    terminated = _terminated(pod) or {}
    result = parse_result(terminated.get("message"))
    why = (
        f"{result.reason}: {result.message}"
        if result is not None and not result.succeeded and result.message
        else str(terminated.get("message") or terminated.get("reason") or "")[:512]
    )
    name, code = pod["metadata"]["name"], terminated.get("exitCode")
    text = f"Node {node_index(pod)} (pod {name}) exited with code {code}"
    return f"{text}: {why}" if why else f"{text}."


def slim_queued(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a Kueue Workload: whose it is (its owner's name and uid) and why it waits
    (the QuotaReserved condition's message while it is False)."""
    owners = body["metadata"].get("ownerReferences") or ()
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else {})
    reserved = next(
        (c for c in (body.get("status") or {}).get("conditions") or () if c.get("type") == "QuotaReserved"),
        None,
    )
    waiting = reserved is not None and reserved.get("status") == "False"
    message = str((reserved or {}).get("message") or "")[:1024] if waiting else ""
    return {"owner": owner.get("name"), "ownerUid": owner.get("uid"), "message": message}


def _queued(who: str, queued: Mapping[str, Any] | None) -> JobObservation:
    """Pending in a Kueue queue, with Kueue's own reason where its Workload gives one."""
    why = (queued or {}).get("message")
    message = f"{who} to be admitted by its queue (Kueue)" + (f": {why}" if why else ".")
    return JobObservation(TrainingRunPhase.PENDING, QUEUED, message)


def observe_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], queued: Mapping[str, Any] | None = None
) -> JobObservation:
    """Read a Job and its pods the way an engineer would with kubectl describe; ``queued`` is the Kueue
    Workload that queues it, if any (as ``slim_queued`` keeps it)."""
    status = job.get("status") or {}
    start_time = status.get("startTime")
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    finished_pod = next((p for p in reversed(newest) if _terminated(p) is not None), None)
    result = parse_result((_terminated(finished_pod) or {}).get("message")) if finished_pod else None
    digest = next((d for p in reversed(newest) if (d := _image_digest(p))), None)

    complete = _condition(job, "Complete")
    if complete is not None:
        return JobObservation(
            TrainingRunPhase.SUCCEEDED,
            "Succeeded",
            "The training Job completed.",
            start_time,
            status.get("completionTime") or complete.get("lastTransitionTime"),
            result,
            digest,
        )
    failed = _condition(job, "Failed")
    if failed is not None:
        reason = str(failed.get("reason") or "JobFailed")
        message = str(failed.get("message") or "The training Job failed.")
        if result is not None and not result.succeeded:
            # The trainer explained itself (e.g. a data check); that is what the user needs to read.
            reason, message = result.reason or reason, result.message or message
        elif finished_pod is not None and (exit_message := _exit_summary(finished_pod)):
            message = f"{message} Last pod: {exit_message}"
        return JobObservation(
            TrainingRunPhase.FAILED,
            reason,
            message,
            start_time,
            failed.get("lastTransitionTime"),
            result,
            digest,
        )
    if (job.get("spec") or {}).get("suspend"):
        return _queued("The Job waits", queued)
    for pod in reversed(newest):
        if (pod.get("status") or {}).get("phase") == "Running":
            return JobObservation(
                TrainingRunPhase.RUNNING,
                "Running",
                f"Training in pod {pod['metadata']['name']}.",
                # The pod may be seen running before the Job controller records the Job's start.
                start_time or pod["status"].get("startTime"),
                image_digest=digest,
            )
    for pod in reversed(newest):
        waiting = _waiting(pod)
        if waiting is not None and waiting.get("reason") in IMAGE_PROBLEMS:
            return JobObservation(
                TrainingRunPhase.PENDING,
                str(waiting["reason"]),
                str(waiting.get("message") or waiting["reason"]),
                start_time,
            )
        scheduled = _condition(pod, "PodScheduled", status="False")
        if scheduled is not None and scheduled.get("reason") == "Unschedulable":
            return JobObservation(
                TrainingRunPhase.PENDING,
                "Unschedulable",
                str(scheduled.get("message") or "No node fits the pod."),
                start_time,
            )
    # Whether the pod exists yet or waits for the scheduler is not worth a status write of its own, nor is
    # the Job controller's start time while nothing runs: the run's startTime comes with Running.
    return JobObservation(TrainingRunPhase.PENDING, "JobCreated", JOB_CREATED_MESSAGE)


def _condition(obj: Mapping[str, Any], type_: str, status: str = "True") -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_ and cond.get("status") == status:
            return dict(cond)
    return None


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else None)


def _terminated(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    container = _trainer_status(pod) if pod else None
    return ((container or {}).get("state") or {}).get("terminated")


def _waiting(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    container = _trainer_status(pod)
    return ((container or {}).get("state") or {}).get("waiting")


def _exit_summary(pod: Mapping[str, Any]) -> str | None:
    terminated = _terminated(pod)
    if not terminated:
        return None
    summary = f"exit code {terminated.get('exitCode')} ({terminated.get('reason') or 'terminated'})"
    message = terminated.get("message")
    return f"{summary}: {str(message)[:512]}" if message else summary


def _image_digest(pod: Mapping[str, Any]) -> str | None:
    image_id = str((_trainer_status(pod) or {}).get("imageID") or "")
    match = re.search(r"(sha256:[0-9a-f]{64})", image_id)
    return match.group(1) if match else None


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Job that observe_job and the planner read."""
    meta = body["metadata"]
    status = body.get("status") or {}
    return {
        "kind": body.get("kind"),
        "metadata": {
            "name": meta["name"],
            "uid": meta.get("uid"),
            "annotations": _annotations(meta),
            "labels": {
                k: v for k, v in (meta.get("labels") or {}).items() if k in (LABEL_TRIAL, LABEL_ATTEMPT)
            },
        },
        "spec": {"suspend": (body.get("spec") or {}).get("suspend")},
        "status": {k: status[k] for k in ("conditions", "startTime", "completionTime") if k in status},
    }


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod that observe_job reads: phase, scheduling, the trainer container's state."""
    meta = body["metadata"]
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta["name"],
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": {
                k: v
                for k, v in (meta.get("labels") or {}).items()
                if k in ("batch.kubernetes.io/job-name", LABEL_GANG, COMPLETION_INDEX)
            },
            "annotations": {
                **_annotations(meta),
                **{k: v for k, v in (meta.get("annotations") or {}).items() if k == COMPLETION_INDEX},
            },
        },
        "status": {
            "phase": status.get("phase"),
            "startTime": status.get("startTime"),
            "conditions": [c for c in status.get("conditions") or () if c.get("type") == "PodScheduled"],
            "containerStatuses": [
                {k: c[k] for k in ("name", "imageID", "state") if k in c}
                for c in status.get("containerStatuses") or ()
            ],
        },
    }


def _annotations(meta: Mapping[str, Any]) -> dict[str, str]:
    annotations = meta.get("annotations") or {}
    keep = (ANNOTATION_RUN_UID, ANNOTATION_TRAINING_RUN, ANNOTATION_TRIAL_PARAMS)
    return {k: annotations[k] for k in keep if k in annotations}
