"""Names, labels and owner references of the objects the operator creates — the one place for them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from modelloop import __version__
from modelloop.api import API_VERSION, GROUP
from modelloop.api.meta import LABEL_VALUE_PATTERN

MANAGED_BY = "modelloop"
LABEL_TRAINING_RUN = f"{GROUP}/training-run"
LABEL_MODEL = f"{GROUP}/model"
LABEL_TRIAL = f"{GROUP}/trial"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_DRIFT_POLICY = f"{GROUP}/drift-policy"
# On a distributed run's Job or TrainJob and on their pods: which attempt of the gang they are, and (pods)
# which Job or TrainJob they belong to.
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_GANG = f"{GROUP}/gang"
# On the objects a serving backend owns: the InferenceService they serve, and (Seldon's predictors) the
# model version a predictor serves.
LABEL_INFERENCE_SERVICE = f"{GROUP}/inference-service"
LABEL_VERSION = f"{GROUP}/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# A user (or GitOps) asks for a ModelVersion's stage with this annotation, and may say why with the other.
ANNOTATION_REQUESTED_STAGE = f"{GROUP}/requested-stage"
ANNOTATION_STAGE_REASON = f"{GROUP}/stage-reason"
# Set by the API server (manifests/admission/registered-by.yaml) to the user that created a ModelVersion.
ANNOTATION_REGISTERED_BY = f"{GROUP}/registered-by"
ANNOTATION_RUN_UID = f"{GROUP}/training-run-uid"
ANNOTATION_DRIFT_POLICY_UID = f"{GROUP}/drift-policy-uid"
# The run's whole name: the label above holds at most 63 characters of it (see ``label_value``).
ANNOTATION_TRAINING_RUN = f"{GROUP}/training-run"
# A trial Job's own parameters (JSON): a restarted operator reads what a trial runs with from its Job.
ANNOTATION_TRIAL_PARAMS = f"{GROUP}/trial-params"
# On an InferenceService: promote, abort, pause or resume its rollout (each value acted on once).
ANNOTATION_ROLLOUT_ACTION = f"{GROUP}/rollout-action"
# kopf's finalizer, on the objects whose deletion it must see (modelloop's handlers need none today).
FINALIZER = f"{GROUP}/finalizer"

# Kubernetes keeps these for itself or for us; a user's labels with these prefixes are not copied.
_RESERVED_PREFIXES = (f"{GROUP}/", "app.kubernetes.io/", "kubernetes.io/", "k8s.io/", "batch.kubernetes.io/")
_MAX_NAME = 63  # a Job's name becomes its pods' job-name label value


def job_name(run_name: str, run_uid: str, trial: int | None = None) -> str:
    """The name of a run's Job (or of one trial's Job): deterministic, a valid DNS label at any run length.

    The suffix hashes the run's uid, so that a run deleted and re-created under the same name never
    adopts a Job of its predecessor that is still being garbage-collected.
    """
    base = run_name if trial is None else f"{run_name}-t{trial}"
    digest = hashlib.sha256(f"{run_uid}/{trial}".encode()).hexdigest()[:6]
    room = _MAX_NAME - len(digest) - 1
    return f"{base[:room].rstrip('-.')}-{digest}"


MAX_GANG_NAME = 40
"""Characters of a distributed run's Job or TrainJob name: its pods' host names add ``-<index>`` (an
Indexed Job) or ``-node-0-<index>`` (a TrainJob's JobSet), and each must stay a DNS label."""


def gang_name(run_name: str, run_uid: str, trial: int | None = None, attempt: int = 0) -> str:
    """The name of one attempt of a distributed run (or of one trial of its sweep): deterministic, so that a
    restarted operator finds the gang it created instead of creating another; an RFC 1035 label (a letter
    first, no dots), as a TrainJob's name must be, at most ``MAX_GANG_NAME`` characters."""
    base = run_name if trial is None else f"{run_name}-t{trial}"
    if attempt:
        base = f"{base}-a{attempt}"
    digest = hashlib.sha256(f"{run_uid}/{trial}/{attempt}".encode()).hexdigest()[:6]
    base = base.replace(".", "-")
    if not base[0].isalpha():
        base = f"r{base}"
    room = MAX_GANG_NAME - len(digest) - 1
    return f"{base[:room].rstrip('-')}-{digest}"


def standard_labels(component: str, instance: str) -> dict[str, str]:
    """The app.kubernetes.io labels of an object the operator creates."""
    return {
        "app.kubernetes.io/name": "modelloop",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": label_value(instance),
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }


def user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A user's labels that may be copied onto objects made for them (reserved prefixes left out)."""
    return {k: v for k, v in (labels or {}).items() if not k.startswith(_RESERVED_PREFIXES)}


def run_annotations(run: Mapping[str, Any]) -> dict[str, str]:
    """The annotations that tie an object (a Job, its pods, a ModelVersion) to the TrainingRun that made
    it: the run's uid (a re-created run of the same name is another run) and its whole name."""
    meta = run["metadata"]
    return {ANNOTATION_RUN_UID: str(meta["uid"]), ANNOTATION_TRAINING_RUN: str(meta["name"])}


def run_of(meta: Mapping[str, Any]) -> str | None:
    """The name of the TrainingRun an object belongs to (from ``run_annotations``, else its label)."""
    annotations = meta.get("annotations") or {}
    return annotations.get(ANNOTATION_TRAINING_RUN) or (meta.get("labels") or {}).get(LABEL_TRAINING_RUN)


def owner_reference(owner: Mapping[str, Any], kind: str, *, block_deletion: bool = True) -> dict[str, Any]:
    """An owner reference to one of our objects that makes it the controller: deleting the owner deletes
    the owned object (the garbage collector's foreground/background cascade). ``block_deletion`` needs
    the right to set finalizers on the owned kind, which the operator has on its own kinds and Jobs."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": block_deletion,
    }


_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_MAX_LABEL_VALUE = 63


def label_value(value: str) -> str:
    """``value`` as a valid label value (at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both
    ends): itself when it is one, else a readable prefix and a hash of the whole, so that two long names
    that share their first 56 characters still get different values. An object name may have 253
    characters; a label value derived from it must be valid at any length."""
    if len(value) <= _MAX_LABEL_VALUE and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[: _MAX_LABEL_VALUE - len(digest) - 1]
    cleaned = cleaned.strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest
